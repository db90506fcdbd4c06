"""`digest send` over SMTP against a real server (aiosmtpd on 127.0.0.1): the message, the ledger, retries, resume."""

from __future__ import annotations

import email
import os
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import sqlite_utils

from digest import load_config, store
from digest.errors import DigestError
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.issue.render import personalize, render_issue
from digest.models import (
    SUBSCRIBER_NAME_MARK,
    UNSUBSCRIBE_URL_MARK,
    Draft,
    DraftItem,
    DraftSection,
    RenderedIssue,
)
from digest.send import sending
from digest.send.message import MessageFactory
from digest.send.smtp import SmtpBackend
from digest.send.unsubscribe import UnsubscribeLinks, verify_token
from digest.settings.config import Newsletter

from helpers.project import SECRET, WEEK, issue_row, ledger, make_project, subscribers
from helpers.smtp import Behaviour, SmtpServer, self_signed_certificate


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    for name in ("DIGEST_SMTP_PASSWORD", "DIGEST_SMTP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)


def pending_deliveries(path: Path, emails: list[str]) -> sqlite_utils.Database:
    """A database holding issue `w` with a pending delivery row for each address."""
    db = store.open_db(path)
    db.execute("INSERT INTO issues (id, subject, status, created_at) VALUES ('w', 's', 'draft', 'now')")
    store.start_deliveries(db, "w", "smtp", iter(emails), datetime.now(UTC))
    return db


def disk_full(*args, **kwargs):
    """Stands in for a store function when the disk is full."""
    raise sqlite3.OperationalError("database or disk is full")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def decoded(part: email.message.EmailMessage) -> str:
    return part.get_content().replace("\r\n", "\n")


def check_wire_format(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # quoted-printable's own limit
    assert b"%%DIGEST" not in raw


# --- the message ---------------------------------------------------------------------------


def test_each_message_is_complete_personal_and_well_formed(tmp_path, server, run_cli):
    people = [
        {"email": "ada+news@example.com", "name": 'Ada Lövelace, "the" Countess', "status": "active"},
        {"email": "grace@example.com", "name": "Grace Hopper", "status": "active"},
        {"email": "anon@example.com", "name": "", "status": "active"},
    ]
    config_path = make_project(tmp_path, server.port, people)
    code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0, err
    assert "3 sent, 0 failed, 0 pending" in out

    config = load_config(config_path)
    rendered = render_issue(read_draft(draft_path(config.drafts_dir, WEEK)), config.newsletter)
    assert UNSUBSCRIBE_URL_MARK in rendered.html and UNSUBSCRIBE_URL_MARK in rendered.text
    links = UnsubscribeLinks.for_newsletter(config.newsletter)
    assert sorted(m.rcpt for m in server.messages) == sorted(p["email"] for p in people)
    message_ids = set()
    for received, person in ((m, next(p for p in people if p["email"] == m.rcpt)) for m in server.messages):
        check_wire_format(received.data)
        message = parse(received.data)
        assert message["Subject"] == "Test Digest – Mar 30 to Apr 5, 2026 ✨"
        assert b"Subject: Test Digest =?utf-8?" in received.data  # RFC 2047 on the wire
        assert message["To"].addresses[0].addr_spec == person["email"]
        assert message["To"].addresses[0].display_name == person["name"]
        assert message["From"].addresses[0].addr_spec == "digest@example.com"
        assert message["Reply-To"] == "editor@example.com"
        assert abs(parsedate_to_datetime(message["Date"]) - datetime.now(UTC)) < timedelta(minutes=5)
        message_ids.add(message["Message-ID"])
        assert re.fullmatch(r"<2026-W14\.[0-9a-f]{24}@example\.com>", message["Message-ID"])

        url = links.url(person["email"])
        token = re.search(r"token=([\w.-]+)", url)[1]
        assert verify_token(SECRET, config.newsletter.list_identifier, token) == person["email"]
        assert verify_token(SECRET, "another-newsletter.example.com", token) is None
        assert message["List-Unsubscribe"] == f"<{url}>, <mailto:editor@example.com?subject=unsubscribe>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        assert message.get_content_type() == "multipart/alternative"
        text, html = message.iter_parts()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        name = person["name"]
        assert decoded(text) == personalize(rendered.text, unsubscribe_url=url, name=name, html=False)
        assert decoded(html) == personalize(rendered.html, unsubscribe_url=url, name=name, html=True)
    assert len(message_ids) == 3
    assert {row["status"] for row in ledger(tmp_path).values()} == {"sent"}
    assert issue_row(tmp_path)["status"] == "sent" and issue_row(tmp_path)["sent_at"]


@pytest.mark.parametrize("column", [0, 1, 30, 60, 70, 72, 73, 74, 75, 76, 77, 78, 150])
def test_marks_survive_quoted_printable_at_every_column(column):
    """Wherever a mark falls in a line, the decoded copy holds exactly the subscriber's value."""
    long_url = "https://digest.example.com/unsubscribe?x=" + "t" * 300 + "&token={token}"
    body = (
        "x" * column
        + UNSUBSCRIBE_URL_MARK
        + SUBSCRIBER_NAME_MARK
        + " tail=é\n"
        + "word " * column
        + SUBSCRIBER_NAME_MARK
        + "\n"
        + UNSUBSCRIBE_URL_MARK
        + "\n\n.leading dot\n"
        + "y" * 2000
    )
    rendered = RenderedIssue(subject="Marks", preheader="", html=f"<p>{body}</p>", text=body)
    links = UnsubscribeLinks(mailto="mailto:a@example.com?subject=unsubscribe", url_template=long_url, secret="s")
    factory = MessageFactory(rendered, Newsletter(), links, WEEK)
    name = "Zoë O'Brien & <Co> " + "ñ" * 40
    raw = factory.copy("zoe@example.com", name, factory.message_id("zoe@example.com"))
    check_wire_format(raw)
    url = links.url("zoe@example.com")
    text, html = parse(raw).iter_parts()
    assert decoded(text) == personalize(body, unsubscribe_url=url, name=name, html=False)
    assert decoded(html) == personalize(f"<p>{body}</p>", unsubscribe_url=url, name=name, html=True)


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
        b".Starts with a dot\r\n\r\nno line end at the end",
    ],
)
def test_the_data_arrives_as_it_was_made_whatever_its_dots(server, message):
    """digest stuffs the dots itself (smtplib's regular expression cost a sixth of the sender's CPU)."""
    from digest.send.smtp_transport import Connection, SmtpSettings

    connection = Connection(SmtpSettings(host="127.0.0.1", port=server.port, security="none"), None)
    try:
        assert connection.transact("digest@example.com", "a@example.com", message).startswith("250 ")
    finally:
        connection.close()
    expected = message if message.endswith(b"\r\n") else message + b"\r\n"
    assert [received.data for received in server.messages] == [expected]


