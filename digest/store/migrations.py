"""The schema of digest.db, as numbered migrations applied in order by `store.open_db`.

The version is SQLite's `user_version`: a database at version N has had m001 … mN applied. Each
migration runs in its own transaction together with the version it sets, so a kill leaves the database
at one version or the next, never between. Release 0.1.0 wrote version 0 with m001's tables, which is
why m001 creates only what is missing. Never edit a released migration: add the next one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    MIGRATIONS.append(function)
    return function


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, path: str) -> int:
    """Apply the pending migrations; returns the version. A database newer than this code is refused."""
    known = len(MIGRATIONS)
    if schema_version(db) > known:
        raise sqlite3.DatabaseError(
            f"{path} was written by a newer digest (schema version {schema_version(db)}, "
            f"this one knows {known}): upgrade digest"
        )
    for number, apply in enumerate(MIGRATIONS, 1):
        if schema_version(db) >= number:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) < number:  # another process may have applied it while we waited
                apply(db)
                db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return schema_version(db)


def _run(db: sqlite_utils.Database, script: str) -> None:
    """Statements separated by semicolons, inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    """The schema of release 0.1.0."""
    _run(
        db,
        """
        CREATE TABLE IF NOT EXISTS feeds (
            url TEXT PRIMARY KEY NOT NULL, name TEXT, section TEXT, title TEXT, etag TEXT, last_modified TEXT,
            last_status INTEGER, last_error TEXT, last_warning TEXT, last_fetched_at TEXT, last_ok_at TEXT,
            consecutive_failures INTEGER DEFAULT 0, redirect_url TEXT);
        CREATE TABLE IF NOT EXISTS posts (
            id TEXT PRIMARY KEY NOT NULL, canonical_url TEXT, feed_url TEXT NOT NULL, title TEXT NOT NULL,
            author TEXT, summary TEXT, content_html TEXT, published_at TEXT NOT NULL, dated_by_feed INTEGER,
            first_seen_at TEXT NOT NULL);
        CREATE UNIQUE INDEX IF NOT EXISTS idx_posts_canonical_url ON posts (canonical_url);
        CREATE INDEX IF NOT EXISTS idx_posts_published_at ON posts (published_at);
        CREATE TABLE IF NOT EXISTS issues (
            id TEXT PRIMARY KEY NOT NULL, subject TEXT, status TEXT NOT NULL DEFAULT 'draft', backend TEXT,
            remote_id TEXT, idempotency_key TEXT, created_at TEXT NOT NULL, sent_at TEXT);
        CREATE TABLE IF NOT EXISTS issue_posts (
            issue_id TEXT REFERENCES issues(id), post_id TEXT REFERENCES posts(id), added_at TEXT,
            PRIMARY KEY (issue_id, post_id));
        CREATE INDEX IF NOT EXISTS idx_issue_posts_post_id ON issue_posts (post_id);
        CREATE TABLE IF NOT EXISTS deliveries (
            issue_id TEXT NOT NULL REFERENCES issues(id), email TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER DEFAULT 0, last_reply TEXT, message_id TEXT,
            updated_at TEXT, sent_at TEXT, PRIMARY KEY (issue_id, email));
        CREATE TABLE IF NOT EXISTS suppressions (
            email TEXT PRIMARY KEY NOT NULL, reason TEXT NOT NULL, detail TEXT, issue_id TEXT,
            created_at TEXT NOT NULL);
    """,
    )


