"""`digest run`, the weekly job: collect, build and send in one go; safe to run twice, never twice at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from digest import jobs, load_config, store
from digest.issue.draft import read_draft
from digest.lock import hold
from digest.models import Post

from conftest import LAST_WEEK
from helpers.feeds import Route, rss
from helpers.project import make_project, subscribers


def test_run_collects_builds_sends_and_a_second_run_does_nothing(project, server, feed_server, run_cli):
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("1 feeds in ") and lines[0].endswith("0 failed, 2 new posts")
    assert lines[1] == f"build {LAST_WEEK}: 2 items (2 new since the last build)"
    assert lines[2].startswith(f"send {LAST_WEEK} via smtp: 3 sent, 0 failed, 0 pending in ")
    assert len(lines) == 3 and "\r" not in out  # one line a stage, no progress bar without a terminal
    assert sorted(server.per_recipient().values()) == [1, 1, 1]
    fetched = len(feed_server.requests)

    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert code == 0 and out.startswith(f"{LAST_WEEK}: already sent (smtp, ")
    assert len(server.messages) == 3 and len(feed_server.requests) == fetched
    assert store.get_issue(store.open_db(project / "digest.db"), LAST_WEEK)["status"] == "sent"


def test_a_send_that_fails_does_not_hide_what_the_run_did_before_it(project, server, run_cli, monkeypatch):
    server.behaviour.refuse_login = True
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "x")
    config = project / "feeds.yaml"
    config.write_text(config.read_text().replace("security: none", "security: none\n  username: digest"))
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 1 and "SMTP login as 'digest'" in err
    assert out.splitlines()[0].startswith("1 feeds in ") and f"build {LAST_WEEK}: 2 items" in out


def test_when_every_feed_fails_run_sends_what_earlier_collects_found_and_exits_1(project, server, feed_server, run_cli):
    assert run_cli("collect", cwd=project)[0] == 0  # Wednesday's collect found the two posts
    feed_server.routes["/feed.xml"] = Route(status=500, body=b"down")
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 1 and f"build {LAST_WEEK}: 2 items" in out
    assert err.splitlines()[-1] == "error: every feed failed this time: the issue holds only posts collected earlier"
    assert sorted(server.per_recipient().values()) == [1, 1, 1]


def test_when_every_feed_fails_and_nothing_was_collected_run_exits_1(project, server, feed_server, run_cli):
    feed_server.routes["/feed.xml"] = Route(status=404, body=b"gone")
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 1 and out.splitlines()[-1] == (
        f"build {LAST_WEEK}: nothing new this week, nothing sent: no posts stored yet (digest collect)"
    )
    assert err.strip() == "error: every feed failed: nothing was collected" and not server.messages


def test_a_run_while_another_holds_the_lock_is_refused(project, server, feed_server, run_cli):
    with hold(project / "digest.db"):
        code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 75 and out == ""
    assert err.startswith("error: another digest run (pid ") and "digest.db.lock" in err and err.count("\n") == 1
    assert not server.messages and not feed_server.requests
    assert run_cli("run", "--yes", cwd=project)[0] == 0  # the lock went with its holder
    assert len(server.messages) == 3


def test_a_week_with_nothing_new_sends_nothing(project, server, feed_server, run_cli):
    feed_server.routes["/feed.xml"] = Route(
        rss(
            [
                {
                    "title": "Old",
                    "link": "https://blog.example.com/old/",
                    "guid": "old",
                    "date": "Mon, 06 Jan 2020 10:00:00 +0000",
                }
            ]
        )
    )
    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert code == 0 and out.splitlines()[-1] == (
        f"build {LAST_WEEK}: nothing new this week, nothing sent: 1 post stored, all from 2020-W02, none from this "
        "week; before any issue is sent, an issue takes only its own week's posts; try: digest build --week 2020-W02"
    )
    assert not server.messages and not (project / "drafts" / f"{LAST_WEEK}.yaml").exists()


def test_without_a_terminal_run_needs_yes_and_does_nothing(project, server, feed_server, run_cli):
    code, _out, err = run_cli("run", cwd=project)
    assert code == 2 and err == "error: no terminal to ask for confirmation: add --yes to send without asking\n"
    assert not feed_server.requests and not server.messages


def test_a_run_that_could_not_finish_exits_75_and_the_next_one_resumes_it(project, server, feed_server, run_cli):
    server.behaviour.defer_rcpt["reader00001@example.com"] = 3  # smtp.max_attempts is 3
    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert code == 75 and "2 sent, 0 failed, 1 pending" in out and "run again later to resume" in out
    fetched = len(feed_server.requests)
    code, out, _ = run_cli("run", "--yes", cwd=project)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0] == f"{LAST_WEEK}: an earlier run began sending it; resuming, without collecting or building"
    assert lines[1].startswith(f"send {LAST_WEEK} via smtp: 1 sent, 0 failed, 0 pending in ")
    assert len(feed_server.requests) == fetched and sorted(server.per_recipient().values()) == [1, 1, 1]


# --- an issue being sent is frozen: build leaves it alone, its posts are never offered again ------------


def _post(slug: str, when: datetime) -> Post:
    return Post(
        id=f"https://blog.example.com/feed#{slug}",
        feed_url="https://blog.example.com/feed",
        canonical_url=f"https://blog.example.com/{slug}/",
        title=slug.title(),
        author=None,
        summary=f"All about {slug}.",
        content_html=f"<p>{slug}</p>",
        published_at=when,
        url_key=f"//blog.example.com/{slug}/",
    )


def _collected(db, now: datetime, *posts: Post) -> None:
    """The blog's posts, stored as a collect of its feed stores them."""
    store.record_fetch(
        db,
        url="https://blog.example.com/feed",
        name="Blog",
        section="News",
        outcome=store.FetchOutcome(status=200),
        now=now,
        posts=posts,
    )


