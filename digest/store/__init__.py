"""The one SQLite file: schema, upserts, feed state, issues and what went into them.

Times are stored as ISO 8601 strings in UTC (`2026-04-01T10:00:00+00:00`), so
that comparing strings compares instants.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from digest.models import Post
from digest.settings.subscribers import SUPPRESSED, Subscriber, address_key
from digest.store.migrations import migrate
from digest.urls import prefer


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def open_db(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database in WAL mode, its schema brought up to date (migrations.py).

    A new database is created readable by its owner only (it holds every subscriber's address; SQLite
    gives its -wal and -shm files the same mode). An empty file is refused, not taken for a new database:
    a truncated digest.db has lost the delivery ledger, and starting afresh would mail everyone again.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_size == 0:
            raise sqlite3.DatabaseError(
                f"{path} is empty (0 bytes): restore it from a backup, or delete it to "
                f"start a new database (which knows of no sent issue)"
            ) from None
    else:
        os.close(descriptor)
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    db = sqlite_utils.Database(connection)
    db.execute("PRAGMA journal_mode=WAL")
    for companion in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _keep_private(companion)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db, str(path))
    return db


def _keep_private(path: Path) -> None:
    """A database made by an older digest, or copied in, may be readable by others: make it its owner's alone."""
    try:
        status = path.stat()
        if status.st_uid == os.getuid() and status.st_mode & 0o077:
            path.chmod(status.st_mode & 0o700)
    except FileNotFoundError:
        pass


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE) so that concurrent writers queue. Inside
    another transaction it is part of that one, which commits or rolls back the whole."""
    if db.conn.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:  # also a COMMIT that failed (disk full): never leave it open
            db.execute("ROLLBACK")
        raise


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
    site_url: str | None = None  # the feed's home page, from its channel link
    forget_redirect: bool = False  # the remembered redirect led to an address digest refuses
    broken_body: bool = False  # the error is the body's (no usable feed): its validators are worth keeping


def feed_states(db: sqlite_utils.Database) -> dict[str, dict]:
    return {row["url"]: row for row in db["feeds"].rows}


def record_fetch(
    db: sqlite_utils.Database,
    *,
    url: str,
    name: str,
    section: str,
    outcome: FetchOutcome,
    posts: Iterable[Post],
    now: datetime,
    configured: Collection[str] = (),
) -> int:
    """Store one feed's fetch and its posts in a single transaction; returns how many posts are new.

    Which entries are posts already stored is decided by `_match` (the identity rules of parse.py).
    Known posts that no sent issue holds get their title, summary and link refreshed; their dates
    are never rewritten. A known post whose feed is no longer among the `configured` feed URLs (the
    feed moved, or the aggregator that brought it first was removed) now belongs to this feed.
    """
    now_text = iso(now)
    posts = list(posts)
    configured = configured if isinstance(configured, (set, frozenset)) else set(configured)
    with transaction(db):
        previous = next(db.query("SELECT consecutive_failures FROM feeds WHERE url = ?", [url]), None)
        failures = 0 if outcome.error is None else (previous["consecutive_failures"] if previous else 0) + 1
        row = {
            "url": url,
            "name": name,
            "section": section,
            "last_status": outcome.status,
            "last_error": outcome.error,
            "last_fetched_at": now_text,
            "consecutive_failures": failures,
        }
        if not outcome.not_modified:
            row["last_warning"] = None if outcome.error else outcome.warning
        if not outcome.not_modified and (outcome.error is None or outcome.broken_body):
            row["etag"], row["last_modified"] = outcome.etag, outcome.last_modified
            row["broken_body_error"] = outcome.error if outcome.broken_body else None
        if outcome.error is None:
            row["last_ok_at"] = now_text
            if outcome.title:
                row["title"] = outcome.title
            if outcome.site_url:
                row["site_url"] = outcome.site_url
        if outcome.permanent_url and outcome.error is None and outcome.status in (200, 304):
            row["redirect_url"] = outcome.permanent_url  # only a target that answered: else the feed is lost
        elif outcome.forget_redirect:
            row["redirect_url"] = None
        new_count = _insert_posts(db, url, posts, now_text, configured)
        columns = ", ".join(row)
        updates = ", ".join(f"{column} = excluded.{column}" for column in row if column != "url")
        db.execute(
            f"INSERT INTO feeds ({columns}) VALUES ({', '.join('?' * len(row))}) "
            f"ON CONFLICT(url) DO UPDATE SET {updates}",
            list(row.values()),
        )
        return new_count


_POST_COLUMNS = (
    "id",
    "canonical_url",
    "feed_url",
    "title",
    "author",
    "summary",
    "content_html",
    "guid",
    "url_key",
    "content_key",
    "source",
    "image_url",
    "image_width",
    "image_height",
    "seen_seq",
)
_NOT_SENT = (
    "id NOT IN (SELECT post_id FROM issue_posts JOIN issues ON issues.id = issue_id WHERE issues.status = 'sent')"
)


def _insert_posts(
    db: sqlite_utils.Database, feed_url: str, posts: list[Post], now_text: str, configured: Collection[str]
) -> int:
    if not posts:
        return 0
    matches = _match(db, feed_url, posts, configured)
    new_rows, owned, refreshed, https = [], [], [], []
    seq = db.execute("SELECT coalesce(max(seen_seq), 0) FROM posts").fetchone()[0]
    for index, post in enumerate(posts):
        stored = matches.get(index)
        if stored is None:
            seq += 1
            new_rows.append(
                (
                    *(getattr(post, column) for column in _POST_COLUMNS[:-1]),
                    seq,
                    iso(post.published_at) if post.published_at else now_text,
                    int(post.published_at is not None),
                    now_text,
                )
            )
        elif stored["feed_url"] == feed_url or _unconfigured(stored["feed_url"], configured):
            owned.append((feed_url, post.guid, stored["id"]))
            refreshed.append(
                (
                    post.title,
                    post.author,
                    post.summary,
                    post.content_html,
                    prefer(stored["canonical_url"], post.canonical_url),
                    post.url_key,
                    post.content_key,
                    post.source,
                    stored["id"],
                )
            )
        elif prefer(stored["canonical_url"], post.canonical_url) != stored["canonical_url"]:
            https.append((post.canonical_url, stored["id"]))  # another feed's post: only its https form
    db.conn.executemany(
        f"INSERT INTO posts ({', '.join(_POST_COLUMNS)}, published_at, dated_by_feed, first_seen_at) "
        f"VALUES ({', '.join('?' * (len(_POST_COLUMNS) + 3))})",
        new_rows,
    )
    db.conn.executemany("UPDATE posts SET feed_url = ?, guid = coalesce(?, guid) WHERE id = ?", owned)
    db.conn.executemany(
        # a summary taken from the post's page (the feed gives none) is kept when the feed still gives none
        "UPDATE posts SET title = ?, author = ?, summary = coalesce(nullif(?, ''), CASE WHEN page_tried = 1 THEN "
        "summary END, ''), content_html = ?, canonical_url = ?, url_key = ?, "
        f"content_key = ?, source = ? WHERE id = ? AND {_NOT_SENT}",
        refreshed,
    )
    db.conn.executemany(f"UPDATE posts SET canonical_url = ? WHERE id = ? AND {_NOT_SENT}", https)
    sources = [(row[0], feed_url) for row in new_rows] + [(stored["id"], feed_url) for stored in matches.values()]
    db.conn.executemany("INSERT OR IGNORE INTO post_sources (post_id, feed_url) VALUES (?, ?)", sources)
    return len(new_rows)


def _match(db: sqlite_utils.Database, feed_url: str, posts: list[Post], configured: Collection[str]) -> dict[int, dict]:
    """Which stored post each entry is (by its index in `posts`); entries without one are new posts.

    First the entry's own identity: its id, or its guid within this feed. Then, for entries still
    unmatched, the same article: a stored post with the same link from another feed (an aggregator and
    the blog), or from this feed when it is the same entry under a new guid (same title and text, or a
    post stored without a guid); for a link-less entry, a link-less post of this feed (or of a feed no
    longer configured) with the same title and text. A stored post is matched by one entry at most. So
    two entries of one feed that share a link but not a guid are two posts (a linked post and a sponsor
    post, jobs that all link to the board), while an entry whose guid changed (a generator that makes a
    new one on every fetch) is the post it was. A post stored by release 0.1.0, which dropped fragments,
    is found by the link without its fragment.
    """
    by_id = _stored_by(db, "id", [post.id for post in posts])
    by_guid = _stored_by(
        db, "guid", [post.guid for post in posts if post.guid], where=" AND feed_url = ?", params=[feed_url]
    )
    matches: dict[int, dict] = {}
    claimed: set[str] = set()

    def claim(index: int, candidates: list[dict]) -> None:
        stored = next((row for row in candidates if row["id"] not in claimed), None)
        if stored is not None:
            matches[index] = stored
            claimed.add(stored["id"])

    for index, post in enumerate(posts):
        claim(index, (by_id.get(post.id) or []) + (by_guid.get(post.guid, []) if post.guid else []))
    rest = [(index, post) for index, post in enumerate(posts) if index not in matches]
    if not rest:
        return matches
    by_url = _stored_by(db, "url_key", [post.url_key for _, post in rest if post.url_key])
    by_page = _stored_by(
        db,
        "url_key",
        [post.url_key.split("#")[0] for _, post in rest if post.url_key and "#" in post.url_key],
        where=" AND content_key IS NULL",
    )  # stored by 0.1.0
    by_text = _stored_by(
        db,
        "content_key",
        [post.content_key for _, post in rest if not post.url_key],
        where=" AND canonical_url IS NULL",
    )
    for index, post in rest:
        if post.url_key:
            candidates = [
                row
                for row in by_url.get(post.url_key, []) + by_page.get(post.url_key.split("#")[0], [])
                if row["feed_url"] != feed_url or _same_entry(row, post)
            ]
        else:
            candidates = [
                row
                for row in by_text.get(post.content_key or "", [])
                if row["feed_url"] == feed_url or _unconfigured(row["feed_url"], configured)
            ]
        claim(index, candidates)
    return matches


def _same_entry(stored: dict, post: Post) -> bool:
    """Whether a stored post of this feed with this entry's link is this entry under another guid."""
    return stored["guid"] is None or post.guid is None or stored["content_key"] in (None, post.content_key)


