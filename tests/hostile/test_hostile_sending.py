"""Crashes, careless settings and faulty servers while sending: nothing may lose or double a delivery.

SMTP faults come from aiosmtpd handlers (451, 550, 552, dropped connections, stalls, a login reply that
echoes the password), Buttondown faults from the loopback fake of its API. Tests that stop processes poll
for what they wait for; none sleeps to wait.
"""

from __future__ import annotations

import http.client
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC
from email import message_from_bytes, policy

import pytest
import yaml
from test_send_smtp import SECRET, issue_row, ledger

from digest import store
from digest.config import load_config
from digest.draft import draft_path
from digest.lock import hold, lock_path

from helpers.buttondown import KEY, Answer
from helpers.project import WEEK, make_project, subscribers
from helpers.smtp import Behaviour, SmtpServer

COMMAND = [sys.executable, "-m", "digest", "send", "--week", WEEK, "--yes"]


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)


def poll(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        time.sleep(0.01)


def background_send(tmp_path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET=SECRET)
    return subprocess.Popen(
        [*COMMAND, *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# --- 5. a build during a send --------------------------------------------------------------------


def test_build_waits_for_no_one_while_a_send_holds_the_lock(tmp_path, server, run_cli, secret):
    make_project(tmp_path, server.port, subscribers(2))
    with hold(tmp_path / "digest.db"):  # a send in another process
        code, _, err = run_cli("build", "--week", WEEK, cwd=tmp_path)
    assert code == 75 and "another digest run" in err and err.count("\n") == 1


def test_a_resumed_send_mails_the_draft_the_first_subscribers_got(tmp_path, run_cli, secret):
    people = subscribers(3)
    server = SmtpServer(Behaviour(defer_rcpt={people[2]["email"]: 99})).start()
    try:
        make_project(tmp_path, server.port, people, smtp={"max_attempts": 1})
        code, _, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 75 and len(server.messages) == 2
        path = draft_path(tmp_path / "drafts", WEEK)
        path.write_text(path.read_text().replace("Ünïcode post 0", "REWRITTEN after the send began"))
        server.behaviour.defer_rcpt.clear()
        code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 0 and "changed since the send began" in err
    bodies = [
        message_from_bytes(m.data, policy=policy.default).get_body(("plain",)).get_content() for m in server.messages
    ]
    assert len(bodies) == 3 and all("Ünïcode post 0" in body and "REWRITTEN" not in body for body in bodies)


def test_only_the_posts_the_email_holds_are_used_up(tmp_path, server, run_cli, secret, feed_server):
    from datetime import datetime, timedelta
    from email.utils import format_datetime

    from helpers.feeds import Route, rss

    monday = datetime(2026, 3, 30, 12, tzinfo=UTC)
    feed_server.routes["/feed.xml"] = Route(
        rss(
            [
                {
                    "title": f"Post {n}",
                    "link": f"https://blog.example.com/{n}/",
                    "guid": f"p{n}",
                    "description": "x",
                    "date": format_datetime(monday + timedelta(hours=n)),
                }
                for n in range(3)
            ]
        )
    )
    make_project(
        tmp_path,
        server.port,
        subscribers(1),
        feeds=[{"name": "Blog", "url": feed_server.url("/feed.xml"), "section": "News"}],
    )
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    assert run_cli("build", "--week", WEEK, cwd=tmp_path)[0] == 0
    path = draft_path(tmp_path / "drafts", WEEK)
    data = yaml.safe_load(path.read_text())
    data["sections"][0]["items"].pop(1)  # the editor deletes Post 1
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    db = store.open_db(tmp_path / "digest.db")
    marked = dict(db.execute("SELECT posts.title, in_email FROM issue_posts JOIN posts ON posts.id = post_id"))
    assert marked == {"Post 0": 1, "Post 1": 0, "Post 2": 1}


# --- 6. a lost database ----------------------------------------------------------------------------


def test_an_empty_database_file_is_refused_not_taken_for_a_new_one(tmp_path, server, run_cli, secret):
    make_project(tmp_path, server.port, subscribers(2))
    (tmp_path / "digest.db").write_bytes(b"")
    code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and "digest.db is empty (0 bytes)" in err and err.count("\n") == 1
    assert server.messages == [] and (tmp_path / "digest.db").stat().st_size == 0


def test_a_send_whose_database_is_deleted_stops_and_the_next_refuses_to_mail_everyone_again(tmp_path):
    count = 40
    server = SmtpServer(Behaviour(delay=0.03)).start()
    try:
        make_project(tmp_path, server.port, subscribers(count), smtp={"connections": 2})
        first = background_send(tmp_path)
        server.wait_for(5)
        for name in ("digest.db", "digest.db-wal", "digest.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        _out, err = first.communicate(timeout=60)
        assert first.returncode == 1 and "was removed or replaced during the send" in err, err
        mailed = len(server.messages)
        assert mailed < count
        receipt = tmp_path / "drafts" / f"{WEEK}.receipt.json"
        assert receipt.exists() and '"status": "sending"' in receipt.read_text()
        second = subprocess.run(
            COMMAND,
            cwd=tmp_path,
            env=dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET=SECRET),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "has no record of it" in second.stderr and "--force" in second.stderr
        assert len(server.messages) == mailed  # nobody mailed from the empty ledger
        forced = subprocess.run(
            [*COMMAND, "--force"],
            cwd=tmp_path,
            env=dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET=SECRET),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert forced.returncode == 0 and len(server.messages) == mailed + count  # --force: everyone, as it warns


def test_run_refuses_before_collecting_into_the_draft_of_a_lost_send(tmp_path, server, run_cli, secret, monkeypatch):
    make_project(tmp_path, server.port, subscribers(2))
    monkeypatch.setattr("digest.jobs.current_week", lambda now, tz: WEEK)
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    draft = draft_path(tmp_path / "drafts", WEEK).read_text()
    (tmp_path / "digest.db").rename(tmp_path / "digest.db.lost")
    for name in ("digest.db-wal", "digest.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    code, out, err = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 1 and "has no record of it" in err and out == ""
    assert draft_path(tmp_path / "drafts", WEEK).read_text() == draft and len(server.messages) == 2


# --- 7. Buttondown: a second email ---------------------------------------------------------------------


def buttondown_project(tmp_path, api):
    settings = {"api_url": api.url, "timeout": 0.5, "max_attempts": 3, "backoff": 0.01}
    return make_project(tmp_path, 2525, subscribers(2), buttondown=settings)


@pytest.mark.parametrize("refusal", [400, 409, 422])
def test_a_refusal_after_a_lost_answer_keeps_the_key_and_the_next_run_finds_the_email(tmp_path, api, run_cli, refusal):
    buttondown_project(tmp_path, api)
    api.replay = False  # the first POST creates the email; its answer is lost; the retry is refused
    api.script = [
        Answer(delay=1.0),
        Answer(refusal, {"detail": "An email with this idempotency key is being processed."}),
    ]
    code, _, err = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--send-now", "--yes", cwd=tmp_path)
    assert code == 1 and "may have created the email" in err
    row = issue_row(tmp_path)
    assert row["status"] == "sending" and row["idempotency_key"] and row["remote_id"] is None
    code, _out, err = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--send-now", "--yes", cwd=tmp_path)
    assert code == 0, err
    assert len(api.created) == 1 and [r.method for r in api.requests].count("POST") == 2  # no third POST
    assert issue_row(tmp_path)["remote_id"] == next(iter(api.created.values()))["id"]


def test_a_clean_refusal_drops_the_key_so_a_corrected_run_starts_afresh(tmp_path, api, run_cli):
    buttondown_project(tmp_path, api)
    api.script = [Answer(400, {"detail": "Subject too long"})]
    code, _, err = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--yes", cwd=tmp_path)
    assert code == 1 and "Subject too long" in err
    assert (issue_row(tmp_path)["status"], issue_row(tmp_path)["idempotency_key"]) == ("draft", None)


# --- 8. secrets in output ----------------------------------------------------------------------------


def test_a_buttondown_error_that_echoes_the_request_never_prints_the_key(tmp_path, api, run_cli):
    buttondown_project(tmp_path, api)
    api.script = [Answer(400, {"detail": f"bad request: Authorization: Token {KEY}; X-Api-Key={KEY}"})]
    code, out, err = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--yes", cwd=tmp_path)
    assert code == 1 and KEY not in out + err and "[redacted]" in err


def test_an_smtp_reply_that_echoes_the_password_is_redacted_everywhere(tmp_path, run_cli, monkeypatch, secret):
    server = SmtpServer(Behaviour(refuse_login=True, echo_login=True)).start()
    try:
        make_project(tmp_path, server.port, subscribers(2), smtp={"username": "digest-user"})
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "correct-horse-battery")
        code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 1 and "correct-horse-battery" not in out + err and "[redacted]" in err
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert b"correct-horse-battery" not in stored


# --- 9. exit codes that say what is wrong ---------------------------------------------------------------


def test_implicit_tls_against_a_plain_port_is_a_broken_setup_not_a_try_again(tmp_path, server, run_cli, secret):
    make_project(tmp_path, server.port, subscribers(2), smtp={"security": "ssl"})
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and "is smtp.security right for this port?" in err
    assert issue_row(tmp_path)["status"] == "draft" and not ledger(tmp_path)  # not frozen in `sending`


def test_a_stalled_server_is_for_later_and_a_full_mailbox_for_the_record(tmp_path, run_cli, secret):
    people = subscribers(3)
    server = SmtpServer(Behaviour(delay=0.0, too_big={people[1]["email"]})).start()
    try:
        make_project(tmp_path, server.port, people, smtp={"timeout": 0.5, "max_attempts": 1})
        server.behaviour.delay = 2.0  # stalls past smtp.timeout: time may fix it
        code, _, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 75
        server.behaviour.delay = 0.0
        code, _out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    statuses = {row["email"]: row["status"] for row in ledger(tmp_path).values()}
    assert code == 0 and statuses[people[1]["email"]] == "failed"  # 552: this message, not the address
    assert people[1]["email"] not in store.suppressions(store.open_db(tmp_path / "digest.db"))


def test_sigterm_finishes_the_messages_in_flight_and_a_resume_mails_no_one_twice(tmp_path):
    count = 40
    server = SmtpServer(Behaviour(delay=0.05)).start()
    try:
        make_project(tmp_path, server.port, subscribers(count), smtp={"connections": 4})
        first = background_send(tmp_path)
        server.wait_for(6)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 143 and "stopped by SIGTERM" in err, err
        rows = ledger(tmp_path)
        assert "sending" not in {row["status"] for row in rows.values()}  # what was in flight is recorded
        assert sum(row["status"] == "sent" for row in rows.values()) == len(server.messages) < count
        second = subprocess.run(
            COMMAND,
            cwd=tmp_path,
            env=dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET=SECRET),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert second.returncode == 0, second.stderr
    received = server.per_recipient()
    assert len(received) == count and max(received.values()) == 1


# --- 11. addresses are compared exactly --------------------------------------------------------------------


def test_unicode_case_folding_never_makes_two_subscribers_one(tmp_path, server, run_cli, secret):
    from digest.send.unsubscribe import UnsubscribeLinks

    csv = (
        "email,name,status\nſ@x.example,Long S,active\ns@x.example,Plain S,active\nstraße@x.example,Eszett,active\n"
        "strasse@x.example,Double S,active\n"
    )
    config = load_config(make_project(tmp_path, server.port, csv))
    token = UnsubscribeLinks.for_newsletter(config.newsletter).url("ſ@x.example").split("token=")[1]
    assert run_cli("unsubscribe", token, cwd=tmp_path)[0] == 0
    assert run_cli("send", "--week", WEEK, "--dry-run", cwd=tmp_path)[0] == 0
    db = store.open_db(tmp_path / "digest.db")
    assert store.suppressions(db) == {"ſ@x.example": "unsubscribed"}
    written = sorted(path.name for path in (tmp_path / "drafts" / f"{WEEK}.dry-run").iterdir())
    assert written == ["01-s@x.example.eml", "02-stra_e@x.example.eml", "03-strasse@x.example.eml"]


# --- 12. privacy --------------------------------------------------------------------------------------------


def test_files_that_hold_addresses_are_private(tmp_path, server, run_cli, secret):
    make_project(tmp_path, server.port, subscribers(2))
    assert run_cli("send", "--week", WEEK, "--dry-run", cwd=tmp_path)[0] == 0
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    private = [
        tmp_path / "digest.db",
        lock_path(tmp_path / "digest.db"),
        *(tmp_path / "drafts" / f"{WEEK}.dry-run").iterdir(),
    ]
    private += [path for path in (tmp_path / "digest.db-wal", tmp_path / "digest.db-shm") if path.exists()]
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in private} == {"0o600"}
    assert stat.S_IMODE((tmp_path / "drafts" / f"{WEEK}.dry-run").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "host, status",
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("evil.example:{port}", 403),
        ("127.0.0.1.evil.example", 403),
        ("", 403),
    ],
)
def test_the_preview_answers_only_requests_for_this_machine(tmp_path, server, host, status):
    from digest.preview import PreviewServer

    config = make_project(tmp_path, server.port, subscribers(1))
    preview = PreviewServer(config, WEEK, port=0).start()
    try:
        port = preview.httpd.server_address[1]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.putrequest("GET", "/state.json", skip_host=True)
        if host:
            connection.putheader("Host", host.format(port=port))
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == status and (status == 403 or b"Test Digest" in answer.read())
    finally:
        preview.stop()
