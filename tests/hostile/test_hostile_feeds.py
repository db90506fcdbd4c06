"""Hostile feeds, served over loopback: nothing one of them does may stop the week, eat the machine's memory,
outlast its deadline, or lead digest to an address it has no business in.

Each test is a class of attack from the hardening issue, with the listed payload and a few beyond it.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import tracemalloc
import zlib
from datetime import UTC, datetime

import pytest

from digest import load_config, store
from digest.feeds import collect as collecting
from digest.feeds import fetch as fetch_module
from digest.settings.config import CollectSettings

from conftest import write_config
from helpers.feeds import FeedServer, Route, rss

NOW = datetime(2026, 4, 3, 12, 0, tzinfo=UTC)
GOOD = rss(
    [
        {
            "title": "A good post",
            "link": "https://good.example.com/1/",
            "guid": "g1",
            "description": "Fine.",
            "date": "Wed, 01 Apr 2026 10:00:00 +0000",
        }
    ]
)


def entry_feed(title: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>T</title><item>'
        f"<title>{title}</title><link>https://bad.example.com/1/</link><guid>b1</guid>"
        f"<description>&lt;p&gt;{title}&lt;/p&gt;</description></item></channel></rss>"
    ).encode()


@pytest.fixture
def newsletter(tmp_path, feed_server):
    def make(routes: dict[str, Route], **collect):
        feed_server.routes.update(routes)
        feeds = [{"name": path.strip("/"), "url": feed_server.url(path), "section": "News"} for path in routes]
        config = load_config(write_config(tmp_path, feeds))
        settings = CollectSettings(**{"timeout": 2.0, "max_attempts": 1, "backoff": 0.0, **collect})
        return config, store.open_db(tmp_path / "digest.db"), settings

    return make


def by_name(report: collecting.CollectReport) -> dict[str, collecting.FeedReport]:
    return {feed.name: feed for feed in report.feeds}


# --- 1. one feed stops the week ---------------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["&#xD800;", "&#xDFFF;", "&#x110000;", "&#99999999999;", "&#x7FFFFFFFFFFFFFFFF;", "&amp;#xD800;"]
)
def test_impossible_character_references_cost_nothing_but_a_replacement_character(newsletter, reference):
    config, db, settings = newsletter(
        {"/bad.xml": Route(entry_feed(f"Before {reference} after")), "/good.xml": Route(GOOD)}
    )
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    assert report["good.xml"].outcome == "new" and report["bad.xml"].outcome == "new"
    title = next(row["title"] for row in db["posts"].rows if "Before" in row["title"])
    assert title == "Before \ufffd after"


@pytest.mark.parametrize(
    "text", ["1" * 1_000_000, "1 " * 500_000 + "x", "Read more " * 100_000], ids=["digits", "spaced", "boilerplate"]
)
def test_a_megabyte_of_text_is_summarized_without_backtracking_for_hours(text):
    """The boilerplate pattern backtracks quadratically on digit runs: on a whole megabyte it would run for
    about an hour. Run in a process of its own, so that a regression fails at the timeout, never hangs."""
    code = "import sys; from digest.feeds.parse import summarize; print(len(summarize(sys.stdin.read())))"
    result = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and 0 < int(result.stdout) <= 300, result.stderr


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "utf-16-le <rss"])
def test_a_wide_encoding_does_not_hide_an_impossible_reference(newsletter, encoding):
    """In UTF-16 or UTF-32, `&#xD800;` is not those ASCII bytes: the document is read as UTF-8 first."""
    encoding, _, start = encoding.partition(" ")
    text = entry_feed("Before &#xD800; after").decode().replace("utf-8", encoding, 1)
    text = text[text.index(start) :] if start else text  # no declaration, no byte order mark
    headers = {"Content-Type": f"application/rss+xml; charset={encoding}"}
    config, db, settings = newsletter({"/wide.xml": Route(text.encode(encoding), headers=headers)})
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))["wide.xml"]
    assert (report.outcome, report.error) == ("new", None)
    assert [row["title"] for row in db["posts"].rows] == ["Before \ufffd after"]


def test_anything_raised_while_storing_one_feed_is_that_feeds_failure(newsletter, monkeypatch):
    config, db, settings = newsletter({"/bad.xml": Route(entry_feed("Poison")), "/good.xml": Route(GOOD)})
    real = store.posts._insert_posts

    def poisoned(db, feed_url, posts, *args):
        if any(post.title == "Poison" for post in posts):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(db, feed_url, posts, *args)

    monkeypatch.setattr(store.posts, "_insert_posts", poisoned)
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    assert report["good.xml"].outcome == "new"
    assert report["bad.xml"].outcome == "failed" and report["bad.xml"].error.startswith(
        "cannot store: UnicodeEncodeError"
    )
    health = {row["name"]: row for row in store.feed_health(db)}
    assert health["bad.xml"]["last_error"].startswith("cannot store") and health["bad.xml"]["consecutive_failures"] == 1


def _crash_on_poison(content, feed_url, headers, fetched_url):
    """Stands in for a crash inside a C library or the kernel's OOM killer: the parsing process dies."""
    import os

    if b"Poison" in content:
        os._exit(9)
    from digest.feeds.parse import parse_feed

    return parse_feed(content, feed_url, headers, fetched_url)