def test_a_transaction_not_ready_before_its_data_sends_nothing_and_keeps_the_connection(server):
    """The ledger's `sending` is waited for before DATA: a recipient settled meanwhile (unsubscribed) gets
    nothing, and the connection goes on with the next one."""
    from digest.send.smtp_transport import Connection, SmtpSettings

    connection = Connection(SmtpSettings(host="127.0.0.1", port=server.port, security="none"), None)
    try:
        assert connection.transact("digest@example.com", "gone@example.com", b"x\r\n", ready=lambda: False) is None
        session = connection.smtp
        assert connection.transact("digest@example.com", "b@example.com", b"y\r\n").startswith("250 ")
        assert connection.smtp is session
    finally:
        connection.close()
    assert [(received.rcpt, received.data) for received in server.messages] == [("b@example.com", b"y\r\n")]


def test_the_issue_is_rendered_once_whatever_the_number_of_subscribers(tmp_path, server, monkeypatch):
    config = load_config(make_project(tmp_path, server.port, subscribers(12)))
    calls = []
    monkeypatch.setattr(sending, "render_issue", lambda *args: calls.append(args) or render_issue(*args))
    db = store.open_db(tmp_path / "digest.db")
    report = sending.send_issue(config, db, WEEK)
    assert report.sent == 12 and report.complete and len(server.messages) == 12
    assert len(calls) == 1
    assert len({message.peer for message in server.messages}) <= 2  # smtp.connections, each reused


# --- refusals, retries, the ledger -----------------------------------------------------------


def test_4xx_retried_5xx_recorded_and_dropped_connection_retried(tmp_path, run_cli):
    behaviour = Behaviour(
        defer_rcpt={"reader00001@example.com": 2},
        refuse_rcpt={"reader00002@example.com"},
        refuse_data={"reader00003@example.com"},
        drop_at_data={"reader00004@example.com": 1},
    )
    server = SmtpServer(behaviour).start()
    try:
        make_project(tmp_path, server.port, subscribers(8))
        code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 0, err
    assert "6 sent, 2 failed, 0 pending" in out
    assert "failed: reader00002@example.com: 550 5.1.1 no such mailbox here (after RCPT)" in out
    assert "failed: reader00003@example.com: 554 5.7.1 message refused (after DATA)" in out
    rows = ledger(tmp_path)
    assert rows["reader00001@example.com"]["status"] == "sent" and rows["reader00001@example.com"]["attempts"] == 3
    assert rows["reader00001@example.com"]["last_reply"].startswith("250 2.0.0 Ok: queued as")
    assert rows["reader00002@example.com"]["status"] == "failed" and rows["reader00002@example.com"]["attempts"] == 1
    assert rows["reader00003@example.com"]["status"] == "failed" and rows["reader00003@example.com"]["attempts"] == 1
    assert server.rcpt_attempts["reader00002@example.com"] == 1  # a 5xx is never retried
    assert rows["reader00004@example.com"]["status"] == "sent" and rows["reader00004@example.com"]["attempts"] == 2
    assert sum(row["attempts"] for row in rows.values()) == 3 + 1 + 1 + 2 + 4
    assert sorted(server.per_recipient().values()) == [1] * 6
    db = store.open_db(tmp_path / "digest.db")
    assert store.suppressions(db) == {"reader00002@example.com": "bounced"}  # refused address, not refused message
    assert issue_row(tmp_path)["status"] == "sent"


