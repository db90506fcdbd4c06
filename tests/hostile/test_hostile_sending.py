"""Crashes, careless settings and faulty servers while sending: nothing may lose or double a delivery.

SMTP faults come from aiosmtpd handlers (451, 550, 552, dropped connections, stalls, a login reply that
echoes the password), Buttondown faults from the loopback fake of its API. Tests that stop processes poll
for what they wait for; none sleeps to wait.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
from datetime import UTC
from email import message_from_bytes, policy
from urllib.parse import quote

import pytest
import yaml

from digest import load_config, store
from digest.issue.draft import draft_path
from digest.lock import hold, lock_path

from conftest import write_config
from helpers.buttondown import KEY, Answer
from helpers.project import SECRET, WEEK, issue_row, ledger, make_project, subscribers
from helpers.smtp import Behaviour, SmtpServer, self_signed_certificate

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


def run_send(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """`digest send` as a process of its own, run to its end (a minute at most)."""
    process = background_send(tmp_path, *extra)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


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


def test_of_two_posts_sharing_a_title_or_a_link_only_as_many_as_the_email_holds_are_used_up():
    """Two link-less "Weekly notes" and two entries sharing one link; the editor kept one of each."""
    from digest.models import Draft, DraftItem, DraftSection
    from digest.send.sending import posts_in
    from digest.urls import url_key

    def offered(post_id, title, link=None):
        return {"id": post_id, "title": title, "canonical_url": link, "url_key": link and url_key(link)}

    posts = [
        offered("a", "Weekly notes"),
        offered("b", "Weekly notes"),
        offered("c", "Release", "https://x.example/r"),
        offered("d", "Release (again)", "https://x.example/r"),
    ]
    items = [DraftItem(title="Weekly notes", url=None), DraftItem(title="Release", url="https://x.example/r")]
    draft = Draft(issue=WEEK, week_start=None, week_end=None, subject="s", sections=[DraftSection("News", items)])
    assert posts_in(draft, posts) == ["a", "c"]


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
        second = run_send(tmp_path)
        assert second.returncode == 1 and "has no record of it" in second.stderr and "--force" in second.stderr
        assert len(server.messages) == mailed  # nobody mailed from the empty ledger
        forced = run_send(tmp_path, "--force")
    finally:
        server.stop()
    assert forced.returncode == 0 and len(server.messages) == mailed + count  # --force: everyone, as it warns


def test_a_database_older_than_the_receipt_is_refused_not_resumed(tmp_path, run_cli, secret):
    """A backup from the middle of a send put back after the send finished: resuming from it would mail again
    everyone the backup does not know was mailed. The receipt counts more deliveries: refused."""
    people = subscribers(3)
    server = SmtpServer(Behaviour(defer_rcpt={people[1]["email"]: 99, people[2]["email"]: 99})).start()
    try:
        make_project(tmp_path, server.port, people, smtp={"max_attempts": 1})
        assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 75  # 1 delivered, 2 pending
        with sqlite3.connect(tmp_path / "digest.db") as live, sqlite3.connect(tmp_path / "backup.db") as backup:
            live.backup(backup)
        server.behaviour.defer_rcpt.clear()
        assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
        assert len(server.messages) == 3
        for name in ("digest.db-wal", "digest.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / "backup.db").replace(tmp_path / "digest.db")
        code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 1 and "records 1 delivered and sending: it is older than the receipt" in err
    assert len(server.messages) == 3


def test_a_lost_database_stops_the_next_weeks_build_too(tmp_path, server, run_cli, secret):
    """Without the database that sent last week, next week's build would offer last week's posts again."""
    make_project(tmp_path, server.port, subscribers(2))
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    for name in ("digest.db", "digest.db-wal", "digest.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    code, _, err = run_cli("build", "--week", "2026-W15", cwd=tmp_path)
    assert code == 1 and f"{WEEK}.receipt.json says {WEEK} was sent" in err and "has no record of it" in err
    assert not draft_path(tmp_path / "drafts", "2026-W15").exists()
    assert run_cli("build", "--week", "2026-W15", "--force", cwd=tmp_path)[0] == 0  # the editor's way out


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
    api.replay = False  # the first POST creates the email; its answer is lost; the lookup does not list it
    api.script = [  # yet; the retry is refused
        Answer(delay=1.0),
        Answer(200, {"results": [], "count": 0, "next": None, "previous": None}, listing=True),
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


def test_a_refusal_in_the_run_after_a_lost_answer_keeps_the_key_until_force(tmp_path, api, run_cli):
    """The run after one whose answer was lost: its lookup finds nothing (Buttondown may not list the email yet)
    and its POST with the stored key is refused. That refusal proves nothing about the lost request: the key
    stays, and only --force (the editor has looked in Buttondown) gives it up."""
    buttondown_project(tmp_path, api)
    api.script = [Answer(502, {"detail": "Bad gateway"})] * 3
    send = ("send", "--week", WEEK, "--backend", "buttondown", "--yes")
    assert run_cli(*send, cwd=tmp_path)[0] == 1
    stored = issue_row(tmp_path)["idempotency_key"]
    api.script = [Answer(409, {"detail": "An email with this idempotency key is being processed."})]
    code, _, err = run_cli(*send, cwd=tmp_path)
    assert code == 1 and "may have created the email" in err and "--force" in err
    assert issue_row(tmp_path)["idempotency_key"] == stored and issue_row(tmp_path)["status"] == "sending"
    code, _, err = run_cli(*send, "--force", cwd=tmp_path)
    assert code == 0, err
    posts = [r for r in api.requests if r.method == "POST"]
    assert posts[-1].headers["x-idempotency-key"] != stored and issue_row(tmp_path)["remote_id"]


def test_a_clean_refusal_drops_the_key_so_a_corrected_run_starts_afresh(tmp_path, api, run_cli):
    buttondown_project(tmp_path, api)
    api.script = [Answer(400, {"detail": "Subject too long"})]
    code, _, err = run_cli("send", "--week", WEEK, "--backend", "buttondown", "--yes", cwd=tmp_path)
    assert code == 1 and "Subject too long" in err
    assert (issue_row(tmp_path)["status"], issue_row(tmp_path)["idempotency_key"]) == ("draft", None)


# --- 8. secrets in output ----------------------------------------------------------------------------


SECRET_WITH_QUOTES = 'päss"w\\rd-42'  # a quote, a backslash and an accent: each escaped by some echo


@pytest.mark.parametrize(
    "echo",
    [
        lambda secret: f"535 auth failed for {secret.encode()!r}",  # smtplib shows bytes: repr of the UTF-8
        lambda secret: f"login: {secret!r}",  # repr of the str
        lambda secret: json.dumps({"detail": f"bad credentials {secret}"}),  # JSON-escaped
        lambda secret: f"GET /x?p={quote(secret, safe='')}",  # percent-encoded
    ],
    ids=["bytes-repr", "repr", "json", "url"],
)
def test_a_secret_is_redacted_in_every_escaped_form_an_echo_takes(echo):
    from digest.credentials import redact, remember_secret

    remember_secret(SECRET_WITH_QUOTES)
    text = echo(SECRET_WITH_QUOTES)
    assert "rd-42" in text and "rd-42" not in redact(text) and "[redacted]" in redact(text)


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("https://ada:hunter2@feeds.example.com/rss failed", "hunter2"),
        ("GET /feed?api_key=abc123def&page=2: 403", "abc123def"),
        ("X-Api-Key: k-999888 refused", "k-999888"),
        ('{"password": "swordfish"}', "swordfish"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "eyJhbGciOi"),
        ("proxy said: authorization: bearer abcdefghijk", "abcdefghijk"),
        ("retry with token 4f9a8b7c6d5e", "4f9a8b7c6d5e"),
        # letters that case-insensitive matching takes for ASCII ones: İ and ı for i, ſ for s, the Kelvin sign
        ("GET /feed?APİ_KEY=abc123def", "abc123def"),
        ("AUTHORıZATION: whatever-it-is", "whatever-it-is"),
        ('{"paſſword": "swordfish"}', "swordfish"),
        ("x-api-\u212aey: k-999888", "k-999888"),
    ],
)
def test_credentials_digest_never_read_are_redacted_by_their_shape(text, hidden):
    from digest.credentials import redact

    assert hidden not in redact(text) and "[redacted]" in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        *("another digest run holds the lock", "a basic token of thanks", "the password was refused", "token=?"),
        *("Basic Django tutorials", "Secret: Django talks", "password: reset flow", "Bearer of good news"),
    ],
)
def test_prose_that_only_mentions_credentials_is_left_alone(text):
    from digest.credentials import redact

    assert redact(text) == text


def test_a_feed_url_with_a_password_never_shows_it(tmp_path, feed_server, run_cli):
    url = feed_server.url("/private.xml").replace("http://", "http://reader:hunter2@")
    write_config(tmp_path, [{"name": "Members only", "url": url, "private": True}])
    code, out, err = run_cli("collect", cwd=tmp_path)
    assert code == 1 and "hunter2" not in out + err
    code, out, err = run_cli("feeds", "--json", cwd=tmp_path)
    assert code == 0 and "hunter2" not in out + err and "reader:[redacted]@" not in out and "[redacted]@" in out


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


@pytest.mark.parametrize("security", ["starttls", "none"])
def test_a_plain_session_against_an_implicit_tls_port_is_a_broken_setup(tmp_path, run_cli, secret, security):
    """Port 465 waits for a TLS handshake and never greets a plain connection: without a probe every run
    would time out and exit 75, "try again later", for ever."""
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = SmtpServer(tls=context, implicit_tls=True).start()
    try:
        make_project(tmp_path, server.port, subscribers(2), smtp={"security": security, "timeout": 1})
        code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 1 and "waits for TLS from the first byte" in err and "security: ssl" in err
    assert issue_row(tmp_path)["status"] == "draft" and not server.messages


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
        second = run_send(tmp_path)
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


def test_an_address_typed_composed_or_decomposed_is_one_subscriber(tmp_path, server, run_cli, secret):
    """`é` as one code point and as `e` + combining accent: one mailbox, one copy, and one unsubscribe for both."""
    composed, decomposed = "jos\u00e9@x.example", "jose\u0301@x.example"
    csv = f"email,name,status\n{composed},Composed,active\n{decomposed},Decomposed,active\nada@x.example,Ada,active\n"
    make_project(tmp_path, server.port, csv)
    assert run_cli("unsubscribe", decomposed, cwd=tmp_path)[0] == 0
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    assert [message.rcpt for message in server.messages] == ["ada@x.example"]


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


def test_a_database_left_readable_by_others_is_made_private_when_opened(tmp_path, server, run_cli, secret):
    """digest 0.1.0 created digest.db with the umask's mode (0644): the next command takes it back."""
    make_project(tmp_path, server.port, subscribers(2))
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    files = [tmp_path / "digest.db", lock_path(tmp_path / "digest.db")]
    for path in files:
        path.chmod(0o644)
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0  # already sent: it only opens them
    assert [oct(stat.S_IMODE(path.stat().st_mode)) for path in files] == ["0o600", "0o600"]


def test_init_writes_the_subscriber_list_private(tmp_path, run_cli):
    assert run_cli("init", cwd=tmp_path)[0] == 0
    assert stat.S_IMODE((tmp_path / "subscribers.csv").stat().st_mode) == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "feeds.yaml").stat().st_mode) == 0o666 & ~umask  # settings: as any file


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
    from digest.web.preview import PreviewServer

    config = make_project(tmp_path, server.port, subscribers(1))
    preview = PreviewServer(config, WEEK, port=0).start()
    try:
        port = preview.httpd.server_address[1]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.putrequest("GET", "/email.html", skip_host=True)
        if host:
            connection.putheader("Host", host.format(port=port))
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == status and (status == 403 or b"Test Digest" in answer.read())
    finally:
        preview.stop()
