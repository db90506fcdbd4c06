"""The one SQLite file: schema, upserts, feed state, issues and what went into them.

Times are stored as ISO 8601 strings in UTC (`2026-04-01T10:00:00+00:00`), so
that comparing strings compares instants.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Collection, Iterable, Iterator

import sqlite_utils

from .models import Post


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def open_db(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database in WAL mode with the current schema."""
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    db = sqlite_utils.Database(connection)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    _create_schema(db)
    return db


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE) so that concurrent writers queue."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create_schema(db: sqlite_utils.Database) -> None:
    db["feeds"].create(
        {"url": str, "name": str, "section": str, "title": str, "etag": str, "last_modified": str,
         "last_status": int, "last_error": str, "last_warning": str, "last_fetched_at": str, "last_ok_at": str,
         "consecutive_failures": int, "redirect_url": str},
        pk="url", not_null={"url"}, defaults={"consecutive_failures": 0}, if_not_exists=True,
    )
    db["posts"].create(
        {"id": str, "canonical_url": str, "feed_url": str, "title": str, "author": str, "summary": str,
         "content_html": str, "published_at": str, "dated_by_feed": int, "first_seen_at": str},
        pk="id", not_null={"id", "feed_url", "title", "published_at", "first_seen_at"}, if_not_exists=True,
    )
    db["posts"].create_index(["canonical_url"], unique=True, if_not_exists=True)
    db["posts"].create_index(["published_at"], if_not_exists=True)
    db["issues"].create(
        {"id": str, "subject": str, "status": str, "backend": str, "remote_id": str,
         "idempotency_key": str, "created_at": str, "sent_at": str},
        pk="id", not_null={"id", "status", "created_at"}, defaults={"status": "draft"}, if_not_exists=True,
    )
    db["issue_posts"].create(
        {"issue_id": str, "post_id": str, "added_at": str},
        pk=("issue_id", "post_id"), foreign_keys=[("issue_id", "issues", "id"), ("post_id", "posts", "id")],
        if_not_exists=True,
    )
    db["issue_posts"].create_index(["post_id"], if_not_exists=True)
    db["deliveries"].create(
        {"issue_id": str, "email": str, "status": str, "attempts": int, "last_reply": str,
         "message_id": str, "updated_at": str, "sent_at": str},
        pk=("issue_id", "email"), not_null={"issue_id", "email", "status"},
        defaults={"status": "pending", "attempts": 0}, foreign_keys=[("issue_id", "issues", "id")],
        if_not_exists=True,
    )
    db["suppressions"].create(  # addresses never mailed again: unsubscribed, or bounced (5xx to RCPT)
        {"email": str, "reason": str, "detail": str, "issue_id": str, "created_at": str},
        pk="email", not_null={"email", "reason", "created_at"}, if_not_exists=True,
    )


# --- feeds ----------------------------------------------------------------------


@dataclass
class FetchOutcome:
    """What one fetch of a feed did, as the store records it."""

    status: int | None  # HTTP status, None when no answer came
    error: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None
    title: str | None = None
    not_modified: bool = False
    warning: str | None = None


def feed_states(db: sqlite_utils.Database) -> dict[str, dict]:
    return {row["url"]: row for row in db["feeds"].rows}


def record_fetch(db: sqlite_utils.Database, *, url: str, name: str, section: str, outcome: FetchOutcome,
                 posts: Iterable[Post], now: datetime, configured: Collection[str] = ()) -> int:
    """Store one feed's fetch and its posts in a single transaction; returns how many posts are new.

    A post is new when neither its id nor its canonical URL is known: the same
    article from two feeds is one post. Known posts that no sent issue holds get
    their title and summary refreshed; their dates are never rewritten. A known
    post whose feed is no longer among the `configured` feed URLs (the feed moved,
    or the aggregator that brought it first was removed) now belongs to this feed.
    """
    now_text = iso(now)
    posts = list(posts)
    with transaction(db):
        previous = next(db.query("SELECT consecutive_failures FROM feeds WHERE url = ?", [url]), None)
        failures = 0 if outcome.error is None else (previous["consecutive_failures"] if previous else 0) + 1
        row = {
            "url": url, "name": name, "section": section, "last_status": outcome.status,
            "last_error": outcome.error, "last_fetched_at": now_text, "consecutive_failures": failures,
        }
        if not outcome.not_modified:
            row["last_warning"] = None if outcome.error else outcome.warning
        if outcome.error is None:
            row["last_ok_at"] = now_text
            if not outcome.not_modified:
                row["etag"], row["last_modified"] = outcome.etag, outcome.last_modified
            if outcome.title:
                row["title"] = outcome.title
        if outcome.permanent_url and outcome.error is None and outcome.status in (200, 304):
            row["redirect_url"] = outcome.permanent_url  # only a target that answered: else the feed is lost
        new_count = _insert_posts(db, posts, now_text, configured)
        columns = ", ".join(row)
        updates = ", ".join(f"{column} = excluded.{column}" for column in row if column != "url")
        db.execute(f"INSERT INTO feeds ({columns}) VALUES ({', '.join('?' * len(row))}) "
                   f"ON CONFLICT(url) DO UPDATE SET {updates}", list(row.values()))
        return new_count