def test_retries_run_out_leave_the_rest_pending_and_a_rerun_finishes(tmp_path, run_cli):
    server = SmtpServer(Behaviour(defer_rcpt={"reader00000@example.com": 3})).start()
    try:
        make_project(tmp_path, server.port, subscribers(3))
        code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 75
        assert "2 sent, 0 failed, 1 pending" in out and "451 4.7.1 greylisted" in out
        assert ledger(tmp_path)["reader00000@example.com"]["status"] == "pending"
        assert issue_row(tmp_path)["status"] == "sending"
        code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 0 and "1 sent, 0 failed, 0 pending" in out and "2 had it already" in out
    assert sorted(server.per_recipient().values()) == [1, 1, 1]
    assert issue_row(tmp_path)["status"] == "sent"


def test_unsubscribed_bounced_and_invalid_are_never_mailed_and_the_database_wins(tmp_path, server, run_cli):
    csv_text = (
        "email,name,status\n"
        "keep@example.com,Keep,active\n"
        "left@example.com,Left,unsubscribed\n"
        "gone@example.com,Gone,bounced\n"
        "not-an-address,Broken,active\n"
        "KEEP@example.com,Keep again,active\n"
        "later@example.com,Later,active\n"
        "bounced-before@example.com,,active\n"
    )
    make_project(tmp_path, server.port, csv_text)
    db = store.open_db(tmp_path / "digest.db")
    store.suppress(db, "bounced-before@example.com", "bounced", store.from_iso("2026-03-01T00:00:00+00:00"))
    code, out, _ = run_cli("unsubscribe", "Later@Example.com", cwd=tmp_path)
    assert code == 0 and "Later@Example.com: unsubscribed" in out
    assert run_cli("unsubscribe", "later@example.com", cwd=tmp_path)[1].endswith("nothing to do\n")
    assert run_cli("unsubscribe", "nobody", cwd=tmp_path)[0] == 2
    code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0
    assert "subscribers.csv:5: email: not a valid address: 'not-an-address' (not mailed)" in err
    assert [m.rcpt.casefold() for m in server.messages] == ["keep@example.com"]
    assert "1 sent, 0 failed, 0 pending" in out and "2 bounced" in out and "2 unsubscribed" in out


def test_unsubscribe_accepts_the_token_of_a_link_of_this_newsletter_only(tmp_path, server, run_cli):
    config = load_config(make_project(tmp_path, server.port, subscribers(1)))
    links = UnsubscribeLinks.for_newsletter(config.newsletter)
    token = links.url("a@example.com").split("token=")[1]
    code, out, _ = run_cli("unsubscribe", token, cwd=tmp_path)
    assert code == 0 and out == "a@example.com: unsubscribed\n"
    code, _, err = run_cli("unsubscribe", token[:-2] + "xx", cwd=tmp_path)
    assert code == 2 and "neither an address nor a token" in err
    other = (
        UnsubscribeLinks(
            mailto="", url_template="https://x.example/u?t={token}", secret=SECRET, newsletter="another.example.com"
        )
        .url("b@example.com")
        .split("t=")[1]
    )
    assert run_cli("unsubscribe", other, cwd=tmp_path)[0] == 2  # same secret, another newsletter


def test_links_of_an_issue_sent_under_an_older_title_still_unsubscribe(tmp_path, server, run_cli):
    """The default list-id comes from the title: renaming the newsletter must not break last week's links."""
    make_project(tmp_path, server.port, subscribers(2), title="Old Name")
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    message = email.message_from_bytes(server.messages[0].data, policy=policy.SMTP)
    token = message["List-Unsubscribe"].split("token=")[1].split(">")[0]
    assert "<old-name." in message["List-Id"]
    config = tmp_path / "feeds.yaml"
    config.write_text(config.read_text().replace("title: Old Name", "title: New Name"))
    code, out, err = run_cli("unsubscribe", token, cwd=tmp_path)
    assert code == 0 and out == f"{server.messages[0].rcpt}: unsubscribed\n", err


