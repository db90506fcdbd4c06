"""Collect against a real HTTP server on loopback: conditional GET, redirects, failures that stop nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from digest import jobs, load_config, store
from digest.feeds import collect as collecting
from digest.feeds.fetch import USER_AGENT
from digest.settings.config import CollectSettings

from conftest import write_config
from helpers.feeds import Route, rss

NOW = datetime(2026, 4, 3, 12, 0, tzinfo=UTC)
FAST = CollectSettings(timeout=2.0, max_attempts=2, backoff=0.0)


def items(prefix: str, count: int = 3) -> list[dict]:
    return [
        {
            "title": f"{prefix} post {n}",
            "link": f"https://{prefix}.example.com/{n}/?utm_source=rss",
            "guid": f"{prefix}-{n}",
            "description": f"<p>Post {n} of {prefix}.</p>",
            "date": f"Wed, 0{n % 5 + 1} Apr 2026 10:00:00 +0000",
        }
        for n in range(count)
    ]


@pytest.fixture
def setup(tmp_path, feed_server):
    def make(routes: dict[str, Route]):
        feed_server.routes.update(routes)
        feeds = [{"name": path.strip("/"), "url": feed_server.url(path), "section": "Articles"} for path in routes]
        config = load_config(write_config(tmp_path, feeds))
        return config, store.open_db(tmp_path / "digest.db")

    return make


def by_name(report: collecting.CollectReport) -> dict[str, collecting.FeedReport]:
    return {feed.name: feed for feed in report.feeds}


def test_collect_stores_posts_with_clean_urls_and_sends_our_user_agent(setup, feed_server):
    config, db = setup({"/a.xml": Route(rss(items("a")))})
    report = collecting.collect(config, db, now=NOW, settings=FAST)
    assert report.new_posts == 3
    urls = sorted(row["canonical_url"] for row in db["posts"].rows)
    assert urls == ["https://a.example.com/0/", "https://a.example.com/1/", "https://a.example.com/2/"]
    assert feed_server.hits("/a.xml")[0]["User-Agent"] == USER_AGENT


def test_second_collect_sends_etag_back_and_stores_nothing_new(setup, feed_server):
    config, db = setup(
        {
            "/a.xml": Route(
                rss(items("a")),
                etag='"v1"',
                headers={"Content-Type": "application/rss+xml", "Last-Modified": "Fri, 03 Apr 2026 10:00:00 GMT"},
            )
        }
    )
    collecting.collect(config, db, now=NOW, settings=FAST)
    report = collecting.collect(config, db, now=NOW, settings=FAST)
    second = feed_server.hits("/a.xml")[1]
    assert second["If-None-Match"] == '"v1"'
    assert second["If-Modified-Since"] == "Fri, 03 Apr 2026 10:00:00 GMT"
    assert by_name(report)["a.xml"].outcome == "unchanged" and by_name(report)["a.xml"].http_status == 304
    assert db["posts"].count == 3
    assert db["feeds"].get(config.feeds[0].url)["etag"] == '"v1"'  # a 304 keeps the validators


def test_unchanged_feeds_answer_on_the_connections_already_open(setup, feed_server):
    """A 304 lets its connection go back to the pool (an unread response would close it): 30 unchanged feeds
    fetched one at a time take one connection, not 30."""
    config, db = setup({f"/{n}.xml": Route(rss(items(f"f{n}", 1)), etag=f'"{n}"') for n in range(30)})
    one_at_a_time = replace(FAST, concurrency=1)
    collecting.collect(config, db, now=NOW, settings=one_at_a_time)
    feed_server.clients.clear()
    report = collecting.collect(config, db, now=NOW, settings=one_at_a_time)
    assert {feed.http_status for feed in report.feeds} == {304}
    assert len(feed_server.clients) == 30 and len(set(feed_server.clients)) == 1


def test_a_304_that_carries_a_body_is_not_read_as_the_next_feeds_answer(setup, feed_server):
    """A broken server sends its feed again on a 304. Its connection is closed, not given back to the pool:
    the next feed asked on it would have read those bytes as its own answer (one attempt: it would fail)."""
    config, db = setup(
        {
            "/a.xml": Route(rss(items("a")), etag='"a"', body_on_304=True),
            "/b.xml": Route(rss(items("b")), etag='"b1"'),
        }
    )
    one_at_a_time = replace(FAST, concurrency=1, max_attempts=1)
    collecting.collect(config, db, now=NOW, settings=one_at_a_time)
    feed_server.routes["/b.xml"] = Route(rss(items("b", 4)), etag='"b2"')
    report = by_name(collecting.collect(config, db, now=NOW, settings=one_at_a_time))
    assert report["a.xml"].http_status == 304 and report["a.xml"].error is None
    assert report["b.xml"].error is None and report["b.xml"].new_posts == 1


def test_an_unchanged_run_starts_no_parsing_process_and_a_changed_feed_starts_one(setup, feed_server, monkeypatch):
    config, db = setup({"/a.xml": Route(rss(items("a")), etag='"v1"')})
    collecting.collect(config, db, now=NOW, settings=FAST)
    started = []
    start = collecting._ParsePool._start
    monkeypatch.setattr(
        collecting._ParsePool, "_start", lambda pool, method: started.append(method) or start(pool, method)
    )
    collecting.collect(config, db, now=NOW, settings=FAST)  # every feed answers 304
    assert started == []
    feed_server.routes["/a.xml"] = Route(rss(items("a", 4)), etag='"v2"')
    assert collecting.collect(config, db, now=NOW, settings=FAST).new_posts == 1
    assert started == ["forkserver"]  # threads run by then: not fork


def test_a_broken_body_that_has_not_changed_is_not_parsed_again_and_stays_failed(setup, feed_server, monkeypatch):
    """The validators of a body that is no feed are kept: a 304 to them is the same body, the same error,
    and nothing to parse; a fixed feed (a new ETag) is parsed and stored, and the failure ends."""
    config, db = setup({"/a.xml": Route(b"<html><body>Maintenance</body></html>", etag='"broken"')})
    first = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert first.outcome == "failed" and "not a feed" in first.error
    started = []
    start = collecting._ParsePool._start
    monkeypatch.setattr(
        collecting._ParsePool, "_start", lambda pool, method: started.append(method) or start(pool, method)
    )
    second = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert feed_server.hits("/a.xml")[1]["If-None-Match"] == '"broken"' and second.http_status == 304
    assert second.outcome == "failed" and second.error == first.error and started == []
    row = db["feeds"].get(config.feeds[0].url)
    assert row["consecutive_failures"] == 2 and row["last_ok_at"] is None
    feed_server.routes["/a.xml"] = Route(rss(items("a")), etag='"fixed"')
    third = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert third.outcome == "new" and third.new_posts == 3
    row = db["feeds"].get(config.feeds[0].url)
    assert row["last_error"] is None and row["broken_body_error"] is None and row["etag"] == '"fixed"'
    fourth = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert fourth.outcome == "unchanged" and fourth.error is None


def test_a_broken_body_keeps_its_own_error_through_a_fetch_failure(setup, feed_server):
    config, db = setup({"/a.xml": Route(b"<html><body>Maintenance</body></html>", etag='"broken"')})
    first = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    feed_server.routes["/a.xml"] = Route(status=503)
    assert "503" in by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"].error
    feed_server.routes["/a.xml"] = Route(b"<html><body>Maintenance</body></html>", etag='"broken"')
    again = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert again.http_status == 304 and again.error == first.error


def test_a_parsing_process_that_fails_is_no_reason_to_keep_the_validators(setup, feed_server, monkeypatch):
    """Only the bytes' own error is kept with their validators: a parser that died is retried in full."""
    config, db = setup({"/a.xml": Route(rss(items("a")), etag='"v1"')})

    async def dies(*args):
        raise RuntimeError("a parsing process died")

    monkeypatch.setattr(collecting._ParsePool, "parse", dies)
    assert by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"].outcome == "failed"
    monkeypatch.undo()
    report = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert "If-None-Match" not in feed_server.hits("/a.xml")[1]
    assert report.outcome == "new" and report.new_posts == 3