def _begin_send(db, issue_id: str) -> None:
    """What `jobs.send` records before the backend starts: the email holds every post offered to the draft."""
    store.begin_send(db, issue_id, "the draft as sent", store.offered_post_ids(db, issue_id), "test.example.com")


@pytest.fixture
def weekly(tmp_path, server, monkeypatch):
    """W12 sent, W13 built and partly sent (left `sending`), a post of W14 waiting; returns (config, db, now)."""
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    config = load_config(
        make_project(
            tmp_path,
            server.port,
            subscribers(3),
            feeds=[{"name": "Blog", "url": "https://blog.example.com/feed", "section": "News"}],
        )
    )
    db = store.open_db(tmp_path / "digest.db")
    now = datetime(2026, 4, 3, 12, tzinfo=UTC)
    _collected(
        db,
        now,
        _post("w12", datetime(2026, 3, 18, 12, tzinfo=UTC)),
        _post("w13", datetime(2026, 3, 25, 12, tzinfo=UTC)),
        _post("w14", datetime(2026, 4, 1, 12, tzinfo=UTC)),
    )
    assert jobs.build(config, db, "2026-W12", now=now).outcome == "built"
    _begin_send(db, "2026-W12")
    db.execute("UPDATE issues SET status = 'sent', sent_at = ? WHERE id = '2026-W12'", [store.iso(now)])
    assert jobs.build(config, db, "2026-W13", now=now).items == 1
    _begin_send(db, "2026-W13")
    store.start_deliveries(db, "2026-W13", "smtp", ["reader00000@example.com"], now)  # as a send that was interrupted
    return config, db, now


def test_posts_of_an_issue_being_sent_are_not_offered_to_the_next_one(weekly):
    config, db, now = weekly
    assert store.get_issue(db, "2026-W13")["status"] == "sending"
    report = jobs.build(config, db, "2026-W14", now=now)
    assert [item.title for item in read_draft(report.draft).items] == ["W14"]  # not W13's post again


def test_build_leaves_an_issue_being_sent_alone_and_says_so(weekly, run_cli):
    config, db, now = weekly
    draft = config.drafts_dir / "2026-W13.yaml"
    before = draft.read_text()
    _collected(db, now, _post("late-w13", datetime(2026, 3, 26, 12, tzinfo=UTC)))
    code, out, _ = run_cli("build", "--week", "2026-W13", cwd=config.path.parent)
    assert code == 0 and out == "2026-W13: already sending, draft left as it is\n"
    assert draft.read_text() == before


def test_with_publish_configured_run_publishes_the_archive_after_the_send(project, server, run_cli):
    config = project / "feeds.yaml"
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings["newsletter"]["site_url"] = "https://news.example.com"
    settings["publish"] = {"dir": "public"}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"published 1 issue(s) to {project / 'public'}: ")
    assert (project / "public" / "issues" / LAST_WEEK / "index.html").is_file()
    message = server.messages[0].data.decode()
    assert f"https://news.example.com/issues/{LAST_WEEK}/" in message  # archive_url's default: the published page