def test_a_parsing_process_that_dies_fails_its_feeds_and_the_rest_are_parsed(newsletter, monkeypatch):
    monkeypatch.setattr(collecting, "_parse", _crash_on_poison)
    routes = {
        f"/good{n}.xml": Route(
            rss([{"title": f"Post {n}", "link": f"https://good.example.com/{n}/", "guid": f"g{n}", "description": "x"}])
        )
        for n in range(12)
    }
    routes["/bad.xml"] = Route(entry_feed("Poison"), delay=0.3)  # parsed after some good ones, before others
    config, db, settings = newsletter(routes)
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    assert len(report) == 13 and report["bad.xml"].outcome == "failed"
    assert "the parsing process died" in report["bad.xml"].error
    failed_now = {name for name, feed in report.items() if feed.outcome == "failed"}
    again = by_name(collecting.collect(config, db, now=NOW, settings=settings))  # the next run fetches them again
    assert {name for name, feed in again.items() if feed.outcome == "failed"} == {"bad.xml"}
    assert db["posts"].count == 12 and failed_now >= {"bad.xml"}


def test_one_hostile_feed_never_stops_digest_run(tmp_path, feed_server, run_cli, monkeypatch):
    from helpers.project import make_project, subscribers
    from helpers.smtp import SmtpServer

    smtp = SmtpServer().start()
    try:
        feed_server.routes["/bad.xml"] = Route(entry_feed("Invoice &#xD800; &#x110000; &#99999999999;"))
        feed_server.routes["/good.xml"] = Route(GOOD)
        feeds = [{"name": name, "url": feed_server.url(f"/{name}.xml"), "section": "News"} for name in ("bad", "good")]
        make_project(tmp_path, smtp.port, subscribers(2), feeds=feeds)
        monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a-secret-of-sixteen-characters")
        monkeypatch.setattr("digest.jobs.current_week", lambda now, tz: "2026-W14")
        monkeypatch.setattr("digest.jobs.datetime", _Frozen)
        code, out, err = run_cli("run", "--yes", cwd=tmp_path)
    finally:
        smtp.stop()
    assert code == 0, err
    assert "2 items" in out and len(smtp.messages) == 2