def test_a_feed_that_could_not_be_fetched_keeps_the_validators_of_its_last_good_body(setup, feed_server):
    config, db = setup({"/a.xml": Route(rss(items("a")), etag='"v1"')})
    collecting.collect(config, db, now=NOW, settings=FAST)
    feed_server.routes["/a.xml"] = Route(status=503)
    assert by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"].outcome == "failed"
    feed_server.routes["/a.xml"] = Route(rss(items("a")), etag='"v1"')
    back = by_name(collecting.collect(config, db, now=NOW, settings=FAST))["a.xml"]
    assert back.http_status == 304 and back.outcome == "unchanged" and back.error is None


def test_unchanged_feed_without_validators_adds_nothing_twice(setup):
    config, db = setup({"/a.xml": Route(rss(items("a")))})
    collecting.collect(config, db, now=NOW, settings=FAST)
    report = collecting.collect(config, db, now=NOW, settings=FAST)
    assert report.new_posts == 0 and db["posts"].count == 3


def test_permanent_redirect_is_remembered_and_temporary_is_not(setup, feed_server):
    config, db = setup(
        {
            "/moved.xml": Route(status=301, headers={"Location": "/new-home.xml"}),
            "/temp.xml": Route(status=302, headers={"Location": "/elsewhere.xml"}),
        }
    )
    feed_server.routes["/new-home.xml"] = Route(rss(items("moved")))
    feed_server.routes["/elsewhere.xml"] = Route(rss(items("temp")))
    collecting.collect(config, db, now=NOW, settings=FAST)
    feeds = {row["name"]: row for row in db["feeds"].rows}
    assert feeds["moved.xml"]["redirect_url"] == feed_server.url("/new-home.xml")
    assert feeds["temp.xml"]["redirect_url"] is None
    collecting.collect(config, db, now=NOW, settings=FAST)
    assert len(feed_server.hits("/moved.xml")) == 1  # the second run went straight to the new home
    assert len(feed_server.hits("/temp.xml")) == 2
    assert db["posts"].count == 6