def test_tokens_of_release_0_1_0_still_unsubscribe_ascii_addresses_only(tmp_path, server, run_cli):
    import base64
    import hashlib
    import hmac

    def legacy(email: str) -> str:  # how 0.1.0 made them
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signature = hmac.new(SECRET.encode(), b"digest-unsubscribe\0" + email.casefold().encode(), hashlib.sha256)
        return f"{b64(email.encode())}.{b64(signature.digest()[:18])}"

    make_project(tmp_path, server.port, subscribers(1))
    code, out, _ = run_cli("unsubscribe", legacy("Old@Example.com"), cwd=tmp_path)
    assert code == 0 and out == "Old@Example.com: unsubscribed\n"
    assert run_cli("unsubscribe", legacy("\u017f@example.com"), cwd=tmp_path)[0] == 2  # ſ folds to s


def test_a_second_send_sends_nothing(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, subscribers(3))
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0 and "already sent" in out and len(server.messages) == 3


# --- test copies, dry runs, confirmation, secrets ---------------------------------------------


def test_to_sends_one_test_copy_and_records_nothing(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, subscribers(3))
    code, out, _ = run_cli("send", "--week", WEEK, "--to", "editor@example.com", cwd=tmp_path)
    assert code == 0 and "test copy sent to editor@example.com (250 2.0.0 Ok" in out and "nothing recorded" in out
    assert [m.rcpt for m in server.messages] == ["editor@example.com"]
    assert ".test." in parse(server.messages[0].data)["Message-ID"]
    assert not ledger(tmp_path) and issue_row(tmp_path) is None


