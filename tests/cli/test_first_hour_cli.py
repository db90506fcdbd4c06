"""A new user's first hour at the command line (issue 19): init's next steps, --version, status --json, a closed
pipe, the subscribers commands outside a newsletter folder, the advice of an empty build, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml
from freezegun import freeze_time

from conftest import write_config
from helpers.feeds import Route, rss

POST = {"title": "Hello", "link": "https://e.example/1", "guid": "1", "date": "Wed, 01 Apr 2026 10:00:00 +0000"}


def test_the_starter_feeds_yaml_says_where_the_mail_server_goes(tmp_path, run_cli):
    run_cli("init", cwd=tmp_path)
    text = (tmp_path / "feeds.yaml").read_text()
    smtp = yaml.safe_load(text)["smtp"]
    assert set(smtp) == {"host", "port", "security"} and "# username:" in text and "DIGEST_SMTP_PASSWORD" in text


def test_init_ends_with_the_next_steps_of_the_walk_through(tmp_path, run_cli):
    code, out, _ = run_cli("init", cwd=tmp_path)
    steps = out[out.index("next steps") :]
    assert code == 0 and out.index("subscribers.csv: written") < out.index("next steps")
    for step in (
        "smtp.host and smtp.port",
        "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > ~/.digest-secret",
        "export DIGEST_UNSUBSCRIBE_SECRET_FILE=~/.digest-secret",
        "digest collect",
        "digest build",
        "digest preview --open",
    ):
        assert step in steps, step


def test_version_comes_from_the_package_metadata(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out == f"digest {version('digest')}\n" and version("digest") == "0.2.0"


def test_status_json_has_the_same_facts_under_stable_keys(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([POST]))
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    code, _, _ = run_cli("status", "--week", "2026-W14", "--json", cwd=tmp_path)
    before = json.loads(run_cli("status", "--week", "2026-W14", "--json", cwd=tmp_path)[1])
    assert code == 0 and before["issue"] == "2026-W14" and before["posts"] == 0 and before["draft"] is None
    run_cli("collect", cwd=tmp_path)
    run_cli("build", "--week", "2026-W14", cwd=tmp_path)
    status = json.loads(run_cli("status", "--week", "2026-W14", "--json", cwd=tmp_path)[1])
    assert set(status) == {
        "issue",
        "posts",
        "last_collect",
        "failing_feeds",
        "draft",
        "advice",
        "draft_error",
        "built_at",
        "items",
        "held_back",
        "held",
        "errors",
        "warnings",
        "links",
        "unjudged_links",
        "approval",
        "approved_at",
        "reviewed_at",
        "status",
        "backend",
        "deliveries",
    }
    assert status["posts"] == 1 and status["items"] == 1 and status["status"] == "draft"
    assert status["draft"].endswith("drafts/2026-W14.yaml") and status["last_collect"].startswith("20")
    lines = run_cli("status", "--week", "2026-W14", cwd=tmp_path)[1]
    assert "1 posts stored" in lines and "1 items in the email" in lines and "sent:      not yet" in lines


@pytest.mark.parametrize("feeds", [1, 400])  # the output fits in the pipe's buffer; it does not
def test_a_closed_stdout_ends_quietly_with_the_sigpipe_code(tmp_path, feeds):
    write_config(tmp_path, [{"url": f"https://e.example/{n}.xml", "section": "News"} for n in range(feeds)])
    reader, writer = os.pipe()
    os.close(reader)  # `digest feeds | head -0`: nobody reads
    result = subprocess.run(
        [sys.executable, "-m", "digest", "feeds"], cwd=tmp_path, stdout=writer, stderr=subprocess.PIPE, timeout=60
    )
    os.close(writer)
    assert (result.returncode, result.stderr) == (141, b"")


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(tmp_path, run_cli, monkeypatch):
    """A mail or HTTP server that hangs up is a BrokenPipeError too: it must not pass for `| head`."""
    import digest.jobs

    def hung_up(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    write_config(tmp_path, [])
    monkeypatch.setattr(digest.jobs, "week_status", hung_up)
    code, _, err = run_cli("status", cwd=tmp_path)
    assert code == 1 and err == "error: Broken pipe\n"


@pytest.mark.parametrize(
    "command", [["subscribers", "import", "list.csv"], ["subscribers", "list"], ["subscribers", "export"]]
)
def test_the_subscribers_commands_want_a_newsletter_folder_or_a_database(tmp_path, run_cli, monkeypatch, command):
    monkeypatch.delenv("DIGEST_DB", raising=False)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    (tmp_path / "list.csv").write_text("email\nada@example.com\n")
    code, out, err = run_cli(*command, cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err.startswith("error: feeds.yaml: not found") and "--db" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["list.csv"]
    code, _, _ = run_cli("--db", str(tmp_path / "list.db"), *command, cwd=tmp_path)
    assert code == 0 and (tmp_path / "list.db").exists()


def test_an_empty_first_issue_says_what_is_stored_why_and_what_to_try(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([POST, {**POST, "link": "https://e.example/2", "guid": "2"}]))
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    code, out, _ = run_cli("build", "--week", "2026-W20", cwd=tmp_path)
    assert (
        code == 0 and out == "2026-W20: nothing new this week, no draft written: no posts stored yet (digest collect)\n"
    )
    run_cli("collect", cwd=tmp_path)
    code, out, _ = run_cli("build", "--week", "2026-W20", cwd=tmp_path)
    assert out == (
        "2026-W20: nothing new this week, no draft written: 2 posts stored, all from 2026-W14, none from "
        "this week; before any issue is sent, an issue takes only its own week's posts; "
        "try: digest build --week 2026-W14\n"
    )
    assert json.loads(run_cli("build", "--week", "2026-W20", "--json", cwd=tmp_path)[1])["advice"].startswith("2 posts")


def test_an_empty_run_says_it_too(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([POST]))
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    with freeze_time("2026-05-13 12:00:00"):  # 2026-W20
        code, out, _ = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 0 and (
        "build 2026-W20: nothing new this week, nothing sent: 1 post stored, all from 2026-W14" in out
    )
    assert "try: digest build --week 2026-W14" in out


def test_an_empty_issue_after_a_sent_one_says_the_posts_went_out(tmp_path, run_cli, feed_server, monkeypatch):
    from datetime import UTC, datetime

    import digest

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    feed_server.routes["/a.xml"] = Route(rss([POST]))
    config_path = write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    with config_path.open("a", encoding="utf-8") as config:
        config.write("check:\n  links: false\n")
    (tmp_path / "subscribers.csv").write_text("email\nada@example.com\n")
    config, db = digest.load_config(config_path), digest.open_db(tmp_path / "digest.db")
    sent = digest.run_week(config, db, now=datetime(2026, 4, 3, 12, tzinfo=UTC), backend="memory", confirm=None)
    assert sent.sent.complete
    code, out, _ = run_cli("build", "--week", "2026-W15", cwd=tmp_path)
    assert code == 0 and out == (
        "2026-W15: nothing new this week, no draft written: 1 post stored, all from 2026-W14, none from this week; "
        "after 2026-W14, an issue takes its own week's posts and those collected since 2026-W14 was built; the "
        "others went out or were passed over then; digest collect brings new ones\n"
    )


def test_the_collect_report_lists_the_feeds_in_the_order_of_feeds_yaml(tmp_path, run_cli, feed_server):
    """Not the order they finished in: the demo's output (and collect --json) would change from run to run."""
    feed_server.routes["/slow.xml"] = Route(rss([POST]), delay=0.5)
    feed_server.routes["/fast.xml"] = Route(rss([{**POST, "link": "https://e.example/2", "guid": "2"}]))
    write_config(
        tmp_path,
        [
            {"name": "Slow", "url": feed_server.url("/slow.xml"), "section": "News"},
            {"name": "Fast", "url": feed_server.url("/fast.xml"), "section": "News"},
        ],
    )
    report = json.loads(run_cli("collect", "--json", cwd=tmp_path)[1])
    assert [feed["name"] for feed in report["feeds"]] == ["Slow", "Fast"]


@pytest.mark.parametrize("command", [["subscribers", "import", "list.csv"], ["subscribers", "list"], ["status"]])
@pytest.mark.parametrize("option", ["--db", "DIGEST_DB"])
def test_a_database_in_a_missing_folder_names_the_option_and_the_folder(
    tmp_path, run_cli, monkeypatch, command, option
):
    monkeypatch.delenv("DIGEST_DB", raising=False)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    write_config(tmp_path, [{"url": "http://127.0.0.1:1/a.xml", "section": "News"}])
    (tmp_path / "list.csv").write_text("email\nada@example.com\n")
    missing = tmp_path / "x" / "missing"
    if option == "--db":
        code, out, err = run_cli("--db", str(missing / "d.db"), *command, cwd=tmp_path)
    else:
        monkeypatch.setenv("DIGEST_DB", str(missing / "d.db"))
        code, out, err = run_cli(*command, cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err == f"error: {option} {missing / 'd.db'}: no folder {missing}; create it, or name another file\n"
    assert not (tmp_path / "x").exists()
