"""Issues and what went into them: the posts builds offered, the deliveries of a send (the ledger that keeps an
address from being mailed twice) and the remote id of an email a service such as Buttondown holds."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlite_utils

from digest.store.db import iso, transaction
from digest.store.subscribers import SUPPRESSED_SQL, suppress


def get_issue(db: sqlite_utils.Database, issue_id: str) -> dict | None:
    rows = list(db.query("SELECT * FROM issues WHERE id = ?", [issue_id]))
    return rows[0] if rows else None


def list_ids(db: sqlite_utils.Database) -> list[str]:
    """The list-ids issues were sent under, newest first."""
    sql = "SELECT list_id FROM issues WHERE list_id IS NOT NULL GROUP BY list_id ORDER BY max(created_at) DESC"
    return [row[0] for row in db.execute(sql).fetchall()]


def issue_row(db: sqlite_utils.Database, issue_id: str) -> dict:
    """An issue that must exist by now (its send has begun)."""
    row = get_issue(db, issue_id)
    if row is None:
        raise LookupError(f"{issue_id}: not in the database")
    return row


def ensure_issue(db: sqlite_utils.Database, issue_id: str, subject: str, now: datetime) -> dict:
    db.execute(
        "INSERT OR IGNORE INTO issues (id, subject, status, created_at) VALUES (?, ?, 'draft', ?)",
        [issue_id, subject, iso(now)],
    )
    return issue_row(db, issue_id)


def last_sent_issue(db: sqlite_utils.Database, before: str | None = None) -> dict | None:
    """The latest issue sent or being sent (by week id: a Buttondown draft stays `sending`), optionally only
    those before a given week."""
    sql = "SELECT * FROM issues WHERE status IN ('sending', 'sent')"
    params: list[str] = []
    if before:
        sql += " AND id < ?"
        params.append(before)
    rows = list(db.query(sql + " ORDER BY id DESC LIMIT 1", params))
    return rows[0] if rows else None


def offered_post_ids(db: sqlite_utils.Database, issue_id: str) -> set[str]:
    """Posts already put in this issue's draft (kept or deleted by the editor since)."""
    return {row[0] for row in db.execute("SELECT post_id FROM issue_posts WHERE issue_id = ?", [issue_id])}


def offered_items_per_feed(db: sqlite_utils.Database, issue_id: str) -> dict[str, int]:
    """How many posts of each feed this issue's builds put among the email's items (not held back)."""
    return dict(
        db.execute(
            "SELECT coalesce(issue_posts.feed_url, posts.feed_url) AS feed, count(*) FROM issue_posts "
            "JOIN posts ON posts.id = post_id WHERE issue_id = ? AND placement = 'item' GROUP BY feed",
            [issue_id],
        ).fetchall()
    )


def add_offered(
    db: sqlite_utils.Database, issue_id: str, offers: Iterable[tuple[str, str, str]], now: datetime, seen_seq: int
) -> None:
    """Record the posts a build put in the draft, each with where it went (item, more or stale) and the feed
    it went under, and how far the build saw: posts stored after it are offered to the next issue."""
    with transaction(db):
        db.conn.executemany(
            "INSERT OR IGNORE INTO issue_posts (issue_id, post_id, added_at, placement, feed_url) "
            "VALUES (?, ?, ?, ?, ?)",
            [(issue_id, post_id, iso(now), placement, feed) for post_id, placement, feed in offers],
        )
        db.execute("UPDATE issues SET built_at = ?, built_seq = ? WHERE id = ?", [iso(now), seen_seq, issue_id])


# --- sending ---------------------------------------------------------------------
#
# An issue goes draft → sending → sent. A delivery row (SMTP; one per issue and subscriber, keyed by the
# address_key of the address) goes pending → sending (committed before the message is handed over) → sent, failed
# (a 5xx: never retried), back to pending (a 4xx or a dropped connection: retried), or skipped (the
# address left the list before it was mailed). Rows left `sending` by a killed run are the only ones
# that may have been delivered without being recorded.