@migration
def m002_post_identity(db: sqlite_utils.Database) -> None:
    """Posts as readers see them (issue 7): one canonical URL may belong to several posts (two entries of a
    feed linking to one page), so its unique index goes; posts keep their guid, the link's identity, a
    content hash, their source, the order they were first stored in (seen_seq: a clock would order a slow
    collect's posts before a build that ran while it stored them) and which feeds brought them; feeds keep
    their site; issues when and up to which post they were last built; each offered post where it went,
    and under which feed."""
    from digest.text import content_key, plain_text
    from digest.urls import clean_url, url_key

    _run(
        db,
        """
        ALTER TABLE posts ADD COLUMN guid TEXT;
        ALTER TABLE posts ADD COLUMN url_key TEXT;
        ALTER TABLE posts ADD COLUMN content_key TEXT;
        ALTER TABLE posts ADD COLUMN source TEXT;
        ALTER TABLE posts ADD COLUMN seen_seq INTEGER;
        UPDATE posts SET seen_seq = rowid;
        DROP INDEX IF EXISTS idx_posts_canonical_url;
        ALTER TABLE feeds ADD COLUMN site_url TEXT;
        ALTER TABLE issues ADD COLUMN built_at TEXT;
        ALTER TABLE issues ADD COLUMN built_seq INTEGER;
        ALTER TABLE issue_posts ADD COLUMN placement TEXT NOT NULL DEFAULT 'item';
        ALTER TABLE issue_posts ADD COLUMN feed_url TEXT;
        UPDATE issues SET built_at = (SELECT max(added_at) FROM issue_posts WHERE issue_id = issues.id);
        CREATE TABLE post_sources (post_id TEXT NOT NULL REFERENCES posts(id), feed_url TEXT NOT NULL,
                                   PRIMARY KEY (post_id, feed_url)) WITHOUT ROWID;
        INSERT INTO post_sources (post_id, feed_url) SELECT id, feed_url FROM posts;
    """,
    )
    # 0.1.0 kept `ref` and `source` in links, which are tracking parameters now: the same key as a new fetch.
    db.conn.executemany(
        "UPDATE posts SET url_key = ? WHERE id = ?",
        (
            (url_key(clean_url(url) or url), post_id)
            for post_id, url in db.execute(
                "SELECT id, canonical_url FROM posts WHERE canonical_url IS NOT NULL"
            ).fetchall()
        ),
    )
    db.conn.executemany(
        "UPDATE posts SET content_key = ? WHERE id = ?",
        (
            (content_key(title, plain_text(html or "")), post_id)
            for post_id, title, html in db.execute(
                "SELECT id, title, content_html FROM posts WHERE canonical_url IS NULL"
            ).fetchall()
        ),
    )
    _run(
        db,
        """
        CREATE INDEX idx_posts_url_key ON posts (url_key);
        CREATE INDEX idx_posts_feed_guid ON posts (feed_url, guid);
        CREATE INDEX idx_posts_content_key ON posts (content_key);
        CREATE INDEX idx_posts_seen_seq ON posts (seen_seq);
    """,
    )


@migration
def m003_send_snapshot(db: sqlite_utils.Database) -> None:
    """A send keeps the draft it began with (a resumed send mails what the first subscribers got), and marks
    which offered posts the email holds: only those are never offered again (issue 8). Offers of issues
    already sent or being sent count as in the email, as they did."""
    _run(
        db,
        """
        ALTER TABLE issues ADD COLUMN sent_draft TEXT;
        ALTER TABLE issue_posts ADD COLUMN in_email INTEGER NOT NULL DEFAULT 0;
        UPDATE issue_posts SET in_email = 1
            WHERE issue_id IN (SELECT id FROM issues WHERE status IN ('sending', 'sent'));
    """,
    )


@migration
def m004_issue_list_id(db: sqlite_utils.Database) -> None:
    """The list-id each issue was sent under: unsubscribe tokens are signed for it, and must still be honoured
    after a change of title or site_url changes the newsletter's default list-id."""
    _run(db, "ALTER TABLE issues ADD COLUMN list_id TEXT")


@migration
def m005_broken_body_validators(db: sqlite_utils.Database) -> None:
    """The ETag and Last-Modified of a body that is no usable feed are kept too, with that body's error
    (issue 10): the next run asks with them, and a 304 means the same broken body, so the feed stays failed
    with the same error without being fetched whole and parsed again every run."""
    _run(db, "ALTER TABLE feeds ADD COLUMN broken_body_error TEXT")


