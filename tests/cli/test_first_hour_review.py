"""Fixes from the review of issue 19: an empty build never advises a week older than the last issue sent
(nor does status or run); status --json does not call a week without an issue a draft; check warns of the
starter's placeholder sender and example readers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from freezegun import freeze_time

from conftest import write_config
from helpers.feeds import Route, rss

W13 = {"title": "Old", "link": "https://e.example/13", "guid": "13", "date": "Wed, 25 Mar 2026 10:00:00 +0000"}
W14 = {"title": "New", "link": "https://e.example/14", "guid": "14", "date": "Wed, 01 Apr 2026 10:00:00 +0000"}


def sent_w14(tmp_path, feed_server, monkeypatch):
    """Posts of W13 and W14 collected; W14 built and sent (a first issue takes only its own week's posts)."""
    import digest

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    feed_server.routes["/a.xml"] = Route(rss([W13, W14]))
    config_path = write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    with config_path.open("a", encoding="utf-8") as config:
        config.write("check:\n  links: false\n")
    (tmp_path / "subscribers.csv").write_text("email\nada@example.com\n")
    config, db = digest.load_config(config_path), digest.open_db(tmp_path / "digest.db")
    sent = digest.run_week(config, db, now=datetime(2026, 4, 3, 12, tzinfo=UTC), backend="memory", confirm=None)
    assert sent.sent.complete and sent.built.items == 1


def test_after_a_sent_issue_the_empty_build_never_advises_an_older_week(tmp_path, run_cli, feed_server, monkeypatch):
    sent_w14(tmp_path, feed_server, monkeypatch)
    code, out, _ = run_cli("build", "--week", "2026-W16", cwd=tmp_path)
    assert code == 0 and out.startswith("2026-W16: nothing new this week, no draft written: 2 posts stored")
    assert "--week 2026-W13" not in out and out.endswith("; digest collect brings new ones\n")


def test_nor_does_the_run(tmp_path, run_cli, feed_server, monkeypatch):
    sent_w14(tmp_path, feed_server, monkeypatch)
    with freeze_time("2026-04-15 12:00:00"):  # 2026-W16
        code, out, _ = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 0 and "build 2026-W16: nothing new this week, nothing sent: 2 posts stored" in out
    assert "--week 2026-W13" not in out


def test_status_gives_the_builds_advice_when_the_build_would_write_nothing(tmp_path, run_cli, feed_server, monkeypatch):
    sent_w14(tmp_path, feed_server, monkeypatch)
    with freeze_time("2026-04-15 12:00:00"):
        _, built, _ = run_cli("build", "--week", "2026-W16", cwd=tmp_path)
        code, out, _ = run_cli("status", "--week", "2026-W16", cwd=tmp_path)
    advice = built.partition("no draft written: ")[2].strip()
    assert code == 0 and f"  built:     no draft: {advice}\n" in out
    assert "writes it" not in out


def test_status_json_of_a_week_with_no_issue_says_no_status_rather_than_draft(tmp_path, run_cli):
    write_config(tmp_path, [])
    status = json.loads(run_cli("status", "--week", "2026-W14", "--json", cwd=tmp_path)[1])
    assert status["draft"] is None and status["status"] is None


def test_init_says_to_put_your_readers_in_subscribers_csv(tmp_path, run_cli):
    code, out, _ = run_cli("init", cwd=tmp_path)
    steps = out[out.index("next steps") :]
    assert code == 0 and "subscribers.csv" in steps and "your readers" in steps
