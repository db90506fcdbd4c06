"""Every real-world feed of ../shared/feeds-corpus goes through collect and parse, and what is stored is safe."""

from __future__ import annotations

from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest

from conftest import CORPUS, write_config
from digest import jobs, store
from digest.config import CollectSettings, load_config
from feedserver import Route

NOW = datetime(2026, 4, 3, 12, 0, tzinfo=timezone.utc)
FILES = sorted(path for path in CORPUS.iterdir() if path.suffix != ".md") if CORPUS.is_dir() else []
# Documents that are no feed at all, or so broken that no post with a link survives: reported, not stored.
NOT_FEEDS = {
    "mf__iso88591_utf8_mismatch.xml", "fp__illformed_rss_empty_document.xml", "fp__illformed_aaa_illformed.xml",
    "fp__illformed_rss_incomplete_cdata.xml", "fp__illformed_undeclared_namespace.xml",
    "fp__encoding_bozo_invalid-bytes-with-bom.xml",
}
ALLOWED_SCHEMES = ("http://", "https://", "mailto:")


class Audit(HTMLParser):
    """Everything in stored HTML that an email must never carry."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "iframe", "style", "form", "object", "embed", "input"):
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"{tag} {name}=")
            if name in ("href", "src") and not (value or "").startswith(ALLOWED_SCHEMES):
                self.problems.append(f"{tag} {name}={value!r}")
        if tag == "img" and any((attributes.get(side) or "").strip() in ("0", "1", "1px")
                                for side in ("width", "height")):
            self.problems.append(f"1x1 image {attributes.get('src')}")


def audit(fragment: str) -> list[str]:
    parser = Audit()
    parser.feed(fragment)
    parser.close()
    return parser.problems


@pytest.fixture(scope="module")
def collected(tmp_path_factory, request):
    if not FILES:
        pytest.fail(f"the feed corpus is missing: {CORPUS}")
    from feedserver import FeedServer

    server = FeedServer().start()
    request.addfinalizer(server.stop)
    directory = tmp_path_factory.mktemp("corpus")
    for path in FILES:
        server.routes[f"/{path.name}"] = Route(path.read_bytes(), headers={"Content-Type": "application/xml"})
    feeds = [{"name": path.name, "url": server.url(f"/{path.name}"), "section": "Articles"} for path in FILES]
    config = load_config(write_config(directory, feeds))
    db = store.open_db(directory / "digest.db")
    settings = CollectSettings(timeout=10.0, retries=0)
    first = jobs.collect(config, db, now=NOW, settings=settings)
    second = jobs.collect(config, db, now=NOW, settings=settings)
    return db, first, second


def test_every_corpus_file_is_collected_or_reported_without_an_exception(collected):
    db, first, _ = collected
    assert len(first.feeds) == len(FILES)
    failed = {feed.name: feed.error for feed in first.failed}
    assert set(failed) == NOT_FEEDS, failed
    assert all(error.startswith(("not a feed", "not well-formed XML")) for error in failed.values())
    assert first.new_posts > 900  # the corpus holds about a thousand entries


def test_stored_html_and_summaries_are_safe(collected):
    db, _, _ = collected
    for row in db["posts"].rows:
        assert audit(row["content_html"]) == [], (row["feed_url"], row["title"])
        for text in (row["summary"], row["title"]):
            assert "<" not in text or audit(text) == [], text
            assert len(row["summary"]) <= 300
        assert row["canonical_url"] is None or row["canonical_url"].startswith(("http://", "https://"))
        assert "utm_" not in (row["canonical_url"] or "") and "#" not in (row["canonical_url"] or "")


def test_collecting_the_same_documents_again_adds_nothing(collected):
    _, _, second = collected
    assert second.new_posts == 0 and len(second.failed) == len(NOT_FEEDS)


def test_text_in_legacy_encodings_is_decoded(collected):
    db, _, _ = collected
    titles = " ".join(row["title"] for row in db["posts"].rows)
    assert "\ufffd" not in titles
