"""The render stage: Draft -> HTML (Jinja2 -> MJML -> premailer) and text, and the per-subscriber marks."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from datetime import date
from html.parser import HTMLParser

import pytest

from digest.issue.render import personalize, render_issue
from digest.models import (
    SUBSCRIBER_NAME_MARK,
    UNSUBSCRIBE_URL_MARK,
    Draft,
    DraftItem,
    DraftSection,
    RenderedIssue,
    Sponsor,
)
from digest.settings.config import Newsletter

SECTION_TITLES = ("News", "Articles", "Videos", "Forum", "Projects", "Jobs")
SUMMARY = (
    "A look at how the new release changes the ORM, with benchmarks on PostgreSQL and SQLite, "
    "migration notes for projects on older versions, and a few pitfalls worth knowing before upgrading "
    "production."
)
NEWSLETTER = Newsletter(
    title="Django Digest",
    from_address="Django Digest <digest@example.com>",
    site_url="https://digest.example.com/",
    postal_address="1 Example Street\nLawrence, KS 66044",
    reason="You subscribed to Django Digest on digest.example.com.",
)
SUBSCRIBER_URL = "https://digest.example.com/unsubscribe?token=abc&email=ada%40example.com"


def make_draft(n_items: int = 12, n_sections: int = 6, **fields) -> Draft:
    sections = [
        DraftSection(title=SECTION_TITLES[index % len(SECTION_TITLES)] + ("" if index < 6 else f" {index}"))
        for index in range(n_sections)
    ]
    for number in range(n_items):
        sections[number % n_sections].items.append(
            DraftItem(
                title=f"Item {number}: what changed in Django's ORM this week, and why it matters",
                url=f"https://blog{number % 7}.example.org/2026/04/item-{number}-what-changed-in-the-orm-this-week/",
                summary=SUMMARY,
                source=f"blog{number % 7}.example.org",
                author=None if number % 3 == 0 else f"Author {number}",
                published=date(2026, 4, 1),
            )
        )
    values = {
        "issue": "2026-W14",
        "week_start": date(2026, 3, 30),
        "week_end": date(2026, 4, 5),
        "subject": "Django Digest: Mar 30 – Apr 5, 2026",
        "intro": "Welcome to the issue.\n\nDjangoCon Europe is next week.",
        "sections": sections,
    }
    values.update(fields)
    return Draft(**values)


class Page(HTMLParser):
    """Tags with their attributes, <style> texts in <head>, and the text of each element kind."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.head_styles: list[str] = []
        self.body_styles = 0
        self._stack: list[tuple[str, dict]] = []
        self._in_head = False
        self.texts: list[tuple[str, dict, str]] = []  # (innermost tag, its attrs, text)
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "head":
            self._in_head = True
        if tag not in ("br", "meta", "img", "hr", "link", "input"):
            self._stack.append((tag, attributes))

    def handle_endtag(self, tag):
        if tag == "head":
            self._in_head = False
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == tag:
                del self._stack[index:]
                break

    def handle_data(self, data):
        if not self._stack:
            return
        tag, attrs = self._stack[-1]
        if tag == "style":
            if self._in_head:
                self.head_styles.append(data)
            else:
                self.body_styles += 1
        self.texts.append((tag, attrs, data))

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]

    def links(self) -> list[tuple[str, str]]:
        """The href of every <a>, in order."""
        return [attrs.get("href") for name, attrs in self.tags if name == "a"]

    def text_of(self, tag: str) -> list[str]:
        return [text for name, _, text in self.texts if name == tag]


@pytest.fixture(scope="module")
def big() -> tuple[Draft, RenderedIssue]:
    draft = make_draft(
        60,
        6,
        sponsor=Sponsor(
            title="Acme Hosting", url="https://acme.example.com/?ref=digest", text="Deploy Django in minutes."
        ),
    )
    return draft, render_issue(draft, NEWSLETTER)


def test_a_60_item_issue_stays_under_gmail_clipping(big):
    draft, rendered = big
    assert len(draft.items) == 60
    size = len(rendered.html.encode("utf-8"))
    assert size < 100_000, size
    assert rendered.subject == draft.subject