class _Frozen(datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW if tz is None else NOW.astimezone(tz)


# --- 2. decompression bombs -------------------------------------------------------------------


def _gzip_layers(size: int, layers: int) -> bytes:
    """`size` zero bytes gzipped `layers` times, compressed as they stream (nothing that big is ever built)."""
    engine = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    data = b"".join(engine.compress(chunk) for _ in range(size >> 20)) + engine.flush()
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _gzip_layers(1 << 30, 3)  # 1 GiB in three layers of gzip


@pytest.mark.parametrize("encoding", ["gzip, gzip, gzip", "gzip,gzip,gzip", "x-gzip, gzip, gzip"])
def test_a_decompression_bomb_is_stopped_at_the_cap_without_inflating(newsletter, bomb, encoding):
    assert len(bomb) < 2000  # the was 437 bytes
    config, db, settings = newsletter(
        {
            "/bomb.xml": Route(bomb, headers={"Content-Type": "application/rss+xml", "Content-Encoding": encoding}),
            "/good.xml": Route(GOOD),
        },
        max_megabytes=10,
    )
    tracemalloc.start()
    try:
        report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report["bomb.xml"].error == "response larger than 10 MB" and report["good.xml"].outcome == "new"
    assert peak < 60 << 20, f"{peak >> 20} MB allocated"


@pytest.mark.parametrize(
    "route, error",
    [
        (Route(zlib.compress(bytes(64 << 20)), headers={"Content-Encoding": "deflate"}), "response larger than 1 MB"),
        (
            Route(zlib.compress(bytes(64 << 20))[2:-4], headers={"Content-Encoding": "deflate"}),
            "response larger than 1 MB",
        ),
        (
            Route(bytes(3 << 20), headers={"Content-Type": "application/rss+xml"}, length=-1),
            "response larger than 1 MB",
        ),
        (Route(b"x" * 200, headers={"Content-Encoding": "br"}), "unsupported Content-Encoding: br"),
        (Route(b"not gzip at all", headers={"Content-Encoding": "gzip"}), "the body is not valid gzip or deflate data"),
        (
            Route(gzip.compress(GOOD), headers={"Content-Encoding": "gzip, " * 5 + "gzip"}),
            "6 layers of Content-Encoding",
        ),
    ],
)
def test_every_encoding_layer_and_every_body_counts_against_the_cap(newsletter, route, error):
    config, db, settings = newsletter({"/hostile.xml": route}, max_megabytes=1)
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    assert report["hostile.xml"].error == error


def test_an_honest_gzipped_feed_is_read(newsletter):
    config, db, settings = newsletter(
        {"/zipped.xml": Route(gzip.compress(gzip.compress(GOOD)), headers={"Content-Encoding": "gzip, gzip"})}
    )
    assert by_name(collecting.collect(config, db, now=NOW, settings=settings))["zipped.xml"].new_posts == 1


def _raw_deflate(data: bytes) -> bytes:
    engine = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return engine.compress(data) + engine.flush()


@pytest.mark.parametrize(
    "body, encoding",
    [
        (gzip.compress(GOOD[:40]) + gzip.compress(GOOD[40:]), "gzip"),  # two members (RFC 1952 §2.2)
        (gzip.compress(GOOD) + b"\0\0 trailing junk", "gzip"),  # after the end: not part of the body
        (zlib.compress(GOOD), "deflate"),  # as the standard says (RFC 1950 wrapped)
        (_raw_deflate(GOOD), "deflate"),  # as some servers send it
    ],
    ids=["gzip-members", "gzip-trailer", "deflate-zlib", "deflate-raw"],
)
def test_every_honest_encoding_is_read_whole_even_a_byte_at_a_time(newsletter, body, encoding):
    config, db, settings = newsletter(
        {"/feed.xml": Route(body, headers={"Content-Encoding": encoding}, drip=0.0005)}  # one byte per write
    )
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))["feed.xml"]
    assert (report.outcome, report.new_posts, report.error) == ("new", 1, None)


# --- 3. deadlines ------------------------------------------------------------------------------


def test_a_slow_drip_ends_at_the_feeds_one_deadline_with_a_truthful_message(newsletter):
    config, db, settings = newsletter(
        {"/drip.xml": Route(GOOD * 50, drip=0.2), "/good.xml": Route(GOOD)}, timeout=1.0, max_attempts=3, deadline=2.0
    )
    started = time.monotonic()
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    elapsed = time.monotonic() - started
    assert report["drip.xml"].error == "no complete answer within the 2 s deadline (1 attempt)"
    assert elapsed < 3.5 and report["good.xml"].outcome == "new"