def start_deliveries(db: sqlite_utils.Database, issue_id: str, backend: str, keys: Iterable[str], now: datetime) -> int:
    """Mark the issue `sending` through `backend` and give each recipient a pending row, in one transaction.

    Rows an interrupted run left `sending` go back to pending (they are sent again: the possible
    duplicates); pending rows of addresses no longer to be mailed are skipped, and skipped rows of
    addresses to be mailed again (back in subscribers.csv) are pending again. `keys` is read once, as it
    comes (a generator: no list of every subscriber is made). Returns how many rows were left `sending`.
    """
    now_text = iso(now)
    with transaction(db):
        db.execute(
            "UPDATE issues SET status = 'sending', backend = ? WHERE id = ? AND status = 'draft'", [backend, issue_id]
        )
        in_flight = db.execute(
            "UPDATE deliveries SET status = 'pending', updated_at = ?, "
            "last_reply = 'the previous run stopped while sending this one' WHERE issue_id = ? AND status = 'sending'",
            [now_text, issue_id],
        ).rowcount
        # Every pending row is skipped, then every recipient's row is pending (again): what stays skipped
        # with this run's time is no longer to be mailed.
        db.execute(
            "UPDATE deliveries SET status = 'skipped', updated_at = ? WHERE issue_id = ? AND status = 'pending'",
            [now_text, issue_id],
        )
        db.conn.executemany(
            "INSERT INTO deliveries (issue_id, email, status, attempts, updated_at) VALUES (?, ?, 'pending', 0, ?) "
            "ON CONFLICT (issue_id, email) DO UPDATE SET status = 'pending', updated_at = excluded.updated_at "
            "WHERE status = 'skipped'",
            ((issue_id, key, now_text) for key in keys),
        )
        db.execute(  # unsubscribed since the plan was made (by `digest serve`, say)
            "UPDATE deliveries SET status = 'skipped', updated_at = ? WHERE issue_id = ? AND status = 'pending' "
            f"AND email IN (SELECT email_key FROM subscribers WHERE status IN {SUPPRESSED_SQL})",
            [now_text, issue_id],
        )
        db.execute(
            "UPDATE deliveries SET last_reply = 'no longer to be mailed' "
            "WHERE issue_id = ? AND status = 'skipped' AND updated_at = ?",
            [issue_id, now_text],
        )
    return in_flight


def delivery_keys(db: sqlite_utils.Database, issue_id: str, *statuses: str) -> set[str]:
    marks = ",".join("?" * len(statuses))
    return {
        row[0]
        for row in db.execute(
            f"SELECT email FROM deliveries WHERE issue_id = ? AND status IN ({marks})", [issue_id, *statuses]
        )
    }


def delivery_counts(db: sqlite_utils.Database, issue_id: str) -> dict[str, int]:
    return dict(
        db.execute("SELECT status, count(*) FROM deliveries WHERE issue_id = ? GROUP BY status", [issue_id]).fetchall()
    )


def mark_sending(db: sqlite_utils.Database, issue_id: str, key: str, message_id: str, now: datetime) -> bool:
    """Mark a pending row `sending`; False when the row is not pending (sent, failed or skipped meanwhile):
    then it must not be sent."""
    cursor = db.execute(
        "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, message_id = ?, updated_at = ? "
        "WHERE issue_id = ? AND email = ? AND status = 'pending'",
        [message_id, iso(now), issue_id, key],
    )
    return cursor.rowcount == 1


def mark_delivery(
    db: sqlite_utils.Database, issue_id: str, key: str, status: str, reply: str, now: datetime, *, bounced: bool = False
) -> None:
    """Record the outcome of one attempt (sent, failed or pending); a bounce also suppresses the address.

    Only over a row still open (pending or sending): one settled meanwhile, skipped by an unsubscribe that
    `digest serve` answered during the send, stays as it is."""
    now_text = iso(now)
    update = (
        "UPDATE deliveries SET status = ?, last_reply = ?, updated_at = ?, "
        "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END "
        "WHERE issue_id = ? AND email = ? AND status IN ('pending', 'sending')",
        [status, reply, now_text, status, now_text, issue_id, key],
    )
    if not bounced:
        db.execute(*update)
        return
    with transaction(db):
        if db.execute(*update).rowcount:
            suppress(db, key, "bounced", now, detail=reply, issue_id=issue_id)


def finish_deliveries(db: sqlite_utils.Database, issue_id: str, now: datetime) -> bool:
    """The issue becomes `sent` once no row is pending or sending; returns whether it is."""
    with transaction(db):
        open_rows = next(
            db.execute(
                "SELECT count(*) FROM deliveries WHERE issue_id = ? AND status IN ('pending', 'sending')", [issue_id]
            )
        )[0]
        if open_rows:
            return False
        db.execute(
            "UPDATE issues SET status = 'sent', sent_at = ? WHERE id = ? AND status != 'sent'", [iso(now), issue_id]
        )
    return True