def _unconfigured(feed_url: str, configured: Collection[str]) -> bool:
    """A feed no longer in feeds.yaml (moved, removed); with no list given, none is."""
    return bool(configured) and feed_url not in configured


def _stored_by(
    db: sqlite_utils.Database, column: str, values: list, *, where: str = "", params: list | None = None
) -> dict[str, list[dict]]:
    """Stored posts whose `column` is one of `values` (and `where` holds), grouped by that value, oldest first."""
    found: dict[str, list[dict]] = {}
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        sql = (
            f"SELECT {column}, id, feed_url, canonical_url, guid, content_key FROM posts WHERE {column} IN "
            f"({','.join('?' * len(chunk))}){where} ORDER BY first_seen_at, id"
        )
        for value, *row in db.execute(sql, [*chunk, *(params or [])]).fetchall():
            found.setdefault(value, []).append(
                dict(zip(("id", "feed_url", "canonical_url", "guid", "content_key"), row, strict=True))
            )
    return found


def feed_health(db: sqlite_utils.Database) -> list[dict]:
    return list(
        db.query(
            "SELECT feeds.*, (SELECT count(*) FROM posts WHERE posts.feed_url = feeds.url) AS posts "
            "FROM feeds ORDER BY feeds.name"
        )
    )


# --- issues ----------------------------------------------------------------------


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