def test_retries_happen_inside_the_deadline_and_say_how_many(newsletter):
    config, db, settings = newsletter(
        {"/slow.xml": Route(GOOD, delay=0.8)}, timeout=0.3, max_attempts=6, deadline=1.5, backoff=0.1
    )
    started = time.monotonic()
    error = by_name(collecting.collect(config, db, now=NOW, settings=settings))["slow.xml"].error
    assert time.monotonic() - started < 2.5
    assert (
        error.startswith("no complete answer within the 1.5 s deadline (")
        and "attempts; the one before: timed out after 0.3 s without an answer" in error
    )


# --- 4. redirects to places a feed has no business in -----------------------------------------


@pytest.fixture
def public(monkeypatch):
    """A "public" feed server: 127.0.0.2 stands for a public address (the test host has no other), named
    public.test; 127.0.0.1 stays loopback."""
    real_problem, real_resolve = fetch_module.address_problem, fetch_module._resolve

    def problem(address: str, allow_private: bool):
        return None if address == "127.0.0.2" else real_problem(address, allow_private)

    async def resolve(host: str, port: int):
        return ["127.0.0.2"] if host == "public.test" else await real_resolve(host, port)

    monkeypatch.setattr(fetch_module, "address_problem", problem)
    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    server = FeedServer(host="127.0.0.2").start()
    yield server
    server.stop()


def public_feed(tmp_path, server: FeedServer, routes: dict[str, Route]):
    server.routes.update(routes)
    port = server.httpd.server_address[1]
    feeds = [{"name": path.strip("/"), "url": f"http://public.test:{port}{path}", "section": "News"} for path in routes]
    return load_config(write_config(tmp_path, feeds)), store.open_db(tmp_path / "digest.db")


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:{loopback}/feed.xml",
        "http://localhost:{loopback}/feed.xml",
        "http://[::1]:{loopback}/feed.xml",
        "http://10.0.0.1/feed.xml",
        "http://[fe80::1]/x",
        "http://0.0.0.0:{loopback}/x",
        "http://[::ffff:127.0.0.1]:{loopback}/feed.xml",
        "file:///etc/passwd",
    ],
)
@pytest.mark.parametrize("status", [301, 302, 308])
def test_a_public_feed_cannot_redirect_digest_inside(tmp_path, public, feed_server, target, status):
    feed_server.routes["/feed.xml"] = Route(GOOD)  # what digest must not read
    target = target.format(loopback=feed_server.httpd.server_address[1])
    config, db = public_feed(tmp_path, public, {"/moved.xml": Route(status=status, headers={"Location": target})})
    report = collecting.collect(config, db, now=NOW, settings=CollectSettings(timeout=2.0, max_attempts=2, backoff=0))
    error = report.feeds[0].error
    assert report.feeds[0].outcome == "failed" and ("refused" in error or "not an http(s) address" in error), error
    assert feed_server.hits("/feed.xml") == [] and db["posts"].count == 0
    assert db["feeds"].get(config.feeds[0].url)["redirect_url"] is None  # never remembered


def test_a_public_name_that_resolves_inside_is_refused_when_connecting(tmp_path, feed_server, monkeypatch):
    """DNS rebinding: the name of a public feed now resolves to this machine."""

    async def resolve(host: str, port: int):
        return ["127.0.0.1"]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    feed_server.routes["/feed.xml"] = Route(GOOD)
    port = feed_server.httpd.server_address[1]
    config = load_config(write_config(tmp_path, [{"name": "rebound", "url": f"http://rebound.test:{port}/feed.xml"}]))
    report = collecting.collect(
        config, store.open_db(tmp_path / "digest.db"), now=NOW, settings=CollectSettings(timeout=2.0, max_attempts=1)
    )
    assert report.feeds[0].error == (
        "refused to connect: rebound.test is 127.0.0.1, a loopback or private address "
        "(set `private: true` on the feed if it is meant)"
    )
    assert feed_server.hits("/feed.xml") == []