def test_dry_run_writes_complete_eml_files_and_sends_nothing(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, subscribers(5))
    code, out, _ = run_cli("send", "--week", WEEK, "--dry-run", cwd=tmp_path)
    assert code == 0 and "dry run, nothing sent; wrote 3 file(s) to" in out
    files = sorted((tmp_path / "drafts" / f"{WEEK}.dry-run").glob("*.eml"))
    assert [f.name for f in files] == [f"0{n + 1}-reader0000{n}@example.com.eml" for n in range(3)]
    for path in files:
        check_wire_format(path.read_bytes())
        assert parse(path.read_bytes())["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not server.messages and not ledger(tmp_path) and issue_row(tmp_path) is None


def test_confirmation_shows_subject_and_count_and_is_required(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(4))
    code, _out, err = run_cli("send", "--week", WEEK, cwd=tmp_path)  # pytest's stdin is no terminal
    assert code == 2 and err == "error: no terminal to ask for confirmation: add --yes to send without asking\n"
    questions = []
    monkeypatch.setattr("digest.cli.sending.terminal", lambda: True)
    monkeypatch.setattr("typer.confirm", lambda question: questions.append(question) or False)
    code, _, err = run_cli("send", "--week", WEEK, cwd=tmp_path)
    assert code == 1 and questions == ["Send 2026-W14 “Test Digest – Mar 30 to Apr 5, 2026 ✨” to 4 subscribers?"]
    assert not server.messages and not ledger(tmp_path)


def test_the_confirmation_shows_the_subject_as_the_email_carries_it(tmp_path, server):
    make_project(tmp_path, server.port, subscribers(2), titles=["Django 6.0 released", "Second"])
    path = draft_path(tmp_path / "drafts", WEEK)
    draft = read_draft(path)
    draft.subject = "Test Digest #3: {lead}"
    write_draft(path, draft)
    questions: list[str] = []
    config = load_config(tmp_path / "feeds.yaml")
    with pytest.raises(DigestError, match="not confirmed"):
        sending.send_issue(
            config, store.open_db(tmp_path / "digest.db"), WEEK, confirm=lambda q: questions.append(q) or False
        )
    assert questions == [f"Send {WEEK} “Test Digest #3: Django 6.0 released” to 2 subscribers?"]


def test_a_refused_login_never_shows_the_password(tmp_path, run_cli, monkeypatch):
    server = SmtpServer(Behaviour(refuse_login=True)).start()
    try:
        make_project(tmp_path, server.port, subscribers(2), smtp={"username": "digest-user"})
        code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 2 and "DIGEST_SMTP_PASSWORD (or DIGEST_SMTP_PASSWORD_FILE) is not set" in err
        password_file = tmp_path / "password"
        password_file.write_text("hunter2-is-secret\n")
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD_FILE", str(password_file))
        code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 1
    assert err.startswith("error: SMTP login as 'digest-user' at 127.0.0.1:") and "refused: 535" in err
    assert err.count("\n") == 1 and "hunter2" not in out + err
    assert server.logins and not server.messages
    assert "nothing was delivered, 2026-W14 is a draft again" in err
    assert not ledger(tmp_path) and issue_row(tmp_path)["status"] == "draft"  # the editor may still change it
    assert "hunter2" not in (tmp_path / "digest.db").read_bytes().decode("latin-1")


def test_a_signed_unsubscribe_url_needs_its_secret(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(2))
    monkeypatch.delenv("DIGEST_UNSUBSCRIBE_SECRET")
    code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 2 and err.startswith("error: DIGEST_UNSUBSCRIBE_SECRET is not set") and err.count("\n") == 1
    assert not server.messages and issue_row(tmp_path) is None


def test_without_an_unsubscribe_url_the_mailto_is_the_link(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(1), unsubscribe_url=None)
    monkeypatch.delenv("DIGEST_UNSUBSCRIBE_SECRET")
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    message = parse(server.messages[0].data)
    assert message["List-Unsubscribe"] == "<mailto:editor@example.com?subject=unsubscribe>"
    assert message["List-Unsubscribe-Post"] is None  # RFC 8058 one-click needs an https URL
    assert "mailto:editor@example.com?subject=unsubscribe" in message.get_body(("plain",)).get_content()


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command to make a certificate")
@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_verifies_the_certificate(tmp_path, run_cli, monkeypatch, security):
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = SmtpServer(tls=context, implicit_tls=security == "ssl").start()
    try:
        make_project(tmp_path, server.port, subscribers(2), smtp={"security": security})
        code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 1 and f"error: TLS to 127.0.0.1:{server.port}: self-signed certificate" in err
        assert not server.messages and not any(row["attempts"] for row in ledger(tmp_path).values())
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now the certificate is trusted
        code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 0, err
    assert "2 sent, 0 failed, 0 pending" in out and len(server.messages) == 2


# --- kill -9 and resume ------------------------------------------------------------------------


def test_a_killed_send_resumes_with_at_most_one_duplicate_per_connection(tmp_path):
    count, connections = 60, 4
    server = SmtpServer(Behaviour(delay=0.02)).start()
    try:
        make_project(tmp_path, server.port, subscribers(count), smtp={"connections": connections})
        command = [sys.executable, "-m", "digest", "send", "--week", WEEK, "--yes"]
        env = dict(os.environ, DIGEST_UNSUBSCRIBE_SECRET=SECRET)
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        server.wait_for(12)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        interrupted = ledger(tmp_path)
        assert 12 - connections <= sum(row["status"] == "sent" for row in interrupted.values()) < count
        second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert second.returncode == 0, second.stderr
    received = server.per_recipient()
    assert set(received) == {row["email"] for row in subscribers(count)}
    duplicates = [address for address, times in received.items() if times > 1]
    assert max(received.values()) <= 2 and len(duplicates) <= connections
    resent = re.search(r"(\d+) in flight when the last run stopped", second.stdout)
    assert len(duplicates) <= (int(resent[1]) if resent else 0)
    assert {row["status"] for row in ledger(tmp_path).values()} == {"sent"}
    assert issue_row(tmp_path)["status"] == "sent"


# --- edge cases of the list ---------------------------------------------------------------------


def test_an_empty_list_sends_nothing_and_leaves_the_issue_unsent(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, "email,name,status\nleft@example.com,Left,unsubscribed\n")
    code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0 and out == (
        f"{WEEK}: nobody to mail, no active subscriber in the database or in subscribers.csv; "
        "nothing sent, nothing recorded\n"
    )
    assert not server.messages and not ledger(tmp_path)
    assert issue_row(tmp_path) is None  # still a draft: its posts are not used up
    code, out, _ = run_cli("send", "--week", WEEK, "--dry-run", cwd=tmp_path)
    assert code == 0 and "wrote 1 file(s)" in out  # a sample reader's copy
    assert (tmp_path / "drafts" / f"{WEEK}.dry-run" / "01-subscriber@example.com.eml").exists()


def test_an_address_skipped_by_an_earlier_run_and_back_on_the_list_is_mailed(tmp_path, server):
    config = load_config(make_project(tmp_path, server.port, subscribers(2)))
    db = store.open_db(tmp_path / "digest.db")
    now = datetime.now(UTC)
    store.ensure_issue(db, WEEK, "Subject", now)
    keys = [row["email"] for row in subscribers(2)]
    store.start_deliveries(db, WEEK, "smtp", keys, now)  # a first run that stopped before mailing anyone
    store.start_deliveries(db, WEEK, "smtp", keys[:1], now)  # a second one while reader00001 was off the list
    assert ledger(tmp_path)[keys[1]]["status"] == "skipped"
    report = sending.send_issue(config, db, WEEK)
    assert report.sent == 2 and report.complete and sorted(server.per_recipient()) == keys


def test_an_unsubscribe_url_too_long_for_a_mail_line_is_refused_before_sending(tmp_path, server, run_cli):
    make_project(
        tmp_path,
        server.port,
        subscribers(1),
        unsubscribe_url="https://digest.example.com/u?" + "x" * 600 + "&t={token}&e={email}",
    )
    code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 2 and err.startswith("error: newsletter.unsubscribe_url: too long: ") and err.count("\n") == 1
    assert not server.messages and issue_row(tmp_path) is None


def test_a_long_issue_rendered_for_real_is_well_formed(tmp_path, server, run_cli):
    """60 items with long titles, URLs and summaries, through render.py and the message factory."""
    make_project(tmp_path, server.port, subscribers(2))
    items = [
        DraftItem(
            title=f"Ünïcode “item” {n}: " + "a very long title " * 8,
            url=f"https://example.com/{'deep/' * 60}{n}?q={'x' * 300}",
            summary="Sentences with no break at all " * 20 + "€" * 50,
            source="example.com",
        )
        for n in range(60)
    ]
    draft = Draft(
        issue=WEEK,
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="Long " * 30 + "✨",
        intro="Hello " * 200,
        sections=[DraftSection(title="News", items=items[:30]), DraftSection(title="Articles", items=items[30:])],
    )
    write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", "--allow-clipped", cwd=tmp_path)  # 115 KB of HTML
    assert code == 0, err
    assert len(server.messages) == 2
    for received in server.messages:
        raw = received.data
        check_wire_format(raw)
        message = parse(raw)
        assert message["Subject"] == "Long " * 30 + "✨"
        text, html = message.iter_parts()
        body = decoded(html)
        assert all(item.url.replace("&", "&amp;") in body or item.url in body for item in items)
        assert decoded(text).count("https://example.com/deep/") == 60


# --- defences: header lines, a database that fails mid-run ------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["Week 14\r\nBcc: everyone@example.com", "Week 14\n", "Week\r14", "Ünïcode week\nBcc: everyone@example.com"],
)
def test_the_header_writer_refuses_a_line_break_on_either_path(value):
    from digest.send.message import _header

    with pytest.raises(ValueError, match="a line break in the Subject header"):
        _header("Subject", value)
    assert _header("Subject", "Week 14") == b"Subject: Week 14\r\n"