@pytest.mark.parametrize(
    "target",
    [
        Route(status=404, headers={"Content-Type": "text/plain"}),
        Route(b"<!doctype html><html><body>Parked domain</body></html>", headers={"Content-Type": "text/html"}),
        Route(status=500, headers={"Content-Type": "text/plain"}),
    ],
)
def test_a_permanent_redirect_to_a_target_that_fails_is_not_remembered(setup, feed_server, target):
    config, db = setup({"/moved.xml": Route(status=301, headers={"Location": "/broken-home.xml"})})
    feed_server.routes["/broken-home.xml"] = target
    report = collecting.collect(config, db, now=NOW, settings=FAST)
    assert by_name(report)["moved.xml"].outcome == "failed"
    assert db["feeds"].get(config.feeds[0].url)["redirect_url"] is None
    asked = len(feed_server.hits("/moved.xml"))
    collecting.collect(config, db, now=NOW, settings=FAST)
    assert len(feed_server.hits("/moved.xml")) > asked  # the next run still asks the address in feeds.yaml
    feed_server.routes["/broken-home.xml"] = Route(rss(items("moved")))
    collecting.collect(config, db, now=NOW, settings=FAST)  # once the target works, the move is remembered
    assert db["feeds"].get(config.feeds[0].url)["redirect_url"] == feed_server.url("/broken-home.xml")