def candidate_posts(
    db: sqlite_utils.Database, *, since: str, until: str, now: str, last: dict | None = None
) -> tuple[list[dict], int]:
    """The posts an issue may hold, oldest first, and how far the posts stored so far go (seen_seq), read in
    one snapshot: a post stored after it is someone else's news.

    Dated in [since, until); or, once an issue `last` has been sent or begun, stored after its last build,
    or dated after that build (it was in the future then), and dated before `until`. None dated in the
    future; none in the email of an issue sent or being sent.
    """
    # Each way in is its own index range (an OR across them would make SQLite walk the date index of every
    # older post): dated this week; and, after a send, stored or dated after its last build.
    ways, params = ["SELECT rowid FROM posts WHERE published_at >= ? AND published_at < ?"], [since, until]
    if last is not None and last.get("built_seq") is not None:
        ways += ["SELECT rowid FROM posts WHERE seen_seq > ?", "SELECT rowid FROM posts WHERE published_at > ?"]
        params += [last["built_seq"], last["built_at"]]
    elif last is not None:  # built by 0.1.0, which kept no order
        ways.append("SELECT rowid FROM posts WHERE first_seen_at >= ?")
        params.append(last["built_at"] or last["sent_at"] or last["created_at"])
    db.execute("BEGIN")
    try:
        seen = db.execute("SELECT coalesce(max(seen_seq), 0) FROM posts").fetchone()[0]
        rows = list(
            db.query(
                f"SELECT * FROM posts WHERE rowid IN ({' UNION '.join(ways)}) "
                "AND published_at < ? AND published_at <= ? AND NOT EXISTS (SELECT 1 FROM issue_posts "
                "JOIN issues ON issues.id = issue_posts.issue_id WHERE issue_posts.post_id = posts.id "
                "AND issues.status IN ('sending', 'sent') AND issue_posts.in_email = 1) "
                "ORDER BY published_at, posts.id",
                [*params, until, now],
            )
        )
    finally:
        db.execute("COMMIT")
    return rows, seen