def test_every_item_is_in_the_html_and_the_text(big):
    draft, rendered = big
    page = Page(rendered.html)
    hrefs, link_texts, paragraphs = page.links(), page.text_of("a"), page.text_of("p")
    for item in draft.items:
        assert item.url in hrefs and item.url in rendered.text
        assert item.title in link_texts and item.title in rendered.text
        assert item.summary in paragraphs
        meta = f"{item.source} · {item.author}" if item.author else item.source
        assert meta in paragraphs and f"({meta})" in rendered.text


def test_html_lang_follows_the_newsletter_language():
    for language in ("en", "fr"):
        html = render_issue(make_draft(3, 1), replace(NEWSLETTER, language=language)).html
        assert [attrs.get("lang") for attrs in Page(html).all("html")] == [language]
        assert re.match(r"<!doctype html>", html, re.IGNORECASE)


def test_no_script_no_web_fonts_and_images_have_alt(big):
    _, rendered = big
    page = Page(rendered.html)
    assert not page.all("script")
    assert "<script" not in rendered.html.lower()
    assert "fonts.googleapis" not in rendered.html and "@import" not in rendered.html
    assert not [attrs for attrs in page.all("link") if "stylesheet" in (attrs.get("rel") or "")]
    for image in page.all("img"):
        assert image.get("alt") is not None


def test_every_href_is_absolute_or_the_unsubscribe_mark(big):
    _, rendered = big
    hrefs = Page(rendered.html).links()
    assert hrefs
    for href in hrefs:
        assert href == UNSUBSCRIBE_URL_MARK or re.match(r"(https?://[^/\s]+|mailto:)", href), href
    assert hrefs.count(UNSUBSCRIBE_URL_MARK) == 1


def test_feed_text_is_escaped():
    draft = make_draft(2, 1)
    draft.sections[0].items[0].title = "<script>alert(1)</script>"
    draft.sections[0].items[0].summary = 'Say "hi" & <b>bye</b>'
    html = render_issue(draft, NEWSLETTER).html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower() and "<b>" not in html
    page = Page(html)
    assert not page.all("script")
    assert "<script>alert(1)</script>" in page.text_of("a")
    assert 'Say "hi" & <b>bye</b>' in page.text_of("p")


def test_a_javascript_url_is_not_a_link():
    draft = make_draft(2, 1)
    item = draft.sections[0].items[0]
    item.title, item.url = "Click me", "javascript:alert(document.cookie)"
    rendered = render_issue(draft, NEWSLETTER)
    page = Page(rendered.html)
    assert "javascript" not in rendered.html.lower() and "javascript" not in rendered.text.lower()
    assert "Click me" not in page.text_of("a")
    assert "Click me" in page.text_of("h3")
    assert draft.sections[0].items[1].url in page.links()


def test_head_styles_are_small_and_keep_the_media_queries(big):
    _, rendered = big
    page = Page(rendered.html)
    total = sum(len(style.encode("utf-8")) for style in page.head_styles)
    assert 0 < total < 16 * 1024, total
    assert page.body_styles == 0
    css = "".join(page.head_styles)
    assert "prefers-color-scheme: dark" in css
    assert "min-width" in css and "!important" in css  # MJML's responsive column rule kept its !important
    # premailer inlined the item styles: every item title carries a style attribute
    for attrs in page.all("h3"):
        assert "font-size" in (attrs.get("style") or "")


def test_text_version_after_personalize(big):
    draft, rendered = big
    text = personalize(rendered.text, unsubscribe_url=SUBSCRIBER_URL, name="Ada", html=False)
    for item in draft.items:
        assert item.url in text
    assert f"Unsubscribe: {SUBSCRIBER_URL}" in text
    assert "%%DIGEST_" not in text
    assert not re.search(r"<[a-zA-Z/!]|&(amp|lt|gt|quot|#\d+);", text)  # no HTML in the text part
    assert "Acme Hosting" in text and "https://acme.example.com/?ref=digest" in text
    assert "1 Example Street" in text and NEWSLETTER.reason in text
    for line in text.splitlines():
        assert len(line) <= 72 or "://" in line or " " not in line.strip(), line  # prose wrapped, URLs whole
    positions = [text.index(f"\n{title}\n{'=' * len(title)}\n") for title in SECTION_TITLES]
    assert positions == sorted(positions)