def test_posts_of_a_redirected_feed_belong_to_the_feed_as_configured_and_reach_the_issue(setup, feed_server):
    config, db = setup({"/old.xml": Route(status=302, headers={"Location": "/blog/new.xml"})})
    feed_server.routes["/blog/new.xml"] = Route(
        rss(
            [
                *items("moved"),
                {
                    "title": "Relative",
                    "link": "relative/post/",
                    "guid": "rel",
                    "date": "Thu, 02 Apr 2026 10:00:00 +0000",
                },
            ]
        )
    )
    collecting.collect(config, db, now=NOW, settings=FAST)
    assert {row["feed_url"] for row in db["posts"].rows} == {feed_server.url("/old.xml")}
    assert feed_server.url("/blog/relative/post/") in {row["canonical_url"] for row in db["posts"].rows}
    built = jobs.build(config, db, "2026-W14", now=NOW)
    assert built.outcome == "built" and built.items == 4


def test_a_feed_whose_address_changes_in_feeds_yaml_keeps_its_posts(tmp_path, feed_server):
    feed_server.routes["/old/feed.xml"] = Route(rss(items("blog")))
    feeds = [{"name": "Blog", "url": feed_server.url("/old/feed.xml"), "section": "Articles"}]
    db = store.open_db(tmp_path / "digest.db")
    collecting.collect(load_config(write_config(tmp_path, feeds)), db, now=NOW, settings=FAST)
    feed_server.routes["/new/feed.xml"] = Route(rss(items("blog")))  # the blog moved; the editor updates the URL
    feeds[0]["url"] = feed_server.url("/new/feed.xml")
    config = load_config(write_config(tmp_path, feeds))
    assert collecting.collect(config, db, now=NOW, settings=FAST).new_posts == 0  # the same articles, not new ones
    assert jobs.build(config, db, "2026-W14", now=NOW).items == 3


def test_a_database_that_fails_stops_the_collect_at_once(setup, monkeypatch):
    """Only the database failing ends a collect (exit 75 for a lock): the other workers stop there, instead of
    fetching every remaining feed and recording each as failed (client closed) in a database that failed."""
    import sqlite3

    config, db = setup({f"/f{n}.xml": Route(rss(items(f"f{n}"))) for n in range(40)})
    stored = []
    record = store.record_fetch

    def locked_at_the_third(db, **fields):
        stored.append(fields["url"])
        if len(stored) == 3:
            raise sqlite3.OperationalError("database is locked")
        return record(db, **fields)

    monkeypatch.setattr(store, "record_fetch", locked_at_the_third)
    settings = CollectSettings(timeout=2.0, max_attempts=1, concurrency=4)
    with pytest.raises(sqlite3.OperationalError):
        collecting.collect(config, db, now=NOW, settings=settings)
    assert len(stored) <= 3 + 4  # at most the feeds other workers were storing as it failed