def test_a_sent_whose_transaction_failed_is_written_by_the_next_one(tmp_path, monkeypatch):
    """The ledger's writer commits a 250's `sent` without the worker waiting; when that transaction fails, the
    row is kept and written first by the next transaction (at the latest the one `close` asks for): the
    recipient is not left `sending` (re-mailed). What a worker waited on fails with the error."""
    from digest.send.ledger import Ledger

    path = tmp_path / "digest.db"
    db = pending_deliveries(path, ["a@example.com", "b@example.com"])
    ledger = Ledger(str(path), "w")
    assert ledger.sending("a@example.com", "<a@x>").result(timeout=10)
    real = store.mark_delivery

    monkeypatch.setattr(store, "mark_delivery", disk_full)
    ledger.sent("a@example.com", "250 OK")
    with pytest.raises(sqlite3.OperationalError):  # waits for a transaction after the `sent`'s: it failed too
        ledger.outcome("b@example.com", "pending", "421 try later")
    assert ledger.unwritten_error() is not None
    monkeypatch.setattr(store, "mark_delivery", real)
    ledger.close()
    assert ledger.closed.wait(10)
    assert ledger.unwritten_error() is None
    statuses = {row["email"]: row["status"] for row in db["deliveries"].rows}
    assert statuses == {"a@example.com": "sent", "b@example.com": "pending"}


def test_a_ledger_that_cannot_write_the_last_sent_rows_says_so(tmp_path, monkeypatch):
    from digest.send.ledger import Ledger

    path = tmp_path / "digest.db"
    db = pending_deliveries(path, ["a@example.com"])
    ledger = Ledger(str(path), "w")
    assert ledger.sending("a@example.com", "<a@x>").result(timeout=10)

    monkeypatch.setattr(store, "mark_delivery", disk_full)
    ledger.sent("a@example.com", "250 OK")
    ledger.close()
    assert ledger.closed.wait(10)
    assert "disk is full" in str(ledger.unwritten_error())
    assert db["deliveries"].get(("w", "a@example.com"))["status"] == "sending"  # resent, with its Message-ID


def test_a_row_no_longer_pending_is_never_marked_sending(tmp_path):
    db = pending_deliveries(tmp_path / "digest.db", ["a@example.com"])
    now = datetime.now(UTC)
    assert store.mark_sending(db, "w", "a@example.com", "<a@x>", now)
    store.mark_delivery(db, "w", "a@example.com", "sent", "250 OK", now)
    assert not store.mark_sending(db, "w", "a@example.com", "<a@x>", now)
    assert db["deliveries"].get(("w", "a@example.com"))["status"] == "sent"