def test_personalize_replaces_marks_and_escapes_for_html(big):
    _, rendered = big
    url = 'https://example.com/u?a=1&b="2"<x>'
    assert personalize(UNSUBSCRIBE_URL_MARK, unsubscribe_url=url, name="", html=False) == url
    assert (
        personalize(UNSUBSCRIBE_URL_MARK, unsubscribe_url=url, name="", html=True)
        == "https://example.com/u?a=1&amp;b=&quot;2&quot;&lt;x&gt;"
    )
    assert personalize(SUBSCRIBER_NAME_MARK, unsubscribe_url=url, name="Ada <&>", html=True) == "Ada &lt;&amp;&gt;"
    assert personalize(SUBSCRIBER_NAME_MARK, unsubscribe_url=url, name="Ada <&>", html=False) == "Ada <&>"
    # one pass: a value holding a mark is not substituted again
    assert (
        personalize(
            UNSUBSCRIBE_URL_MARK + SUBSCRIBER_NAME_MARK, unsubscribe_url=SUBSCRIBER_NAME_MARK, name="Ada", html=False
        )
        == SUBSCRIBER_NAME_MARK + "Ada"
    )
    html = personalize(rendered.html, unsubscribe_url=SUBSCRIBER_URL, name="Ada", html=True)
    assert "%%DIGEST_" not in html
    assert SUBSCRIBER_URL in Page(html).links()
    assert SUBSCRIBER_URL.replace("&", "&amp;") in html


def test_feed_text_cannot_produce_the_marks():
    draft = make_draft(
        3,
        1,
        intro=f"Intro {UNSUBSCRIBE_URL_MARK}",
        preheader=f"Pre {SUBSCRIBER_NAME_MARK}",
        sponsor=Sponsor(title=f"S {UNSUBSCRIBE_URL_MARK}", url="https://s.example.com/", text=SUBSCRIBER_NAME_MARK),
    )
    item = draft.sections[0].items[0]
    item.title = f"Trap {UNSUBSCRIBE_URL_MARK} here"
    item.summary = f"%%DIG%%DIGEST_EST_UNSUBSCRIBE_URL%% {SUBSCRIBER_NAME_MARK}"
    item.source, item.author = UNSUBSCRIBE_URL_MARK, SUBSCRIBER_NAME_MARK
    original = copy.deepcopy(draft)
    rendered = render_issue(draft, NEWSLETTER)
    assert draft == original  # the caller's draft is not changed
    assert rendered.html.count("%%DIGEST_") == 1 and rendered.text.count("%%DIGEST_") == 1
    assert SUBSCRIBER_NAME_MARK not in rendered.html + rendered.text + rendered.preheader
    html = personalize(rendered.html, unsubscribe_url=SUBSCRIBER_URL, name="Ada", html=True)
    text = personalize(rendered.text, unsubscribe_url=SUBSCRIBER_URL, name="Ada", html=False)
    assert html.count(SUBSCRIBER_URL.replace("&", "&amp;")) == 1 and text.count(SUBSCRIBER_URL) == 1
    assert "Trap UNSUBSCRIBE_URL%% here" in Page(html).text_of("a")  # the prefix went, nothing came in


def hidden_preheader(html: str) -> str:
    match = re.search(
        r'<body[^>]*>\s*(?:<div [^>]*role="article"[^>]*>)?\s*<div style="([^"]*)">(.*?)</div>', html, re.DOTALL
    )
    assert match, "no preheader div at the start of the body"
    style = match.group(1).replace(" ", "")
    assert "display:none" in style and "max-height:0" in style and "overflow:hidden" in style
    return match.group(2)


