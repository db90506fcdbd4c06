"""digest publish: the static archive of sent issues (index, one page per issue, Atom and JSON Feed), written
incrementally. Issues are sent for real, through the in-memory backend, at frozen times."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import jsonschema
import pytest
import yaml
from freezegun import freeze_time

from digest import load_config, store
from digest.errors import SetupError
from digest.issue.draft import draft_path, write_draft
from digest.issue.weeks import week_dates
from digest.models import Draft, DraftItem, DraftSection
from digest.send.memory import MemoryBackend
from digest.send.sending import send_issue
from digest.web import publish as publishing
from digest.web.publish import MANIFEST, publish

from helpers.project import make_project

SITE = "https://digest.example.com/"
SIGNUP = "https://digest.example.com/subscribe"
HOSTILE = """<script>alert("x")</script> & 'quotes' "here\""""
# Three weeks, each sent on the Monday after it, at 09:00 London time (08:00 UTC in April).
WEEKS = ("2026-W13", "2026-W14", "2026-W15")
SENT_AT = {
    "2026-W13": "2026-03-30 08:00:00",
    "2026-W14": "2026-04-06 08:00:00",
    "2026-W15": "2026-04-13 08:00:00",
    "2026-W16": "2026-04-20 08:00:00",
}

# The fields JSON Feed 1.1 requires (https://jsonfeed.org/version/1.1), and the types of those we write.
JSON_FEED_SCHEMA = {
    "type": "object",
    "required": ["version", "title", "items"],
    "properties": {
        "version": {"const": "https://jsonfeed.org/version/1.1"},
        "title": {"type": "string"},
        "home_page_url": {"type": "string", "pattern": "^https://"},
        "feed_url": {"type": "string", "pattern": "^https://"},
        "language": {"type": "string"},
        "authors": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id"],
                "anyOf": [{"required": ["content_html"]}, {"required": ["content_text"]}],
                "properties": {
                    "id": {"type": "string"},
                    "url": {"type": "string", "pattern": "^https://"},
                    "title": {"type": "string"},
                    "content_html": {"type": "string"},
                    "summary": {"type": "string"},
                    "date_published": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}


def make_draft(issue: str, titles: list[str], subject: str | None = None) -> Draft:
    start, end = week_dates(issue)
    return Draft(
        issue=issue,
        week_start=start,
        week_end=end,
        subject=subject or f"Test Digest {issue}",
        intro=f"Welcome to {issue}.",
        sections=[
            DraftSection(
                title="News",
                items=[
                    DraftItem(
                        title=title,
                        url=f"https://blog.example.com/{issue}/{number}",
                        summary=f"What {title} is about.",
                        source="blog.example.com",
                        published=date(2026, 4, 1),
                    )
                    for number, title in enumerate(titles)
                ],
            )
        ],
    )


def send_week(directory: Path, issue: str, titles: list[str] | None = None, subject: str | None = None) -> None:
    """Write the week's draft and send it to the subscribers through the memory backend, at SENT_AT[issue]."""
    write_draft(draft_path(directory / "drafts", issue), make_draft(issue, titles or [f"Post of {issue}"], subject))
    config = load_config(directory / "feeds.yaml")
    db = store.open_db(directory / "digest.db")
    try:
        with pytest.MonkeyPatch.context() as patch, freeze_time(SENT_AT[issue]):
            patch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "publish-tests-secret")
            report = send_issue(config, db, issue, backend=MemoryBackend(config))
        assert report.complete, report.lines
    finally:
        db.conn.close()


def configure(directory: Path, **publish_settings) -> None:
    """Give the newsletter folder a publish: section (site_url is in its newsletter: section)."""
    path = directory / "feeds.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["publish"] = publish_settings
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def sent_weeks(tmp_path_factory) -> Path:
    """A newsletter folder whose three weeks were sent (made once, copied by each test)."""
    directory = tmp_path_factory.mktemp("sent")
    make_project(
        directory,
        2525,
        [{"email": "ada@example.com", "name": "Ada", "status": "active"}],
        site_url=SITE,
    )
    configure(directory, signup_url=SIGNUP)
    for number, issue in enumerate(WEEKS):
        send_week(directory, issue, [f"Post {number}a of {issue}", f"Post {number}b of {issue}"])
    return directory


@pytest.fixture
def folder(sent_weeks, tmp_path) -> Path:
    directory = tmp_path / "newsletter"
    shutil.copytree(sent_weeks, directory)
    return directory


def run_publish(directory: Path, **options) -> publishing.PublishReport:
    db = store.open_db(directory / "digest.db")
    try:
        return publish(load_config(directory / "feeds.yaml"), db, **options)
    finally:
        db.conn.close()


def read(directory: Path, name: str) -> str:
    return (directory / "site" / name).read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


# --- what is written ---------------------------------------------------------------------


def test_a_first_publish_writes_the_index_a_page_per_sent_issue_and_both_feeds(folder):
    report = run_publish(folder)
    pages = [f"issues/{issue}/index.html" for issue in WEEKS]
    assert sorted(report.written) == sorted([*pages, "index.html", "feed.xml", "feed.json"])
    assert report.issues == 3 and report.unchanged == 0 and report.warnings == []
    assert report.out == folder / "site" and (folder / "site" / MANIFEST).is_file()


def test_the_atom_feed_parses_cleanly_newest_first_with_absolute_links_and_full_content(folder):
    run_publish(folder)
    feed = feedparser.parse((folder / "site" / "feed.xml").read_bytes())
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "atom10" and feed.feed.title == "Test Digest"
    assert [entry.id for entry in feed.entries] == [f"{SITE}issues/{issue}/" for issue in reversed(WEEKS)]
    assert [entry.link for entry in feed.entries] == [entry.id for entry in feed.entries]
    assert feed.entries[0].updated_parsed[:6] == (2026, 4, 13, 8, 0, 0)
    assert feed.entries[0].title == "Test Digest 2026-W15"
    assert feed.feed.author == "Test Digest"
    links = {link.rel: link.href for link in feed.feed.links}
    assert links == {"self": f"{SITE}feed.xml", "alternate": SITE}
    content = feed.entries[0].content[0]
    assert content.type == "text/html"
    assert "Post 2a of 2026-W15" in content.value and 'href="https://blog.example.com/2026-W15/0"' in content.value
    assert "Welcome to 2026-W15." in content.value
    assert "<head" not in content.value and "<style" not in content.value  # a fragment, not the email


def test_the_feeds_hold_the_newest_feed_items_issues(folder):
    configure(folder, feed_items=2)
    run_publish(folder)
    feed = feedparser.parse((folder / "site" / "feed.xml").read_bytes())
    assert [entry.id for entry in feed.entries] == [f"{SITE}issues/2026-W15/", f"{SITE}issues/2026-W14/"]
    assert len(json.loads(read(folder, "feed.json"))["items"]) == 2


def test_the_json_feed_is_json_feed_1_1_with_the_same_items(folder):
    run_publish(folder)
    feed = json.loads(read(folder, "feed.json"))
    jsonschema.validate(feed, JSON_FEED_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["home_page_url"] == SITE and feed["feed_url"] == f"{SITE}feed.json"
    assert [item["id"] for item in feed["items"]] == [f"{SITE}issues/{issue}/" for issue in reversed(WEEKS)]
    newest = feed["items"][0]
    assert newest["url"] == newest["id"] and newest["date_published"] == "2026-04-13T08:00:00Z"
    assert "Post 2b of 2026-W15" in newest["content_html"]
    atom = feedparser.parse((folder / "site" / "feed.xml").read_bytes())
    assert [item["title"] for item in feed["items"]] == [entry.title for entry in atom.entries]


def test_an_issue_page_is_the_email_without_its_per_subscriber_links_and_with_prev_and_next(folder):
    run_publish(folder)
    for number, issue in enumerate(WEEKS):
        html = read(folder, f"issues/{issue}/index.html")
        assert "%%DIGEST_" not in html and "Unsubscribe" not in html and "token=" not in html
        assert "View in browser" not in html and "<script" not in html.lower()
        assert f"Post {number}a of {issue}" in html
        tags = Tags(html)
        navs = tags.all("nav")
        assert len(navs) == 1 and navs[0].get("aria-label")
        links = {attrs.get("rel"): attrs["href"] for attrs in tags.all("a") if attrs.get("rel") in ("prev", "next")}
        expected = {}
        if number > 0:
            expected["prev"] = f"../{WEEKS[number - 1]}/"
        if number < len(WEEKS) - 1:
            expected["next"] = f"../{WEEKS[number + 1]}/"
        assert links == expected
        assert "../../" in [attrs["href"] for attrs in tags.all("a")]
        assert re.search(r"<body[^>]*><nav ", html)  # right after the body tag, before the email
        alternates = {attrs["type"]: attrs["href"] for attrs in tags.all("link") if attrs.get("rel") == "alternate"}
        assert alternates == {"application/atom+xml": f"{SITE}feed.xml", "application/feed+json": f"{SITE}feed.json"}


def test_an_issue_page_is_a_web_page_with_its_main_landmark_and_no_outlook_markup(folder):
    """The email's conditional comments, VML namespaces and mso- styles are for Outlook's Word engine: a web
    page has no use for them. Its content is the page's <main>; the bar to the other issues stays outside."""
    import lxml.html

    run_publish(folder)
    html = read(folder, f"issues/{WEEKS[0]}/index.html")
    assert "[if " not in html and "endif" not in html and "mso" not in html.lower()
    assert "xmlns:v" not in html and "xmlns:o" not in html and "<o:" not in html
    document = lxml.html.fromstring(html)
    mains = document.findall(".//main")
    assert len(mains) == 1 and f"Post 0a of {WEEKS[0]}" in mains[0].text_content()
    assert mains[0].find(".//nav") is None and len(document.findall(".//nav")) == 1


def test_the_index_lists_the_issues_newest_first_with_the_feeds_and_the_signup_form(folder):
    run_publish(folder)
    html = read(folder, "index.html")
    tags = Tags(html)
    hrefs = [attrs["href"] for attrs in tags.all("a")]
    assert [href for href in hrefs if href.startswith("issues/")] == [f"issues/{issue}/" for issue in reversed(WEEKS)]
    assert f"{SITE}feed.xml" in hrefs and f"{SITE}feed.json" in hrefs
    assert '<time datetime="2026-04-13T08:00:00Z">2026-04-13</time>' in html
    assert {attrs["type"] for attrs in tags.all("link") if attrs.get("rel") == "alternate"} == {
        "application/atom+xml",
        "application/feed+json",
    }
    assert tags.all("form") == [{"method": "post", "action": SIGNUP}]
    inputs = {attrs["name"]: attrs for attrs in tags.all("input")}
    assert inputs["email"]["type"] == "email" and "required" in inputs["email"]
    assert set(inputs) == {"email", "name", "website"}
    assert inputs["website"]["tabindex"] == "-1" and inputs["website"]["autocomplete"] == "off"
    labelled = {attrs["for"] for attrs in tags.all("label")}
    assert labelled == {"email", "name", "website"} and all(attrs["id"] in labelled for attrs in inputs.values())
    assert re.search(r'<div class="hp" aria-hidden="true"><label for="website">Leave this field empty', html)
    assert "<script" not in html.lower() and re.search(r"\.hp \{[^}]*left: -10000px", html)
    assert Tags(html).all("html") == [{"lang": "en"}]


def test_the_index_has_no_form_without_a_signup_url(folder):
    configure(folder)  # neither publish.signup_url nor serve:
    run_publish(folder)
    html = read(folder, "index.html")
    assert "<form" not in html and 'name="website"' not in html


def test_an_archive_with_no_sent_issue_says_so_and_its_feeds_are_valid(tmp_path):
    make_project(tmp_path, 2525, [], site_url=SITE)
    configure(tmp_path)
    report = run_publish(tmp_path, now=datetime(2026, 4, 1, 12, tzinfo=UTC))
    assert report.issues == 0 and "No issue has been sent yet." in read(tmp_path, "index.html")
    feed = feedparser.parse((tmp_path / "site" / "feed.xml").read_bytes())
    assert not feed.bozo and feed.entries == [] and feed.feed.updated == "2026-04-01T12:00:00Z"
    assert json.loads(read(tmp_path, "feed.json"))["items"] == []
    again = run_publish(tmp_path, now=datetime(2026, 4, 8, 12, tzinfo=UTC))
    assert again.written == []


# --- hostile content ------------------------------------------------------------------------


def test_hostile_titles_and_subjects_are_escaped_everywhere(tmp_path):
    make_project(tmp_path, 2525, [{"email": "ada@example.com"}], site_url=SITE, title=f"Digest {HOSTILE}")
    configure(tmp_path, signup_url=SIGNUP + "?a='b'&c=%22d%22")  # a quote, <, > are refused in a URL setting
    send_week(tmp_path, "2026-W14", [HOSTILE, "Fine"], subject=f"Issue {HOSTILE}")
    run_publish(tmp_path)
    for name in ("index.html", "issues/2026-W14/index.html"):
        text = read(tmp_path, name)
        assert "<script" not in text and "alert(" in text, name  # the text is there, escaped
    index = read(tmp_path, "index.html")
    assert "Issue &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;quotes&#39;" in index
    assert Tags(index).all("form")[0]["action"] == SIGNUP + "?a='b'&c=%22d%22"  # one attribute, quotes and all
    feed = json.loads(read(tmp_path, "feed.json"))
    assert feed["title"] == f"Digest {HOSTILE}" and feed["items"][0]["title"] == f"Issue {HOSTILE}"  # plain text
    assert "<script" not in feed["items"][0]["content_html"] and "&lt;script&gt;" in feed["items"][0]["content_html"]
    atom = ET.fromstring((tmp_path / "site" / "feed.xml").read_bytes())
    ns = {"atom": "http://www.w3.org/2005/Atom"}
    assert atom.find("atom:entry/atom:title", ns).text == f"Issue {HOSTILE}"
    content = atom.find("atom:entry/atom:content", ns).text
    assert "<script" not in content and "&lt;script&gt;alert(&#34;x&#34;)" in content
    assert not feedparser.parse((tmp_path / "site" / "feed.xml").read_bytes()).bozo


# --- incremental -----------------------------------------------------------------------------


def test_a_second_publish_writes_nothing_and_renders_no_issue(folder, monkeypatch):
    run_publish(folder)
    before = {path: path.stat().st_mtime_ns for path in (folder / "site").rglob("*")}

    def no_rendering(*args, **kwargs):
        raise AssertionError("an unchanged issue was rendered again")

    monkeypatch.setattr(publishing, "render_issue", no_rendering)
    monkeypatch.setattr(publishing, "parse_draft", no_rendering)
    report = run_publish(folder)
    assert report.written == [] and report.unchanged == 3 + 3 and report.issues == 3
    assert {path: path.stat().st_mtime_ns for path in (folder / "site").rglob("*")} == before


def test_a_new_sent_issue_rewrites_only_its_page_the_previous_page_the_index_and_the_feeds(folder):
    first = run_publish(folder)
    old_ids = [entry.id for entry in feedparser.parse((folder / "site" / "feed.xml").read_bytes()).entries]
    send_week(folder, "2026-W16", ["Post of the fourth week"])
    report = run_publish(folder)
    assert sorted(report.written) == sorted(
        ["issues/2026-W16/index.html", "issues/2026-W15/index.html", "index.html", "feed.xml", "feed.json"]
    )
    assert report.unchanged == 2 and report.issues == 4 and first.issues == 3
    assert 'href="../2026-W16/" rel="next"' in read(folder, "issues/2026-W15/index.html")
    new_ids = [entry.id for entry in feedparser.parse((folder / "site" / "feed.xml").read_bytes()).entries]
    assert new_ids == [f"{SITE}issues/2026-W16/", *old_ids]  # the ids of earlier issues stay as they were


def test_a_page_changed_or_deleted_by_hand_is_written_again(folder):
    run_publish(folder)
    (folder / "site" / "issues" / "2026-W13" / "index.html").unlink()
    (folder / "site" / "feed.json").write_text("{}", encoding="utf-8")
    report = run_publish(folder)
    assert sorted(report.written) == ["feed.json", "issues/2026-W13/index.html"]


def test_a_template_change_renders_the_pages_again_and_writes_only_those_that_changed(folder):
    run_publish(folder)
    overrides = folder / "templates" / "web"
    overrides.mkdir(parents=True)
    nav = (publishing.template_folders(None)[0] / "web" / "nav.html.j2").read_text(encoding="utf-8")
    (overrides / "nav.html.j2").write_text(nav.replace("All issues", "Archive"), encoding="utf-8")
    report = run_publish(folder)
    assert sorted(report.written) == [f"issues/{issue}/index.html" for issue in WEEKS]
    assert ">Archive</a>" in read(folder, "issues/2026-W14/index.html")


def test_an_email_template_override_that_knows_nothing_of_the_web_leaves_no_mark(folder):
    (folder / "templates").mkdir()
    (folder / "templates" / "email.mjml.j2").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>{{ subject }} "
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text></mj-column></mj-section></mj-body></mjml>',
        encoding="utf-8",
    )
    run_publish(folder)
    html = read(folder, "issues/2026-W14/index.html")
    assert "%%DIGEST_" not in html and f'<a href="{SITE}">Unsubscribe</a>' in html
    assert re.search(r"<body[^>]*><nav ", html)


# --- drafts and settings ------------------------------------------------------------------


def test_an_issue_sent_without_a_kept_draft_falls_back_to_its_file_or_is_left_out_with_a_warning(folder):
    db = store.open_db(folder / "digest.db")
    db.execute("UPDATE issues SET sent_draft = NULL WHERE id IN ('2026-W13', '2026-W14')")
    db.conn.commit()
    db.conn.close()
    draft_path(folder / "drafts", "2026-W13").unlink()
    report = run_publish(folder)
    assert report.issues == 2 and "issues/2026-W14/index.html" in report.written
    assert not (folder / "site" / "issues" / "2026-W13").exists()
    assert len(report.warnings) == 1 and report.warnings[0].startswith("2026-W13: left out of the archive: ")
    assert "2026-W13.yaml" in report.warnings[0]


def test_the_page_shows_the_draft_as_sent_not_as_edited_since(folder):
    path = draft_path(folder / "drafts", "2026-W14")
    path.write_text(path.read_text(encoding="utf-8").replace("Post 1a", "Edited after sending"), encoding="utf-8")
    run_publish(folder)
    assert "Post 1a of 2026-W14" in read(folder, "issues/2026-W14/index.html")


def test_publish_writes_where_it_is_told(folder, tmp_path):
    report = run_publish(folder, out=tmp_path / "elsewhere")
    assert report.out == tmp_path / "elsewhere" and (tmp_path / "elsewhere" / "index.html").is_file()
    assert not (folder / "site").exists()


def test_without_a_site_url_publish_is_a_one_line_setup_error(tmp_path):
    make_project(tmp_path, 2525, [])
    db = store.open_db(tmp_path / "digest.db")
    with pytest.raises(SetupError) as raised:
        publish(load_config(tmp_path / "feeds.yaml"), db)
    assert "site_url" in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "site").exists()


def test_an_archive_url_elsewhere_is_a_warning(folder):
    path = folder / "feeds.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["newsletter"]["archive_url"] = "https://example.org/archive/{issue}/"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    report = run_publish(folder)
    assert len(report.warnings) == 1 and "archive_url" in report.warnings[0]


# --- accessibility ------------------------------------------------------------------------------


WCAG_AND_LANDMARKS = {
    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
    # best practices, not WCAG criteria: all content in landmarks, one <main>
    "rules": {rule: {"enabled": True} for rule in ("region", "landmark-one-main", "landmark-no-duplicate-main")},
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_wcag_21_aa_violation_in_the_index_and_an_issue_page(folder, scheme):
    from axe_playwright_python.sync_playwright import Axe

    from helpers.browser import chromium

    run_publish(folder)
    with chromium() as browser:
        page = browser.new_context(color_scheme=scheme).new_page()
        for name in ("index.html", "issues/2026-W14/index.html"):
            page.goto((folder / "site" / name).as_uri())
            results = Axe().run(page, options=WCAG_AND_LANDMARKS)
            assert results.violations_count == 0, (name, results.generate_report())