def test_a_database_error_in_a_worker_stops_the_run_with_one_line(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(3))

    def io_error(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "mark_sending", io_error)
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1
    assert err == (
        f"error: the disk of {tmp_path} refused a write to the database digest.db (disk I/O error): nothing was "
        f"delivered, 2026-W14 is a draft again; check that disk (is it full?) and send again\n"
    )
    assert server.messages == [] and not ledger(tmp_path)


# --- the ledger's writer and rows settled during the send (an unsubscribe that digest serve answered) -------


def test_an_unsubscribe_during_a_retry_pause_is_honoured(tmp_path, server, monkeypatch):
    """The relay refuses two connections; during the pause after the first, the reader unsubscribes. The second
    failure's `pending` must not overwrite the `skipped` row, or the third attempt would mail them."""
    from digest.send import smtp

    config = load_config(make_project(tmp_path, server.port, subscribers(1), smtp={"connections": 1}))
    opens = []
    real_open = smtp.Connection.open

    def refused_twice(connection):
        opens.append(1)
        if len(opens) <= 2:
            raise ConnectionRefusedError(111, "Connection refused")
        real_open(connection)

    monkeypatch.setattr(smtp.Connection, "open", refused_twice)

    def unsubscribe_during_the_pause(seconds):
        if len(opens) == 1:
            store.suppress(
                store.open_db(tmp_path / "digest.db"), "reader00000@example.com", "unsubscribed", datetime.now(UTC)
            )

    backend = smtp.SmtpBackend(config, sleep=unsubscribe_during_the_pause)
    report = sending.send_issue(config, store.open_db(tmp_path / "digest.db"), WEEK, backend=backend)
    assert server.messages == [] and report.sent == 0
    assert ledger(tmp_path)["reader00000@example.com"]["status"] == "skipped"


def test_a_timeout_on_a_row_settled_meanwhile_costs_the_next_recipient_nothing(tmp_path):
    """reader00001 unsubscribes while reader00000 is mailed, and its RCPT then times out: the dead connection
    is closed there, so reader00002 goes out on the first attempt of a new one (max_attempts: 1)."""
    import asyncio

    from helpers.smtp import _Handler

    slow = "reader00001@example.com"

    class SlowRcpt(_Handler):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address == slow:
                await asyncio.sleep(1.0)  # past smtp.timeout: the client gives up on this reply
            return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    server = SmtpServer()
    server.controller.handler = SlowRcpt(server)
    server.start()
    try:
        settings = {"connections": 1, "timeout": 0.3, "max_attempts": 1}
        config = load_config(make_project(tmp_path, server.port, subscribers(4), smtp=settings))

        def on_result(key, status):
            if key == "reader00000@example.com":
                store.suppress(store.open_db(tmp_path / "digest.db"), slow, "unsubscribed", datetime.now(UTC))

        backend = SmtpBackend(config, on_result=on_result)
        report = sending.send_issue(config, store.open_db(tmp_path / "digest.db"), WEEK, backend=backend)
    finally:
        server.stop()
    statuses = {key: row["status"] for key, row in ledger(tmp_path).items()}
    assert statuses == {
        "reader00000@example.com": "sent",
        slow: "skipped",
        "reader00002@example.com": "sent",
        "reader00003@example.com": "sent",
    }
    assert report.sent == 3 and report.complete
    assert slow not in [received.rcpt for received in server.messages]


@pytest.mark.parametrize("failure", ["unopenable", "bug"])
def test_a_ledger_that_cannot_start_stops_the_run_in_one_line_before_any_connection(
    tmp_path, server, monkeypatch, failure
):
    import threading

    config = load_config(make_project(tmp_path, server.port, subscribers(3)))
    real = store.open_db

    def open_db(path):
        if threading.current_thread().name == "smtp-ledger":
            raise (
                sqlite3.OperationalError("unable to open database file")
                if failure == "unopenable"
                else ValueError("a bug")
            )
        return real(path)

    monkeypatch.setattr(store, "open_db", open_db)
    with pytest.raises(DigestError) as raised:
        sending.send_issue(config, real(tmp_path / "digest.db"), WEEK)
    assert str(raised.value).startswith("database: ")
    assert "unable to open" in str(raised.value) or "a bug" in str(raised.value)
    assert server.messages == [] and not server.rcpt_attempts