def test_preheader_is_hidden_and_falls_back():
    rendered = render_issue(make_draft(3, 1, preheader="Async ORM lands & more"), NEWSLETTER)
    assert rendered.preheader == "Async ORM lands & more"
    assert hidden_preheader(rendered.html).startswith("Async ORM lands &amp; more")
    from_intro = render_issue(make_draft(3, 1), NEWSLETTER)
    assert from_intro.preheader.startswith("Welcome to the issue.")
    assert hidden_preheader(from_intro.html).startswith("Welcome to the issue.")
    no_intro = make_draft(3, 1, intro="")
    from_titles = render_issue(no_intro, NEWSLETTER)
    assert from_titles.preheader.startswith(no_intro.items[0].title + " · " + no_intro.items[1].title[:20])
    assert 0 < len(from_titles.preheader) <= 150


def test_color_scheme_meta(big):
    _, rendered = big
    metas = {attrs.get("name"): attrs.get("content") for attrs in Page(rendered.html).all("meta")}
    assert metas.get("color-scheme") == "light dark"
    assert metas.get("supported-color-schemes") == "light dark"


def test_view_in_browser_only_with_an_archive_url():
    draft = make_draft(3, 1)
    without = render_issue(draft, NEWSLETTER)
    assert "View in browser" not in without.html and "View in browser" not in without.text
    archive = replace(NEWSLETTER, archive_url="https://digest.example.com/issues/{issue}/")
    with_link = render_issue(draft, archive)
    url = "https://digest.example.com/issues/2026-W14/"
    page = Page(with_link.html)
    assert url in page.links() and "View in browser" in page.text_of("a")
    assert url in with_link.text


def test_sponsor_block_only_when_present(big):
    _, rendered = big
    page = Page(rendered.html)
    assert "https://acme.example.com/?ref=digest" in page.links()
    assert "Acme Hosting" in page.text_of("a") and "Sponsored" in page.text_of("p")
    plain = render_issue(make_draft(3, 1), NEWSLETTER)
    assert "Sponsored" not in plain.html and "SPONSORED" not in plain.text


def test_sections_follow_the_draft_order():
    draft = make_draft(8, 4)
    draft.sections.reverse()
    rendered = render_issue(draft, NEWSLETTER)
    headings = Page(rendered.html).text_of("h2")
    assert headings == [section.title for section in draft.sections]
    first_urls = [section.items[0].url for section in draft.sections]
    assert [rendered.html.index(url) for url in first_urls] == sorted(rendered.html.index(url) for url in first_urls)
    assert [rendered.text.index(url) for url in first_urls] == sorted(rendered.text.index(url) for url in first_urls)


def test_layout_tables_have_role_presentation(big):
    _, rendered = big
    tables = Page(rendered.html).all("table")
    assert tables
    assert all(attrs.get("role") == "presentation" for attrs in tables)


def test_header_footer_and_width(big):
    _, rendered = big
    page = Page(rendered.html)
    assert "Mar 30 – Apr 5, 2026" in rendered.html and "Mar 30 – Apr 5, 2026" in rendered.text
    assert "1 Example Street" in rendered.html and NEWSLETTER.reason in rendered.html
    assert "https://digest.example.com/" in page.links()
    assert "max-width:600px" in rendered.html
    assert "overflow-wrap:anywhere" in rendered.html.replace(" ", "")  # long words and URLs wrap at 375 px
    assert "Unsubscribe" in page.text_of("a")


def test_dates_across_a_year():
    draft = make_draft(1, 1, issue="2026-W01", week_start=date(2025, 12, 29), week_end=date(2026, 1, 4))
    assert "Dec 29, 2025 – Jan 4, 2026" in render_issue(draft, NEWSLETTER).text


@pytest.mark.parametrize(
    ("heading", "parts"),
    [
        ("📰 News", ("📰", "News")),
        ("🎟️ Events", ("🎟️", "Events")),
        ("👩‍💻 Jobs", ("👩‍💻", "Jobs")),
        ("News", ("", "News")),
        ("📰", ("", "📰")),
        ("C++ news", ("", "C++ news")),
    ],
)
def test_a_headings_leading_emoji_is_told_apart_from_its_words(heading, parts):
    from digest.issue.render import split_emoji

    assert split_emoji(heading) == parts