def post_sources(db: sqlite_utils.Database, post_ids: list[str]) -> dict[str, list[str]]:
    """Every feed that brought each post (the same article from an aggregator and the blog)."""
    found: dict[str, list[str]] = {}
    for start in range(0, len(post_ids), 500):
        chunk = post_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for post_id, feed_url in db.execute(
            f"SELECT post_id, feed_url FROM post_sources WHERE post_id IN ({marks})", chunk
        ):
            found.setdefault(post_id, []).append(feed_url)
    return found


def feed_sites(db: sqlite_utils.Database) -> dict[str, str]:
    """Each feed's home page, as its channel link gives it."""
    return dict(db.execute("SELECT url, site_url FROM feeds WHERE site_url IS NOT NULL").fetchall())


def posts_without_text(db: sqlite_utils.Database, feed_url: str, limit: int) -> list[tuple[str, str]]:
    """(id, link) of the feed's posts with no summary whose page was never asked for, newest first, never one
    already sent."""
    return db.execute(
        "SELECT id, canonical_url FROM posts WHERE feed_url = ? AND page_tried IS NULL "
        f"AND coalesce(summary, '') = '' AND canonical_url IS NOT NULL AND {_NOT_SENT} "
        "ORDER BY seen_seq DESC LIMIT ?",
        [feed_url, limit],
    ).fetchall()


def record_page_summaries(db: sqlite_utils.Database, pages: list[tuple[str, tuple[str, int, int] | None, str]]) -> None:
    """(description, image or None, post id): each post's page was asked for (the description may be empty);
    its image is kept only where the feed gave none."""
    with transaction(db):
        db.conn.executemany(
            "UPDATE posts SET summary = ?, page_tried = 1, image_width = CASE WHEN image_url IS NULL THEN ? "
            "ELSE image_width END, image_height = CASE WHEN image_url IS NULL THEN ? ELSE image_height END, "
            "image_url = coalesce(image_url, ?) WHERE id = ?",
            [
                (description, *(image[1:] if image else (None, None)), image[0] if image else None, post_id)
                for description, image, post_id in pages
            ],
        )


# --- sending ---------------------------------------------------------------------
#
# An issue goes draft → sending → sent. A delivery row (SMTP; one per issue and subscriber, keyed by the
# address_key of the address) goes pending → sending (committed before the message is handed over) → sent, failed
# (a 5xx: never retried), back to pending (a 4xx or a dropped connection: retried), or skipped (the
# address left the list before it was mailed). Rows left `sending` by a killed run are the only ones
# that may have been delivered without being recorded.


def database_path(db: sqlite_utils.Database) -> str:
    """The file behind a connection, so that each sending thread can open its own connection to it."""
    return next(db.execute("PRAGMA database_list"))[2]


def suppressions(db: sqlite_utils.Database) -> dict[str, str]:
    """address_key of an address → why it is never mailed (unsubscribed, bounced or complained)."""
    return dict(db.execute(f"SELECT email_key, status FROM subscribers WHERE status IN {_SUPPRESSED}").fetchall())


_SUPPRESSED = "('" + "', '".join(SUPPRESSED) + "')"  # for SQL: the statuses that are never mailed


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
            f"issue_id = excluded.issue_id WHERE status NOT IN {_SUPPRESSED}",
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
    or complained status is taken; its pending status never demotes anyone. Only what changes is written.
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
                    f"WHERE known.status IN {_SUPPRESSED} AND incoming.status != known.status GROUP BY known.status"
                ).fetchall()
            )
            changes.updated = db.execute(
                "UPDATE subscribers SET name = CASE WHEN incoming.name != '' THEN incoming.name ELSE subscribers.name "
                "END, status = new.status, updated_at = ?, status_detail = ?, consent_at = CASE WHEN new.status = "
                "'active' THEN coalesce(subscribers.consent_at, incoming.consent_at) ELSE subscribers.consent_at END "
                "FROM incoming JOIN (SELECT incoming.email_key, CASE WHEN known.status IN "
                f"{_SUPPRESSED} OR incoming.status = 'pending' THEN known.status ELSE incoming.status END AS status "
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
            db.execute("DROP TABLE temp.incoming")
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
            f"AND email IN (SELECT email_key FROM subscribers WHERE status IN {_SUPPRESSED})",
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