def test_one_broken_feed_never_stops_the_others(setup, feed_server):
    config, db = setup(
        {
            "/good.xml": Route(rss(items("good"))),
            "/missing.xml": Route(status=404, body=b"not here"),
            "/error.xml": Route(status=500, body=b"oops"),
            "/html.xml": Route(
                b"<!doctype html><html><head><title>Blog</title></head><body><p>Hi</p></body></html>",
                headers={"Content-Type": "text/html; charset=utf-8"},
            ),
            "/broken.xml": Route(b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title><item><title>a &'),
            "/slow.xml": Route(rss(items("slow")), delay=3.0),
            "/dropped.xml": Route(drop=True),
        }
    )
    report = by_name(collecting.collect(config, db, now=NOW, settings=FAST))
    assert report["good.xml"].outcome == "new" and report["good.xml"].new_posts == 3
    assert report["missing.xml"].error == "HTTP 404 Not Found"
    assert report["error.xml"].error == "HTTP 500 Internal Server Error (2 attempts)"
    assert len(feed_server.hits("/error.xml")) == 2  # retried once
    assert "HTML" in report["html.xml"].error
    assert "well-formed" in report["broken.xml"].error
    assert "timed out" in report["slow.xml"].error
    assert report["dropped.xml"].outcome == "failed"
    health = {row["name"]: row for row in store.feed_health(db)}
    assert health["missing.xml"]["consecutive_failures"] == 1
    assert health["missing.xml"]["last_error"] == "HTTP 404 Not Found"
    assert health["good.xml"]["posts"] == 3 and health["good.xml"]["consecutive_failures"] == 0


def test_failures_count_up_and_reset_on_success(setup, feed_server):
    config, db = setup({"/flaky.xml": Route(status=404)})
    collecting.collect(config, db, now=NOW, settings=FAST)
    collecting.collect(config, db, now=NOW, settings=FAST)
    assert db["feeds"].get(config.feeds[0].url)["consecutive_failures"] == 2
    feed_server.routes["/flaky.xml"] = Route(rss(items("flaky")))
    collecting.collect(config, db, now=NOW, settings=FAST)
    row = db["feeds"].get(config.feeds[0].url)
    assert row["consecutive_failures"] == 0 and row["last_error"] is None


def test_response_over_the_size_cap_is_refused(setup):
    config, db = setup({"/huge.xml": Route(rss(items("huge", 200)))})
    tiny = CollectSettings(max_megabytes=10_000 / 2**20, max_attempts=1)
    report = collecting.collect(config, db, now=NOW, settings=tiny)
    assert "larger than" in report.feeds[0].error and db["posts"].count == 0


def test_many_feeds_are_fetched_concurrently_and_parsed_in_a_pool(setup):
    routes = {f"/f{n}.xml": Route(rss(items(f"f{n}")), delay=0.3) for n in range(12)}
    config, db = setup(routes)
    report = collecting.collect(config, db, now=NOW, settings=FAST)
    assert report.new_posts == 36 and not report.failed
    assert report.seconds < 12 * 0.3  # one after another would take 3.6 s


def test_feed_server_cannot_make_feedparser_read_local_files(setup, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    body = (
        f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<rss version="2.0"><channel><title>t</title><item><title>&x;</title><link>https://e.example/1</link>'
        "<description>d</description></item></channel></rss>"
    ).encode()
    config, db = setup({"/xxe.xml": Route(body)})
    collecting.collect(config, db, now=NOW, settings=FAST)
    assert all("TOP-SECRET" not in str(row) for row in db["posts"].rows)


def descendants(pid: int) -> set[int]:
    """The processes below `pid`, from /proc (Linux): its children, theirs, and so on."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115 - one read
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]  # noqa: SIM115 - one read
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("validators", [False, True], ids=["fork", "forkserver"])
def test_a_killed_collect_leaves_no_parsing_process_behind(tmp_path, feed_server, validators):
    """kill -9 of `digest collect` while it waits on a slow feed: its parsing processes die with it."""
    feed_server.routes["/quick.xml"] = Route(rss(items("quick")), etag='"v1"' if validators else None)
    feed_server.routes["/slow.xml"] = Route(rss(items("slow")), etag='"s1"' if validators else None)
    feeds = [
        {"name": p.strip("/"), "url": feed_server.url(p), "section": "Articles"} for p in ("/quick.xml", "/slow.xml")
    ]
    write_config(tmp_path, feeds)
    command = [sys.executable, "-m", "digest", "collect"]
    if validators:  # a first run stores the validators: the next one starts its pool with the first changed feed
        assert subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
        feed_server.routes["/quick.xml"] = Route(rss(items("quick2")), etag='"v2"')
    feed_server.routes["/slow.xml"].delay = 30.0
    collect = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        expected = (os.cpu_count() or 1) + validators  # the workers, and the forkserver they come from
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while time.monotonic() < deadline and not (
            len(workers) >= expected and "/slow.xml" in [path for path, _ in feed_server.requests[-2:]]
        ):
            workers = descendants(collect.pid)
            time.sleep(0.05)
        assert len(workers) >= expected, f"parsing processes: {workers}"
        collect.kill()
        collect.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)]
    finally:
        collect.kill()
        for pid in descendants(collect.pid) | workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