@migration
def m006_subscribers(db: sqlite_utils.Database) -> None:
    """Subscribers live in the database (issue 11): address (`email`, as given; `email_key` compares it), name,
    status (pending, active, unsubscribed, bounced, complained), how and when they joined, when they gave
    consent, and the confirmation mails sent today (for the per-address limit). The suppressions of earlier
    releases become subscribers who unsubscribed or bounced."""
    _run(
        db,
        """
        CREATE TABLE subscribers (
            email_key TEXT PRIMARY KEY NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL, source TEXT NOT NULL, joined_at TEXT NOT NULL, consent_at TEXT,
            updated_at TEXT NOT NULL, status_detail TEXT, issue_id TEXT,
            confirmations_sent INTEGER NOT NULL DEFAULT 0, confirmation_day TEXT);
        CREATE INDEX idx_subscribers_status ON subscribers (status);
        INSERT INTO subscribers (email_key, email, status, source, joined_at, updated_at, status_detail, issue_id)
            SELECT email, email, reason, 'suppression', created_at, created_at, detail, issue_id FROM suppressions;
        DROP TABLE suppressions;
    """,
    )


@migration
def m007_link_checks(db: sqlite_utils.Database) -> None:
    """What `digest check` found at each link (issue 12), kept a day so that a second check is fast: the
    status of the last answer (after redirects), where the redirects led, the error when there was no answer,
    and for an http:// link whether its https:// twin answered."""
    _run(
        db,
        """
        CREATE TABLE link_checks (
            url TEXT PRIMARY KEY NOT NULL, checked_at TEXT NOT NULL, status INTEGER, final_url TEXT,
            error TEXT, https_works INTEGER) WITHOUT ROWID;
    """,
    )


@migration
def m008_approval(db: sqlite_utils.Database) -> None:
    """Approval before the schedule sends (issue 12): the hash of the draft a review copy was last mailed for,
    and of the draft the editor approved; editing the draft after approval voids it."""
    _run(
        db,
        """
        ALTER TABLE issues ADD COLUMN review_hash TEXT;
        ALTER TABLE issues ADD COLUMN reviewed_at TEXT;
        ALTER TABLE issues ADD COLUMN approved_hash TEXT;
        ALTER TABLE issues ADD COLUMN approved_at TEXT;
    """,
    )


@migration
def m009_page_summaries(db: sqlite_utils.Database) -> None:
    """Summaries for title-only feeds (issue 12): whether a post's own page was fetched for its description,
    so that each page is fetched once."""
    _run(db, "ALTER TABLE posts ADD COLUMN page_tried INTEGER")


@migration
def m010_post_images(db: sqlite_utils.Database) -> None:
    """A post's image (issue 12, a feed's `images: true`): its feed's thumbnail or image enclosure, else its
    page's og:image, with the width and height the email needs to reserve its place."""
    _run(
        db,
        """
        ALTER TABLE posts ADD COLUMN image_url TEXT;
        ALTER TABLE posts ADD COLUMN image_width INTEGER;
        ALTER TABLE posts ADD COLUMN image_height INTEGER;
    """,
    )


@migration
def m011_signup_queue(db: sqlite_utils.Database) -> None:
    """The web side's order and its mail (issue 20). A sequence numbers the subscriber events that matter to a
    confirmation: each request to join and each change into `unsubscribed` (a trigger, whoever writes it) takes
    the next number, so a confirmation link issued before an unsubscribe never re-activates, even within the
    same second. The signup requests wait in `signup_queue` until a thread of `digest serve` records them and
    mails the confirmation link: a SIGTERM loses none, the next start sends what is left."""
    _run(
        db,
        """
        CREATE TABLE subscriber_sequence (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
        INSERT INTO subscriber_sequence VALUES (1, 0);
        ALTER TABLE subscribers ADD COLUMN status_seq INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE signup_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
            requested_at TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'new',
            attempts INTEGER NOT NULL DEFAULT 0, next_try TEXT)
    """,
    )
    bump = (
        "BEGIN UPDATE subscriber_sequence SET value = value + 1; UPDATE subscribers SET status_seq = "
        "(SELECT value FROM subscriber_sequence) WHERE email_key = new.email_key; END"
    )
    # a trigger's body holds semicolons: one statement each, not through _run
    db.execute(
        f"CREATE TRIGGER subscribers_unsubscribed_insert AFTER INSERT ON subscribers "
        f"WHEN new.status = 'unsubscribed' {bump}"
    )
    db.execute(
        f"CREATE TRIGGER subscribers_unsubscribed_update AFTER UPDATE OF status ON subscribers "
        f"WHEN new.status = 'unsubscribed' AND old.status IS NOT 'unsubscribed' {bump}"
    )