def _insert_posts(db: sqlite_utils.Database, posts: list[Post], now_text: str, configured: Collection[str]) -> int:
    if not posts:
        return 0
    known_ids = _existing(db, "id", [p.id for p in posts])
    known_urls = _existing(db, "canonical_url", [p.canonical_url for p in posts if p.canonical_url])
    new_rows, refreshed, adopted = [], [], []
    configured_json = json.dumps(sorted(configured))
    for post in posts:
        if post.id in known_ids:
            refreshed.append((post.title, post.author, post.summary, post.content_html, post.id))
        elif post.canonical_url in known_urls:
            adopted.append((post.feed_url, post.canonical_url, configured_json))
        else:
            new_rows.append({
                "id": post.id, "canonical_url": post.canonical_url, "feed_url": post.feed_url,
                "title": post.title, "author": post.author, "summary": post.summary,
                "content_html": post.content_html,
                "published_at": iso(post.published_at) if post.published_at else now_text,
                "dated_by_feed": int(post.published_at is not None), "first_seen_at": now_text,
            })
            known_ids.add(post.id)
            if post.canonical_url:
                known_urls.add(post.canonical_url)
    if new_rows:
        columns = list(new_rows[0])
        db.conn.executemany(
            f"INSERT OR IGNORE INTO posts ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in new_rows],
        )
    if adopted and configured:
        db.conn.executemany(
            "UPDATE posts SET feed_url = ? WHERE canonical_url = ? "
            "AND feed_url NOT IN (SELECT value FROM json_each(?))", adopted)
    if refreshed:
        db.conn.executemany(
            "UPDATE posts SET title = ?, author = ?, summary = ?, content_html = ? WHERE id = ? AND id NOT IN "
            "(SELECT post_id FROM issue_posts JOIN issues ON issues.id = issue_id WHERE issues.status = 'sent')",
            refreshed,
        )
    return len(new_rows)


def _existing(db: sqlite_utils.Database, column: str, values: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in db.execute(f"SELECT {column} FROM posts WHERE {column} IN ({marks})", chunk))
    return found


def feed_health(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query(
        "SELECT feeds.*, (SELECT count(*) FROM posts WHERE posts.feed_url = feeds.url) AS posts "
        "FROM feeds ORDER BY feeds.name"
    ))


# --- issues ----------------------------------------------------------------------


def get_issue(db: sqlite_utils.Database, issue_id: str) -> dict | None:
    rows = list(db.query("SELECT * FROM issues WHERE id = ?", [issue_id]))
    return rows[0] if rows else None


def ensure_issue(db: sqlite_utils.Database, issue_id: str, subject: str, now: datetime) -> dict:
    db.execute("INSERT OR IGNORE INTO issues (id, subject, status, created_at) VALUES (?, ?, 'draft', ?)",
               [issue_id, subject, iso(now)])
    return get_issue(db, issue_id)


def last_sent_issue(db: sqlite_utils.Database, before: str | None = None) -> dict | None:
    """The latest sent issue (by week id), optionally only those before a given week."""
    sql = "SELECT * FROM issues WHERE status = 'sent'"
    params: list[str] = []
    if before:
        sql += " AND id < ?"
        params.append(before)
    rows = list(db.query(sql + " ORDER BY id DESC LIMIT 1", params))
    return rows[0] if rows else None