def test_link_local_and_metadata_addresses_are_refused_even_when_configured(tmp_path):
    feeds = [
        {"name": "metadata", "url": "http://169.254.169.254/latest/"},
        {"name": "aws6", "url": "http://[fd00:ec2::254]/latest/", "private": True},
    ]
    config = load_config(write_config(tmp_path, feeds))
    report = by_name(
        collecting.collect(
            config,
            store.open_db(tmp_path / "digest.db"),
            now=NOW,
            settings=CollectSettings(timeout=2.0, max_attempts=1),
        )
    )
    assert all("link-local or cloud metadata" in feed.error for feed in report.values())


@pytest.mark.parametrize(
    "address, public, private",
    [
        ("8.8.8.8", None, None),
        ("2606:4700::1111", None, None),
        ("::1", "loopback or private", None),  # a private feed on this machine over IPv6
        ("fec0::1", "loopback or private", None),  # site-local: "global" to Python's ipaddress
        ("2002:7f00:1::1", "loopback or private", None),  # 6to4 wrapping 127.0.0.1
        ("2002:a9fe:a9fe::1", "metadata", "metadata"),  # 6to4 wrapping 169.254.169.254
        ("64:ff9b::a9fe:a9fe", "metadata", "metadata"),  # NAT64 of the metadata address
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "loopback or private", None),  # Teredo, client 192.0.2.45
        ("::ffff:10.0.0.1", "loopback or private", None),
        ("100.64.0.1", "loopback or private", None),  # carrier-grade NAT
        ("fe80::1%eth0", "link-local", "link-local"),
        ("0.0.0.0", "not a unicast", "not a unicast"),
        ("::127.0.0.1", "loopback or private", None),  # IPv4-compatible, deprecated
        ("64:ff9b:1::7f00:1", "loopback or private", None),  # local-use NAT64 (RFC 8215)
        ("255.255.255.255", "reserved", "reserved"),  # broadcast: "private" to Python
        ("240.0.0.1", "reserved", "reserved"),
    ],
)
def test_every_way_of_writing_an_inside_address_is_judged_as_that_address(address, public, private):
    for allow_private, expected in ((False, public), (True, private)):
        problem = fetch_module.address_problem(address, allow_private)
        assert (problem is None) if expected is None else (expected in (problem or "")), (address, problem)


def test_a_feed_configured_at_a_private_address_may_redirect_within_it(newsletter, feed_server):
    feed_server.routes["/new.xml"] = Route(GOOD)
    config, db, settings = newsletter({"/old.xml": Route(status=301, headers={"Location": "/new.xml"})})
    report = by_name(collecting.collect(config, db, now=NOW, settings=settings))
    assert report["old.xml"].new_posts == 1
    assert db["feeds"].get(config.feed(feed_server.url("/old.xml")).url)["redirect_url"] == feed_server.url("/new.xml")


def test_a_remembered_redirect_that_is_now_refused_is_forgotten(tmp_path, public, feed_server):
    config, db = public_feed(tmp_path, public, {"/feed.xml": Route(GOOD)})
    db.execute(
        "INSERT INTO feeds (url, redirect_url) VALUES (?, ?)", [config.feeds[0].url, "http://169.254.169.254/feed.xml"]
    )  # remembered by an older release
    report = collecting.collect(config, db, now=NOW, settings=CollectSettings(timeout=2.0, max_attempts=1))
    assert report.feeds[0].outcome == "failed" and "link-local" in report.feeds[0].error
    assert db["feeds"].get(config.feeds[0].url)["redirect_url"] is None
    report = collecting.collect(config, db, now=NOW, settings=CollectSettings(timeout=2.0, max_attempts=1))
    assert report.feeds[0].new_posts == 1
