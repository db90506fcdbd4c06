"""The feeds' fetch state and their posts: recording a fetch (which entries are posts already stored), the
posts an issue may hold, the summaries taken from posts' pages, and each feed's health. Apart from issues and
subscribers: collect writes these tables, build reads them."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from digest.models import Post
from digest.store.db import iso, transaction
from digest.urls import prefer


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