def offered_post_ids(db: sqlite_utils.Database, issue_id: str) -> set[str]:
    """Posts already put in this issue's draft (kept or deleted by the editor since)."""
    return {row[0] for row in db.execute("SELECT post_id FROM issue_posts WHERE issue_id = ?", [issue_id])}


def add_offered(db: sqlite_utils.Database, issue_id: str, post_ids: Iterable[str], now: datetime) -> None:
    with transaction(db):
        db.conn.executemany(
            "INSERT OR IGNORE INTO issue_posts (issue_id, post_id, added_at) VALUES (?, ?, ?)",
            [(issue_id, post_id, iso(now)) for post_id in post_ids],
        )


def candidate_posts(db: sqlite_utils.Database, *, since: str, until: str, now: str) -> list[dict]:
    """Posts published in [since, until), not in the future, and in no issue sent or being sent; oldest first.

    An issue being sent (`sending`: partly mailed, or handed to Buttondown) is as good as sent: its posts
    must not come back in a later issue, whether or not that send is ever finished.
    """
    return list(db.query(
        "SELECT * FROM posts WHERE published_at >= ? AND published_at < ? AND published_at <= ? AND posts.id NOT IN "
        "(SELECT post_id FROM issue_posts JOIN issues ON issues.id = issue_id "
        "WHERE issues.status IN ('sending', 'sent')) "
        "ORDER BY published_at, posts.id",
        [since, until, now],
    ))


# --- sending ---------------------------------------------------------------------
#
# An issue goes draft → sending → sent. A delivery row (SMTP; one per issue and subscriber, keyed by the
# casefolded address) goes pending → sending (committed before the message is handed over) → sent, failed
# (a 5xx: never retried), back to pending (a 4xx or a dropped connection: retried), or skipped (the
# address left the list before it was mailed). Rows left `sending` by a killed run are the only ones
# that may have been delivered without being recorded.


def database_path(db: sqlite_utils.Database) -> str:
    """The file behind a connection, so that each sending thread can open its own connection to it."""
    return next(db.execute("PRAGMA database_list"))[2]


def suppressions(db: sqlite_utils.Database) -> dict[str, str]:
    """Casefolded address → why it is never mailed ("unsubscribed" or "bounced")."""
    return dict(db.execute("SELECT email, reason FROM suppressions").fetchall())


