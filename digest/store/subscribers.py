"""Subscriber rows: the addresses never to be mailed again (unsubscribed, bounced, complained) and the lists
recorded from subscribers.csv or an import, in which a suppression always wins over the list."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import sqlite_utils

from digest.settings.subscribers import SUPPRESSED, Subscriber, address_key
from digest.store.db import iso, transaction

SUPPRESSED_SQL = "('" + "', '".join(SUPPRESSED) + "')"  # for SQL: the statuses that are never mailed
# For SQL: a subscriber (`known`) active by their own confirmation on the web, which no list's status undoes.
WEB_CONFIRMED_SQL = "(known.status = 'active' AND known.source = 'form' AND known.consent_at IS NOT NULL)"


def suppressions(db: sqlite_utils.Database) -> dict[str, str]:
    """address_key of an address → why it is never mailed (unsubscribed, bounced or complained)."""
    return dict(db.execute(f"SELECT email_key, status FROM subscribers WHERE status IN {SUPPRESSED_SQL}").fetchall())


def kept_over_lists(db: sqlite_utils.Database) -> dict[str, str]:
    """address_key → the status the database keeps whatever a list (subscribers.csv, an import) says: the
    suppressions, and `active` for who confirmed on the web (see `record_subscribers`)."""
    where = f"status IN {SUPPRESSED_SQL} OR {WEB_CONFIRMED_SQL}"
    return dict(db.execute(f"SELECT email_key, status FROM subscribers AS known WHERE {where}").fetchall())


def suppress(
    db: sqlite_utils.Database,
    email: str,
    reason: str,
    now: datetime,
    *,
    detail: str | None = None,
    issue_id: str | None = None,
) -> bool:
    """Never mail this address again; the first record (and its reason) wins. Returns whether it is new.

    The address's rows still pending in a send under way are skipped in the same transaction: an unsubscribe
    that arrives during a send is honoured for the rest of it (a worker mails only a row it turns from pending
    to sending)."""
    now_text = iso(now)
    key = address_key(email)
    with transaction(db):
        changed = db.execute(
            "INSERT INTO subscribers (email_key, email, status, source, joined_at, updated_at, status_detail, "
            "issue_id) VALUES (?, ?, ?, 'suppression', ?, ?, ?, ?) ON CONFLICT (email_key) DO UPDATE SET "
            "status = excluded.status, updated_at = excluded.updated_at, status_detail = excluded.status_detail, "
            f"issue_id = excluded.issue_id WHERE status NOT IN {SUPPRESSED_SQL}",
            [key, email, reason, now_text, now_text, detail, issue_id],
        ).rowcount
        if changed:
            db.execute(
                "UPDATE deliveries SET status = 'skipped', last_reply = ?, updated_at = ? "
                "WHERE email = ? AND status = 'pending' "
                "AND issue_id IN (SELECT id FROM issues WHERE status = 'sending')",
                [f"{reason} during the send", now_text, key],
            )
    return changed == 1


@dataclass
class SubscriberChanges:
    """What recording a list of subscribers did."""

    added: int = 0
    updated: int = 0  # status or name changed
    unchanged: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # status the database keeps over the file's → count
    unlisted: int = 0  # active subscribers of the source who are no longer in the list (see `whole`)


def subscriber_rows(db: sqlite_utils.Database) -> Iterator[tuple[str, str, str, str, str]]:
    """Every subscriber as (address_key, email, name, status, source), read as it is used."""
    yield from db.execute("SELECT email_key, email, name, status, source FROM subscribers")


def record_subscribers(
    db: sqlite_utils.Database, subscribers: Iterable[Subscriber], source: str, now: datetime, *, whole: bool = False
) -> SubscriberChanges:
    """Add or update subscribers from a list (subscribers.csv at each send, `digest subscribers import`).

    The database's unsubscribe, bounce or complaint always wins over the list. A list's active status turns a
    pending subscriber active (the list is the operator's word for their consent); its unsubscribed, bounced
    or complained status is taken, except over someone active by their own confirmation on the web (source
    `form`, with a consent_at): a list has no date per row, so its word cannot be newer than that act, and a
    stale row would undo it at every send (such a subscriber is counted in `kept` as active; to stop mailing
    them, `digest unsubscribe`, which always wins, as their own one-click does). Its pending status never
    demotes anyone. Only what changes is written.
    `whole`: the list is all there is of `source` (subscribers.csv): an active subscriber of that source who is
    no longer in it becomes pending, not mailed, and free to come back through the list or the signup form.
    The list goes through a temporary table and is compared there: no copy of the database's subscribers is
    made in memory (a send of 100,000 would hold two)."""
    now_text = iso(now)
    changes = SubscriberChanges()
    with transaction(db):
        db.execute(
            "CREATE TEMP TABLE incoming (email_key TEXT PRIMARY KEY, email TEXT, name TEXT, status TEXT, "
            "joined_at TEXT, consent_at TEXT)"
        )
        try:
            db.conn.executemany(
                "INSERT OR REPLACE INTO incoming VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (
                        address_key(subscriber.email),
                        subscriber.email,
                        subscriber.name,
                        subscriber.status,
                        iso(subscriber.joined_at) if subscriber.joined_at else None,
                        iso(subscriber.consent_at) if subscriber.consent_at else None,
                    )
                    for subscriber in subscribers
                ),
            )
            total = db.execute("SELECT count(*) FROM incoming").fetchone()[0]
            changes.kept = dict(
                db.execute(
                    "SELECT known.status, count(*) FROM incoming JOIN subscribers AS known USING (email_key) "
                    f"WHERE (known.status IN {SUPPRESSED_SQL} AND incoming.status != known.status) "
                    f"OR ({WEB_CONFIRMED_SQL} AND incoming.status IN {SUPPRESSED_SQL}) GROUP BY known.status"
                ).fetchall()
            )
            changes.updated = db.execute(
                "UPDATE subscribers SET name = CASE WHEN incoming.name != '' THEN incoming.name ELSE subscribers.name "
                "END, status = new.status, updated_at = ?, status_detail = ?, consent_at = CASE WHEN new.status = "
                "'active' THEN coalesce(subscribers.consent_at, incoming.consent_at) ELSE subscribers.consent_at END "
                "FROM incoming JOIN (SELECT incoming.email_key, CASE WHEN known.status IN "
                f"{SUPPRESSED_SQL} OR incoming.status = 'pending' OR {WEB_CONFIRMED_SQL} THEN known.status "
                "ELSE incoming.status END AS status "
                "FROM incoming JOIN subscribers AS known USING (email_key)) AS new USING (email_key) "
                "WHERE subscribers.email_key = incoming.email_key AND (new.status != subscribers.status "
                "OR (incoming.name != '' AND incoming.name != subscribers.name))",
                [now_text, f"from {source}"],
            ).rowcount
            changes.added = db.execute(
                "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, consent_at, updated_at) "
                "SELECT email_key, email, name, status, ?, coalesce(joined_at, ?), CASE WHEN status = 'active' "
                "THEN coalesce(consent_at, joined_at) END, ? FROM incoming WHERE email_key NOT IN "
                "(SELECT email_key FROM subscribers)",
                [source, now_text, now_text],
            ).rowcount
            if whole:
                changes.unlisted = db.execute(
                    "UPDATE subscribers SET status = 'pending', updated_at = ?, status_detail = ? WHERE source = ? "
                    "AND status = 'active' AND email_key NOT IN (SELECT email_key FROM incoming)",
                    [now_text, f"no longer in the {source} list", source],
                ).rowcount
        finally:
            db.execute("DROP TABLE IF EXISTS temp.incoming")  # a full disk may have stopped its creation
    changes.unchanged = total - changes.added - changes.updated
    return changes


def subscriber_list(db: sqlite_utils.Database, status: str | None = None) -> Iterator[dict]:
    """The subscribers (of one status), oldest first, as rows: read as they are written out."""
    where, args = ("WHERE status = ?", [status]) if status else ("", [])
    cursor = db.execute(
        "SELECT email, name, status, source, joined_at, consent_at, updated_at, status_detail FROM subscribers "
        f"{where} ORDER BY joined_at, email_key",
        args,
    )
    names = [column[0] for column in cursor.description]
    for values in cursor:
        yield dict(zip(names, values, strict=True))