def test_an_emoji_heading_is_shown_and_hidden_from_screen_readers():
    draft = make_draft(
        subject="Digest: {lead}",
        sections=[
            DraftSection(
                title="📰 News",
                items=[DraftItem(title="First story", url="https://a.example/1"), DraftItem(title="Second")],
            )
        ],
    )
    rendered = render_issue(draft, Newsletter())
    assert '<span aria-hidden="true">📰</span> News</h2>' in rendered.html
    assert "\n📰 News\n=======\n" in rendered.text
    assert rendered.subject == "Digest: First story"
    draft.sections[0].items.reverse()  # the editor put another story first
    assert render_issue(draft, Newsletter()).subject == "Digest: Second"


def test_a_new_drafts_subject_counts_the_issues_sent_before_it(tmp_path):
    from digest import load_config, store
    from digest.jobs import subject_for

    (tmp_path / "feeds.yaml").write_text(
        "newsletter:\n  title: Digest\n  subject: '{title} #{number}: {lead}'\nfeeds:\n  - url: https://a.example/f\n",
        encoding="utf-8",
    )
    config = load_config(tmp_path / "feeds.yaml")
    db = store.open_db(tmp_path / "digest.db")
    assert subject_for(config, db, "2026-W14") == "Digest #1: {lead}"
    db.execute("INSERT INTO issues (id, status, created_at) VALUES ('2026-W13', 'sent', '2026-03-27T00:00:00+00:00')")
    db.execute("INSERT INTO issues (id, status, created_at) VALUES ('2026-W12', 'draft', '2026-03-20T00:00:00+00:00')")
    assert subject_for(config, db, "2026-W14") == "Digest #2: {lead}"


def test_the_editors_markdown_is_rendered_safe_in_html_and_readable_in_text():
    draft = make_draft(
        subject="Digest",
        intro=(
            "Welcome! **Django 6.0** is out: read [the notes](https://docs.example.com/6.0/).\n\n"
            "- one\n- two\n\n<script>alert(1)</script> [bad](javascript:alert(1)) <b>raw</b>"
        ),
        markdown=True,
        sections=[
            DraftSection(
                title="News",
                items=[DraftItem(title="Post", url="https://a.example/1", summary="Uses `async` *views*.")],
            )
        ],
    )
    rendered = render_issue(draft, Newsletter())
    assert "<strong>Django 6.0</strong>" in rendered.html
    assert '<a href="https://docs.example.com/6.0/"' in rendered.html and "<li>one</li>" in rendered.html
    assert "<script>alert" not in rendered.html and 'href="javascript' not in rendered.html
    assert "<b>raw</b>" not in rendered.html and "&lt;b&gt;raw&lt;/b&gt;" in rendered.html
    relative = render_issue(replace(draft, intro="[a](/docs) [b](//evil.example/x)"), Newsletter()).html
    assert 'href="/docs"' not in relative and 'href="//evil.example/x"' not in relative
    assert re.search(r"<a[^>]*>a</a> <a[^>]*>b</a>", relative) and not re.search(r"<a [^>]*href[^>]*>a</a>", relative)
    assert "<code>async</code>" in rendered.html and "<em>views</em>" in rendered.html
    text = rendered.text
    assert "Django 6.0 is out: read the notes [1]." in text and "[1] https://docs.example.com/6.0/" in text
    assert "- one\n- two" in text and "**" not in text and "Uses async views." in text


def test_a_feeds_summary_is_written_into_the_draft_so_that_it_shows_as_it_is():
    from digest.issue.prose import escape_markdown, render_prose

    for plain in ["*Stars* and snake_case", "1. Not a list", "- not a bullet", "[not](a link) <b>"]:
        shown = render_prose(escape_markdown(plain))
        assert shown.text == plain, plain


def test_a_draft_written_before_markdown_renders_as_the_plain_text_it_was():
    draft = make_draft(
        subject="Digest",
        intro="Use *args and **kwargs in __init__, not [x](https://y.example/).",
        sections=[DraftSection(title="News", items=[DraftItem(title="Post", summary="snake_case __str__")])],
    )
    rendered = render_issue(draft, Newsletter())
    assert (
        "<em>" not in rendered.html
        and "<strong>" not in rendered.html
        and 'href="https://y.example/"' not in rendered.html
    )
    assert "Use *args and **kwargs in __init__, not [x](https://y.example/)." in rendered.text
    assert "snake_case __str__" in rendered.text
