"""The schema is versioned: a database written by release 0.1.0 opens, upgrades, and keeps working.

tests/fixtures/digest-0.1.0.db was written by digest 0.1.0 (commit 5dc12f1): `digest demo` (8 sample feeds
served on 127.0.0.1:36705, 31 posts), the week 2026-W14 built and sent (ada and bob sent, grace bounced),
carol unsubscribed, and 2026-W15 created as a draft.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest import store
from digest.models import Post
from digest.store.migrations import MIGRATIONS, schema_version
from digest.urls import url_key

from conftest import FIXTURES

FIXTURE = FIXTURES / "digest-0.1.0.db"
BLOGS = "http://127.0.0.1:36705/community-blogs.atom"


@pytest.fixture
def old_db(tmp_path) -> Path:
    path = tmp_path / "digest.db"
    shutil.copy(FIXTURE, path)
    return path


def test_a_database_of_release_0_1_0_is_upgraded_in_place_and_keeps_its_data(old_db):
    assert sqlite3.connect(old_db).execute("PRAGMA user_version").fetchone()[0] == 0
    db = store.open_db(old_db)
    assert schema_version(db) == len(MIGRATIONS)
    assert db["posts"].count == 31
    assert db.execute("SELECT count(*) FROM posts WHERE url_key IS NULL").fetchone()[0] == 0
    assert store.get_issue(db, "2026-W14")["status"] == "sent"
    assert store.get_issue(db, "2026-W14")["built_at"] is not None  # from when its posts were added
    assert store.delivery_counts(db, "2026-W14") == {"sent": 2, "failed": 1}
    assert store.suppressions(db) == {"grace@example.com": "bounced", "carol@example.com": "unsubscribed"}
    assert store.offered_items_per_feed(db, "2026-W14")  # every old offer counts as an item


def test_an_upgraded_database_recognizes_its_posts_and_takes_new_ones(old_db):
    db = store.open_db(old_db)
    known = db.execute("SELECT id, canonical_url, title FROM posts WHERE feed_url = ? LIMIT 1", [BLOGS]).fetchone()
    now = datetime(2026, 4, 12, tzinfo=UTC)
    seen_again = Post(
        id="another-id-scheme",
        feed_url=BLOGS,
        canonical_url=known[1],
        title=known[2],
        author=None,
        summary="",
        content_html="",
        published_at=None,
        url_key=url_key(known[1]),
    )
    new = Post(
        id="new",
        feed_url=BLOGS,
        canonical_url="https://blog.example.com/new/",
        title="New",
        author=None,
        summary="",
        content_html="",
        published_at=now,
        url_key=url_key("https://blog.example.com/new/"),
    )
    added = store.record_fetch(
        db,
        url=BLOGS,
        name="Blogs",
        section="Articles",
        outcome=store.FetchOutcome(status=200),
        posts=[seen_again, new],
        now=now,
        configured={BLOGS},
    )
    assert added == 1 and db["posts"].count == 32


def test_opening_twice_applies_nothing_twice_and_a_newer_database_is_refused(old_db):
    store.open_db(old_db).close()
    db = store.open_db(old_db)
    assert schema_version(db) == len(MIGRATIONS)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="written by a newer digest"):
        store.open_db(old_db)


def test_a_new_database_gets_the_same_schema_as_an_upgraded_one(old_db, tmp_path):
    def schema(path: Path) -> dict[str, set[str]]:
        connection = sqlite3.connect(path)
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: {row[1] for row in connection.execute(f"PRAGMA table_info({table})")} for table in tables}

    store.open_db(old_db).close()
    store.open_db(tmp_path / "new.db").close()
    assert schema(old_db) == schema(tmp_path / "new.db")


def test_posts_stored_by_0_1_0_are_found_by_their_links_as_this_release_cleans_them(old_db):
    """0.1.0 kept `ref` and `source` in links and dropped fragments; the same entries fetched again, as this
    release cleans their links, are the posts already stored (and sent), not new ones."""
    legacy = sqlite3.connect(old_db)
    legacy.executemany(
        "INSERT INTO posts (id, canonical_url, feed_url, title, summary, content_html, published_at, dated_by_feed, "
        "first_seen_at) VALUES (?, ?, ?, ?, '', '', '2026-04-01T10:00:00+00:00', 1, '2026-04-01T10:00:00+00:00')",
        [
            ("legacy-ref", "https://ghost.example.com/post/?ref=rss", BLOGS, "Ghost post"),
            ("legacy-page", "https://micro.example.com/2026/04/01.html", BLOGS, "Microblog page"),
        ],
    )
    legacy.executemany(
        "INSERT INTO issue_posts (issue_id, post_id, added_at) VALUES ('2026-W14', ?, '')",
        [("legacy-ref",), ("legacy-page",)],
    )
    legacy.commit()
    legacy.close()
    from digest.feeds.parse import parse_feed

    from helpers.feeds import rss

    db = store.open_db(old_db)
    entries = rss(
        [
            {"title": "Ghost post", "link": "https://ghost.example.com/post/?ref=rss", "description": "x"},
            {"title": "First thought", "link": "https://micro.example.com/2026/04/01.html#a1", "description": "x"},
            {"title": "Second thought", "link": "https://micro.example.com/2026/04/01.html#a2", "description": "y"},
        ]
    )
    posts = parse_feed(entries, BLOGS).posts
    added = store.record_fetch(
        db,
        url=BLOGS,
        name="Blogs",
        section="Articles",
        outcome=store.FetchOutcome(status=200),
        posts=posts,
        now=datetime(2026, 4, 12, tzinfo=UTC),
        configured={BLOGS},
    )
    assert added == 1  # the second thought on that page: 0.1.0 had merged it into the page, and never sent it


def test_an_unsubscribe_takes_the_next_number_of_the_subscriber_sequence(old_db):
    """m011 (issue 20): whoever writes an unsubscribe, it is numbered after every request before it, so an older
    confirmation link never brings the address back, even within the same second; an upgraded database's
    unsubscribes come before any new request."""
    db = store.open_db(old_db)
    assert db.execute("SELECT status, status_seq FROM subscribers WHERE email_key LIKE 'carol%'").fetchone() == (
        "unsubscribed",
        0,
    )
    now = datetime(2026, 4, 1, 12, tzinfo=UTC)
    store.suppress(db, "new@example.com", "unsubscribed", now)
    store.suppress(db, "gone@example.com", "bounced", now)
    numbers = dict(db.execute("SELECT email_key, status_seq FROM subscribers WHERE email_key LIKE '%@example.com'"))
    assert numbers["new@example.com"] == 1 and numbers["gone@example.com"] == 0
    db.execute("UPDATE subscribers SET status = 'active' WHERE email_key = 'new@example.com'")
    assert db.execute("SELECT status_seq FROM subscribers WHERE email_key = 'new@example.com'").fetchone() == (1,)
    store.suppress(db, "new@example.com", "unsubscribed", now)
    assert db.execute("SELECT status_seq FROM subscribers WHERE email_key = 'new@example.com'").fetchone() == (2,)
    assert db.execute("SELECT value FROM subscriber_sequence").fetchone() == (2,)
    assert db["signup_queue"].count == 0