def test_a_writer_that_stops_fails_every_write_asked_of_it_then_and_after(tmp_path, monkeypatch):
    """A bug in the writer's loop: no worker waits for ever on a `sending`, and a `sent` refused is reported."""
    from digest.send.ledger import Ledger

    path = tmp_path / "digest.db"
    pending_deliveries(path, ["a@example.com", "b@example.com"])
    ledger = Ledger(str(path), "w")

    def broken(*args, **kwargs):
        raise RecursionError("a bug in the writer")

    monkeypatch.setattr(ledger, "_commit", broken)
    with pytest.raises(RecursionError):
        ledger.sending("a@example.com", "<a@x>").result(timeout=10)
    assert ledger.closed.wait(10)
    with pytest.raises(RecursionError):
        ledger.sending("b@example.com", "<b@x>").result(timeout=10)
    ledger.sent("a@example.com", "250 OK")
    assert isinstance(ledger.unwritten_error(), RecursionError)


# --- a full disk ---------------------------------------------------------------------------------------------


def fill_up(db: sqlite_utils.Database) -> None:
    """The disk of the database full, for real as SQLite sees it: no page more, in the file or in temp tables."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    db.execute("PRAGMA temp.max_page_count = 1")


def test_a_full_disk_before_the_first_message_is_one_line_naming_the_disk(tmp_path, server):
    config = load_config(make_project(tmp_path, server.port, subscribers(3)))
    db = store.open_db(tmp_path / "digest.db")
    fill_up(db)
    with pytest.raises(DigestError) as raised:
        sending.send_issue(config, db, WEEK)
    message = str(raised.value)
    assert "no space left" in message and str(tmp_path) in message, message
    assert "\n" not in message and "temp.incoming" not in message
    assert server.messages == [] and not server.rcpt_attempts
    assert issue_row(tmp_path) is None or issue_row(tmp_path)["status"] == "draft"
    assert not list((tmp_path / "drafts").glob("*.receipt.json"))


def test_a_full_disk_at_the_first_ledger_write_leaves_a_draft_and_says_so(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(3))
    monkeypatch.setattr(store, "mark_sending", disk_full)
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and err.count("\n") == 1
    assert "no space left" in err and str(tmp_path) in err and "is a draft again" in err, err
    assert server.messages == [] and not ledger(tmp_path)
    assert issue_row(tmp_path)["status"] == "draft"
    assert not list((tmp_path / "drafts").glob("*.receipt.json"))


def test_a_disk_without_room_for_the_ledger_is_refused_before_any_write(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(3))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and err.count("\n") == 1
    assert "no space left on the disk of" in err and str(tmp_path) in err and "still a draft" in err, err
    assert server.messages == [] and not ledger(tmp_path) and issue_row(tmp_path) is None
    assert not list((tmp_path / "drafts").glob("*.receipt.json"))


def test_a_resumed_send_on_a_full_disk_is_refused_with_the_issues_real_state(tmp_path, server, run_cli, monkeypatch):
    """Room is checked before a resume too, and the refusal says what the ledger says: never `draft` of an issue
    that is being sent."""
    make_project(tmp_path, server.port, subscribers(3))
    server.behaviour.defer_rcpt["reader00002@example.com"] = 99  # left pending: the issue stays `sending`
    run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert issue_row(tmp_path)["status"] == "sending" and len(server.messages) == 2
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and err.count("\n") == 1
    assert f"2 delivered, {WEEK} is still being sent; free space on {tmp_path} and run again to resume" in err, err
    assert "draft" not in err and "nothing was sent" not in err
    assert len(server.messages) == 2 and issue_row(tmp_path)["status"] == "sending"


def test_a_disk_filled_during_a_send_names_the_messages_that_go_again(tmp_path, server, run_cli, monkeypatch):
    """Another process fills the disk mid-send: the workers stop at the ledger's first failed write, so at most
    the messages in flight (one per connection) were accepted and not recorded; the error counts them, and a
    resume sends those, and only those, again."""
    make_project(tmp_path, server.port, subscribers(30), smtp={"connections": 4})
    real, calls = store.mark_delivery, []

    def fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) > 6:
            disk_full()
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "mark_delivery", fills_up)
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and err.count("\n") == 1, err
    rows = ledger(tmp_path).values()
    in_flight = sum(row["status"] == "sending" for row in rows)
    recorded = sum(row["status"] == "sent" for row in rows)
    assert 1 <= in_flight <= 4 and recorded <= 6  # a transaction may hold several rows
    assert len(server.messages) == recorded + in_flight
    verb = "was" if in_flight == 1 else "were"
    assert "no space left" in err, err
    assert f"{in_flight} {verb} in flight when the disk filled: a resume sends them again" in err, err
    monkeypatch.setattr(store, "mark_delivery", real)
    code, _out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0, err
    assert len(server.messages) == 30 + in_flight
    assert len({message.rcpt for message in server.messages}) == 30
