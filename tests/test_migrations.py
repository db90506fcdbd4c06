"""The schema is versioned: a database written by release 0.1.0 opens, upgrades, and keeps working.

tests/fixtures/digest-0.1.0.db was written by digest 0.1.0 (commit 5dc12f1): `digest demo` (8 sample feeds
served on 127.0.0.1:36705, 31 posts), the week 2026-W14 built and sent (ada and bob sent, grace bounced),
carol unsubscribed, and 2026-W15 created as a draft.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digest import store
from digest.migrations import MIGRATIONS, schema_version
from digest.models import Post
from digest.urls import url_key

FIXTURE = Path(__file__).parent / "fixtures" / "digest-0.1.0.db"
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
    now = datetime(2026, 4, 12, tzinfo=timezone.utc)
    seen_again = Post(id="another-id-scheme", feed_url=BLOGS, canonical_url=known[1], title=known[2], author=None,
                      summary="", content_html="", published_at=None, url_key=url_key(known[1]))
    new = Post(id="new", feed_url=BLOGS, canonical_url="https://blog.example.com/new/", title="New", author=None,
               summary="", content_html="", published_at=now, url_key=url_key("https://blog.example.com/new/"))
    added = store.record_fetch(db, url=BLOGS, name="Blogs", section="Articles", outcome=store.FetchOutcome(status=200),
                               posts=[seen_again, new], now=now, configured={BLOGS})
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