def offered_posts(db: sqlite_utils.Database, issue_id: str) -> list[dict]:
    """The posts builds put in this issue's draft: id, canonical_url, url_key, title."""
    return list(
        db.query(
            "SELECT posts.id, canonical_url, url_key, title FROM issue_posts JOIN posts "
            "ON posts.id = post_id WHERE issue_id = ?",
            [issue_id],
        )
    )


def begin_send(
    db: sqlite_utils.Database, issue_id: str, draft_text: str, in_email: Iterable[str], list_id: str
) -> None:
    """Keep the draft a send begins with (a resumed send mails the same email) and the list-id its unsubscribe
    tokens are signed for, and mark which offered posts that email holds: only those are never offered again.
    A resumed send keeps what its first run kept."""
    with transaction(db):
        status, kept = db.execute("SELECT status, sent_draft FROM issues WHERE id = ?", [issue_id]).fetchone()
        if status != "draft" and kept is not None:
            return
        db.execute("UPDATE issues SET sent_draft = ?, list_id = ? WHERE id = ?", [draft_text, list_id, issue_id])
        db.execute("UPDATE issue_posts SET in_email = 0 WHERE issue_id = ?", [issue_id])
        db.conn.executemany(
            "UPDATE issue_posts SET in_email = 1 WHERE issue_id = ? AND post_id = ?",
            [(issue_id, post_id) for post_id in in_email],
        )


def return_to_draft_if_undelivered(db: sqlite_utils.Database, issue_id: str) -> bool:
    """After a send that delivered nothing (no row sent, none possibly in flight), the issue is a plain draft
    again and its ledger rows go: nothing was promised to anyone, and the editor may still change it.
    Returns whether it did."""
    with transaction(db):
        delivered = db.execute(
            "SELECT count(*) FROM deliveries WHERE issue_id = ? AND status IN ('sent', 'sending')", [issue_id]
        ).fetchone()[0]
        if delivered:
            return False
        db.execute("DELETE FROM deliveries WHERE issue_id = ?", [issue_id])
        db.execute(
            "UPDATE issues SET status = 'draft', backend = NULL, sent_draft = NULL WHERE id = ? "
            "AND status = 'sending' AND remote_id IS NULL",
            [issue_id],
        )
        db.execute("UPDATE issue_posts SET in_email = 0 WHERE issue_id = ?", [issue_id])
    return True


def begin_remote(db: sqlite_utils.Database, issue_id: str, backend: str, candidate_key: str) -> str:
    """Before the first request: the issue becomes `sending` with this backend, and gets its idempotency key.

    Returns the stored key (the candidate, unless an earlier run stored one). Committed before any request,
    so that a request whose answer is lost leaves the issue frozen: `build` leaves it alone, its posts are
    not offered again, another backend is refused, and a re-run repeats the request with the same key.
    """
    db.execute(
        "UPDATE issues SET idempotency_key = coalesce(idempotency_key, ?), backend = ?, "
        "status = CASE WHEN status = 'draft' THEN 'sending' ELSE status END WHERE id = ?",
        [candidate_key, backend, issue_id],
    )
    return issue_row(db, issue_id)["idempotency_key"]


def forget_remote(db: sqlite_utils.Database, issue_id: str) -> None:
    """The backend refused the request, so nothing was created: back to a plain draft, without a key."""
    with transaction(db):
        forgotten = db.execute(
            "UPDATE issues SET idempotency_key = NULL, backend = NULL, status = 'draft', "
            "sent_draft = NULL WHERE id = ? AND remote_id IS NULL AND status = 'sending'",
            [issue_id],
        ).rowcount
        if forgotten:
            db.execute("UPDATE issue_posts SET in_email = 0 WHERE issue_id = ?", [issue_id])


def record_remote(
    db: sqlite_utils.Database, issue_id: str, backend: str, remote_id: str, *, sent: bool, now: datetime
) -> None:
    """The backend's id of the email; `sent` when it was handed over for sending (not just drafted)."""
    db.execute(
        "UPDATE issues SET backend = ?, remote_id = ?, status = CASE WHEN ? THEN 'sent' ELSE status END, "
        "sent_at = CASE WHEN ? THEN ? ELSE sent_at END WHERE id = ?",
        [backend, remote_id, sent, sent, iso(now), issue_id],
    )