def suppress(db: sqlite_utils.Database, email: str, reason: str, now: datetime, *, detail: str | None = None,
             issue_id: str | None = None) -> bool:
    """Never mail this address again; the first record (and its reason) wins. Returns whether it is new."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO suppressions (email, reason, detail, issue_id, created_at) VALUES (?, ?, ?, ?, ?)",
        [email.casefold(), reason, detail, issue_id, iso(now)])
    return cursor.rowcount == 1


def start_deliveries(db: sqlite_utils.Database, issue_id: str, keys: list[str], now: datetime) -> int:
    """Mark the issue `sending` (smtp) and give each recipient a pending row, in one transaction.

    Rows an interrupted run left `sending` go back to pending (they are sent again: the possible
    duplicates); pending rows of addresses no longer to be mailed are skipped, and skipped rows of
    addresses to be mailed again (back in subscribers.csv) are pending again. Returns how many rows
    were left `sending`.
    """
    now_text = iso(now)
    with transaction(db):
        db.execute("UPDATE issues SET status = 'sending', backend = 'smtp' WHERE id = ? AND status = 'draft'",
                   [issue_id])
        db.conn.executemany(
            "INSERT INTO deliveries (issue_id, email, status, attempts, updated_at) VALUES (?, ?, 'pending', 0, ?) "
            "ON CONFLICT (issue_id, email) DO UPDATE SET status = 'pending', updated_at = excluded.updated_at "
            "WHERE status = 'skipped'", [(issue_id, key, now_text) for key in keys])
        in_flight = db.execute(
            "UPDATE deliveries SET status = 'pending', updated_at = ?, "
            "last_reply = 'the previous run stopped while sending this one' WHERE issue_id = ? AND status = 'sending'",
            [now_text, issue_id]).rowcount
        wanted = set(keys)
        gone = [(now_text, issue_id, row[0]) for row in db.execute(
            "SELECT email FROM deliveries WHERE issue_id = ? AND status = 'pending'", [issue_id]) if row[0] not in wanted]
        db.conn.executemany("UPDATE deliveries SET status = 'skipped', last_reply = 'no longer to be mailed', "
                            "updated_at = ? WHERE issue_id = ? AND email = ?", gone)
    return in_flight


def delivery_keys(db: sqlite_utils.Database, issue_id: str, *statuses: str) -> set[str]:
    marks = ",".join("?" * len(statuses))
    return {row[0] for row in db.execute(
        f"SELECT email FROM deliveries WHERE issue_id = ? AND status IN ({marks})", [issue_id, *statuses])}


def delivery_counts(db: sqlite_utils.Database, issue_id: str) -> dict[str, int]:
    return dict(db.execute("SELECT status, count(*) FROM deliveries WHERE issue_id = ? GROUP BY status",
                           [issue_id]).fetchall())


def mark_sending(db: sqlite_utils.Database, issue_id: str, key: str, message_id: str, now: datetime) -> None:
    db.execute("UPDATE deliveries SET status = 'sending', attempts = attempts + 1, message_id = ?, updated_at = ? "
               "WHERE issue_id = ? AND email = ?", [message_id, iso(now), issue_id, key])


def mark_delivery(db: sqlite_utils.Database, issue_id: str, key: str, status: str, reply: str, now: datetime,
                  *, bounced: bool = False) -> None:
    """Record the outcome of one attempt (sent, failed or pending); a bounce also suppresses the address."""
    now_text = iso(now)
    update = ("UPDATE deliveries SET status = ?, last_reply = ?, updated_at = ?, "
              "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE issue_id = ? AND email = ?",
              [status, reply, now_text, status, now_text, issue_id, key])
    if not bounced:
        db.execute(*update)
        return
    with transaction(db):
        db.execute(*update)
        suppress(db, key, "bounced", now, detail=reply, issue_id=issue_id)


def finish_deliveries(db: sqlite_utils.Database, issue_id: str, now: datetime) -> bool:
    """The issue becomes `sent` once no row is pending or sending; returns whether it is."""
    with transaction(db):
        open_rows = next(db.execute("SELECT count(*) FROM deliveries WHERE issue_id = ? AND status IN "
                                    "('pending', 'sending')", [issue_id]))[0]
        if open_rows:
            return False
        db.execute("UPDATE issues SET status = 'sent', sent_at = ? WHERE id = ? AND status != 'sent'",
                   [iso(now), issue_id])
    return True


def begin_remote(db: sqlite_utils.Database, issue_id: str, backend: str, candidate_key: str) -> str:
    """Before the first request: the issue becomes `sending` with this backend, and gets its idempotency key.

    Returns the stored key (the candidate, unless an earlier run stored one). Committed before any request,
    so that a request whose answer is lost leaves the issue frozen: `build` leaves it alone, its posts are
    not offered again, another backend is refused, and a re-run repeats the request with the same key.
    """
    db.execute("UPDATE issues SET idempotency_key = coalesce(idempotency_key, ?), backend = ?, "
               "status = CASE WHEN status = 'draft' THEN 'sending' ELSE status END WHERE id = ?",
               [candidate_key, backend, issue_id])
    return get_issue(db, issue_id)["idempotency_key"]


def forget_remote(db: sqlite_utils.Database, issue_id: str) -> None:
    """The backend refused the request, so nothing was created: back to a plain draft, without a key."""
    db.execute("UPDATE issues SET idempotency_key = NULL, backend = NULL, status = 'draft' "
               "WHERE id = ? AND remote_id IS NULL AND status = 'sending'", [issue_id])


def record_remote(db: sqlite_utils.Database, issue_id: str, backend: str, remote_id: str, *, sent: bool,
                  now: datetime) -> None:
    """The backend's id of the email; `sent` when it was handed over for sending (not just drafted)."""
    db.execute("UPDATE issues SET backend = ?, remote_id = ?, status = CASE WHEN ? THEN 'sent' ELSE status END, "
               "sent_at = CASE WHEN ? THEN ? ELSE sent_at END WHERE id = ?",
               [backend, remote_id, sent, sent, iso(now), issue_id])
