"""Unit tests of parse.py: ids, canonical URLs, dates, sanitizing and summaries of single documents."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from digest.feeds.parse import parse_feed, sanitize_html, summarize
from digest.urls import clean_url

FEED = "https://blog.example.com/feed.xml"


def rss_item(**fields: str) -> str:
    return "<item>" + "".join(f"<{key}>{value}</{key}>" for key, value in fields.items()) + "</item>"


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Blog</title>'
        f"<link>https://blog.example.com/</link>{''.join(items)}</channel></rss>"
    ).encode()


def escaped(fragment: str) -> str:
    return fragment.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_post(item: str):
    parsed = parse_feed(rss(item), FEED)
    assert parsed.error is None and len(parsed.posts) == 1
    return parsed.posts[0]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://Blog.Example.com/a/?utm_source=rss&utm_medium=feed", "https://blog.example.com/a/"),
        ("https://blog.example.com/a/?id=3&fbclid=x&gclid=y#comments", "https://blog.example.com/a/?id=3#comments"),
        ("https://blog.example.com/a/?ref=newsletter&source=rss----5517fd7b58a6---4", "https://blog.example.com/a/"),
        ("https://blog.example.com/a/#utm_source=feed", "https://blog.example.com/a/"),
        ("http://x.example.com/?q=a+b%2Bc&t=%E9", "http://x.example.com/?q=a+b%2Bc&t=%E9"),  # the query as written
        ("http://x.example.com/#!/news?id=42", "http://x.example.com/#!/news?id=42"),  # an app's route, not a tracker
        ("http://x.example.com/p#tk.rss_all", "http://x.example.com/p"),
        ("https://github.com/a/b/tree?ref=main", "https://github.com/a/b/tree?ref=main"),  # a branch on a code host
        ("http://x.example.com/f?source=main.py&ref=hn", "http://x.example.com/f?source=main.py"),
        ("https://blog.example.com:443/a", "https://blog.example.com/a"),
        ("http://blog.example.com:8080/a?mc_cid=1&page=2", "http://blog.example.com:8080/a?page=2"),
        ("/relative/post/", "https://blog.example.com/relative/post/"),
        ("https://blog.example.com", "https://blog.example.com/"),
        ("javascript:alert(1)", None),
        ("mailto:someone@example.com", None),
        ("cocoa-dom:tcmportmapper", None),
        ("", None),
    ],
)
def test_clean_url_is_absolute_http_without_tracking(url, expected):
    assert clean_url(url, FEED) == expected


def test_id_is_stable_and_comes_from_guid_then_link_then_content():
    with_guid = one_post(rss_item(title="A", link="https://blog.example.com/a/", guid="urn:a"))
    moved = one_post(rss_item(title="A", link="https://blog.example.com/moved/", guid="urn:a"))
    assert with_guid.id == moved.id  # the guid wins over the link
    by_link = one_post(rss_item(title="B", link="https://blog.example.com/b/?utm_source=x"))
    same_link = one_post(rss_item(title="B, renamed", link="https://blog.example.com/b/"))
    assert by_link.id == same_link.id and by_link.canonical_url == "https://blog.example.com/b/"
    first = one_post(rss_item(title="C", description="Body"))
    assert first.id == one_post(rss_item(title="C", description="Body")).id
    assert first.id != one_post(rss_item(title="C", description="Other body")).id
    other_feed = parse_feed(rss(rss_item(title="A", guid="urn:a")), "https://other.example.org/rss").posts[0]
    assert other_feed.id != with_guid.id  # a guid only means something within its own feed


def test_a_guid_repeated_inside_one_document_gives_one_post():
    item = rss_item(title="Twice", link="https://blog.example.com/t/", guid="g1")
    assert len(parse_feed(rss(item, item), FEED).posts) == 1


def test_dates_come_from_published_then_updated_then_nothing():
    published = one_post(rss_item(title="P", guid="p", pubDate="Sun, 05 Apr 2026 23:30:00 +0100"))
    assert published.published_at == datetime(2026, 4, 5, 22, 30, tzinfo=UTC)
    atom = (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
        b"<entry><title>U</title><id>u</id><updated>2026-04-01T10:00:00Z</updated></entry></feed>"
    )
    assert parse_feed(atom, FEED).posts[0].published_at == datetime(2026, 4, 1, 10, tzinfo=UTC)
    assert one_post(rss_item(title="N", guid="n")).published_at is None


def test_sanitizing_keeps_text_and_safe_links_and_drops_everything_active():
    dirty = (
        '<p onclick="x()" style="color:red">Hello <a href="/next/" onmouseover="y()">next</a> '
        '<a href="javascript:alert(1)">bad</a> <a href="#fn1">1</a></p>'
        '<script>alert("x")</script><iframe src="https://evil.example/"></iframe>'
        '<form action="https://evil.example/"><input name="q"></form><style>p{}</style>'
        '<img src="https://track.example.com/open.gif" width="1" height="1">'
        '<img src="https://feeds.feedburner.com/~r/blog/~4/abc">'
        '<img src="/images/chart.png" alt="Chart">'
    )
    clean = sanitize_html(dirty, base="https://blog.example.com/posts/1/")
    for banned in (
        "<script",
        "alert",
        "<iframe",
        "<form",
        "<input",
        "<style",
        "onclick",
        "onmouseover",
        "style=",
        "javascript:",
        "open.gif",
        "feedburner",
        'href="#',
    ):
        assert banned not in clean
    assert '<a href="https://blog.example.com/next/"' in clean
    assert '<img src="https://blog.example.com/images/chart.png" alt="Chart"' in clean
    assert "Hello" in clean


def test_summary_is_plain_text_of_one_or_two_sentences_under_the_limit():
    body = (
        "<h1>Django 6.0 released</h1><p>The Django team is happy to announce <b>Django 6.0</b>. "
        "It brings background tasks. It also adds template partials. And much more besides.</p>"
    )
    post = one_post(rss_item(title="Django 6.0 released", guid="r", description=escaped(body)))
    assert post.summary == "The Django team is happy to announce Django 6.0. It brings background tasks."
    long_sentence = "word " * 120
    cut = summarize(long_sentence.strip())
    assert len(cut) <= 300 and cut.endswith("…") and not cut.endswith(" …") and "wor…" not in cut


@pytest.mark.parametrize(
    "footer",
    [
        "<p>The post Short post appeared first on Example Blog.</p>",  # WordPress
        "<p><small>9 posts - 6 participants</small></p>"
        '<p><a href="https://forum.example.com/t/1">Read full topic</a></p>',
    ],
)
def test_generator_boilerplate_is_not_part_of_the_summary(footer):
    post = one_post(rss_item(title="Short", guid="s", description=escaped("<p>Short post.</p>" + footer)))
    assert post.summary == "Short post."


def test_relative_links_resolve_against_xml_base_else_the_posts_own_address():
    atom = (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>Aggregator</title>'
        b'<entry><title>A</title><id>a</id><link href="https://other.example.net/posts/a/"/>'
        b'<content type="html">&lt;a href="/next/"&gt;next&lt;/a&gt;</content></entry>'
        b'<entry xml:base="https://based.example.org/blog/"><title>B</title><id>b</id>'
        b'<link href="https://other.example.net/posts/b/"/>'
        b'<content type="html">&lt;img src="img/b.png" alt="b"&gt;</content></entry></feed>'
    )
    first, second = parse_feed(atom, "https://aggregator.example.com/atom.xml").posts
    assert 'href="https://other.example.net/next/"' in first.content_html
    assert 'src="https://based.example.org/blog/img/b.png"' in second.content_html


def test_a_post_without_title_takes_one_from_its_text_and_a_post_without_link_keeps_no_url():
    post = one_post(
        rss_item(description="Just shipped a small fix to django-upgrade. Try it!", guid="tag:blog.example.com,2026:42")
    )
    assert post.title == "Just shipped a small fix to django-upgrade." and post.canonical_url is None
    assert post.summary == "Try it!"  # the sentence that became the title is not repeated
    micro = one_post(rss_item(description="A link-blog post that is one sentence.", guid="m"))
    assert micro.title == "A link-blog post that is one sentence." and micro.summary == ""


def test_an_entry_linking_back_to_the_feed_itself_has_no_link_of_its_own():
    post = one_post(rss_item(title="Empty link", guid="e", link=FEED))
    assert post.canonical_url is None


def test_titles_are_plain_text_with_entities_decoded():
    post = one_post(rss_item(title="Q&amp;A: &lt;b&gt;forms&lt;/b&gt; &amp;#8217;", guid="q"))
    assert post.title.startswith("Q&A: forms")


def test_html_page_and_broken_xml_are_reported_not_raised():
    page = parse_feed(b"<!doctype html><html><body>Hi</body></html>", FEED, {"Content-Type": "text/html"})
    assert page.error == "not a feed: got an HTML page" and page.posts == []
    broken = parse_feed(b'<?xml version="1.0"?><rss version="2.0"><channel><item><title>a &', FEED)
    assert broken.error.startswith("not well-formed XML: line 1") and broken.posts == []
    empty = parse_feed(b"", FEED)
    assert empty.error and empty.posts == []


def test_posts_recovered_from_a_slightly_broken_feed_are_kept_with_a_warning():
    body = rss(rss_item(title="Fish & chips", link="https://blog.example.com/fish/", guid="f"))
    parsed = parse_feed(body, FEED)
    assert parsed.error is None and "not well-formed" in parsed.warning
    assert [post.title for post in parsed.posts] == ["Fish & chips"]


def test_undeclared_encoding_is_taken_from_the_http_header():
    body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        "<item><title>Caf\xe9 cr\xe8me</title><guid>c</guid></item></channel></rss>"
    ).encode("latin-1")
    parsed = parse_feed(body, FEED, {"Content-Type": "application/rss+xml; charset=iso-8859-1"})
    assert parsed.posts[0].title == "Café crème"


def feed_bytes(title: str, declaration: str = "") -> str:
    return (
        f'<?xml version="1.0"{declaration}?><rss version="2.0"><channel><title>t</title>'
        f"<item><title>{title}</title><guid>c</guid></item></channel></rss>"
    )


def test_a_stray_byte_in_a_utf8_feed_costs_that_byte_not_the_whole_feed(monkeypatch):
    import feedparser.encodings

    class NoGuessing:  # the encoding is decided without chardet (28 MB in each parse process, and wrong here)
        @staticmethod
        def detect(_data):
            raise AssertionError("chardet consulted")

    monkeypatch.setattr(feedparser.encodings, "chardet", NoGuessing)
    items = rss_item(title="Café naïve — EspaÑa ÓolÉÔ Ü", guid="a") + rss_item(title="Résumé d’été", guid="b")
    stray = {"Ñ": b"\xf1", "Ó": b"\x93", "É": b"\xe9", "Ô": b"\x94", "Ü": b"\x81"}  # Latin-1 and Windows-1252
    body = rss(items)
    for letter, byte in stray.items():
        body = body.replace(letter.encode(), byte)
    parsed = parse_feed(body, FEED)
    assert parsed.error is None
    assert [post.title for post in parsed.posts] == ["Café naïve — España “olé”", "Résumé d’été"]


@pytest.mark.parametrize(
    "body, headers",
    [  # UTF-8 whatever the header or the declaration says: no text in a legacy encoding is valid UTF-8
        (feed_bytes("Euro € and Café", ' encoding="windows-1252"').encode(), {}),
        (feed_bytes("Euro € and Café").encode(), {"Content-Type": "application/rss+xml; charset=us-ascii"}),
        # what they declare, when it reads every byte
        (feed_bytes("Euro € and Café", ' encoding="windows-1252"').encode("windows-1252"), {}),
        (feed_bytes("Euro € and Café").encode("windows-1252"), {"Content-Type": "text/xml; charset=cp1252"}),
        # undeclared, and nothing like UTF-8 (one "é\xa0»" happens to be a valid UTF-8 character): Windows-1252
        (feed_bytes("Euro € and Café, « doué\xa0» à dire").encode("windows-1252"), {}),
        (feed_bytes("Euro € and Café", ' encoding="utf-8"').encode("windows-1252"), {"Content-Type": "text/xml"}),
    ],
)
def test_the_encoding_is_the_one_that_reads_the_document(body, headers):
    title = parse_feed(body, FEED, headers).posts[0].title
    assert title.startswith("Euro € and Café")


@pytest.mark.parametrize(
    "body, headers, title",
    [  # a UTF-8 byte order mark says UTF-8, whatever the header: a stray byte costs that byte
        (b"\xef\xbb\xbf" + feed_bytes("Caf\xe9 opens").encode("latin-1"), {}, "Café opens"),
        (b"\xef\xbb\xbf" + feed_bytes("Café, x\xe9").encode("utf-8").replace(b"\xc3\xa9,", b"\xe9,"), {}, "Café, xé"),
        # a 7-bit encoding's bytes are ASCII, so valid UTF-8 too: what it declares wins
        (feed_bytes("日本語のタイトル", ' encoding="iso-2022-jp"').encode("iso2022_jp"), {}, "日本語のタイトル"),
        # a charset parameter written with spaces
        (feed_bytes("Привет").encode("koi8-r"), {"Content-Type": "application/xml; charset = koi8-r"}, "Привет"),
        # one UTF-8 character and one stray byte: UTF-8
        (feed_bytes("Café España").encode().replace("ñ".encode(), b"\xf1"), {}, "Café España"),
        # a codec that is no character set, declared over a stray byte: never an exception
        (feed_bytes("caf\xe9", ' encoding="idna"').encode("latin-1"), {}, "café"),
    ],
)
def test_what_a_document_says_of_its_encoding_is_read_where_it_can_be_trusted(body, headers, title):
    parsed = parse_feed(body, FEED, headers)
    assert parsed.error is None and parsed.posts[0].title == title


def test_a_declared_legacy_encoding_is_kept_and_what_it_cannot_read_is_marked():
    body = feed_bytes("Привет, мир", ' encoding="koi8-r"').encode("koi8-r")
    assert parse_feed(body, FEED).posts[0].title == "Привет, мир"
    body = (
        feed_bytes("日本語のフィード", ' encoding="shift_jis"')
        .encode("shift_jis")
        .replace("の".encode("shift_jis"), b"\xa0")
    )
    assert parse_feed(body, FEED).posts[0].title == "日本語\ufffdフィード"


@pytest.mark.parametrize("href", ["//[x", "//a]b[/", "//[x/path?q=1"])
def test_a_hostile_href_is_dropped_silently(capfd, monkeypatch, href):
    unraisable = []  # nh3 reports an exception from the callback as "unraisable": printed to stderr outside pytest
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    clean = sanitize_html(f'<p><a href="{href}">bad</a> <a href="/ok/">ok</a></p>', base="https://blog.example.com/p/")
    assert "[" not in clean and "bad</a>" in clean  # the text stays, the link goes
    assert '<a href="https://blog.example.com/ok/"' in clean
    assert unraisable == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize(
    "author",
    [
        "jane@studio.design (Jane Doe)",
        "Jane Doe &lt;jane@x.design&gt;",
        "jane@x.photography (Jane Doe)",
        "jane@x.technology (Jane Doe)",
        "jane@x.com (Jane Doe)",
        "Jane Doe &lt;jane@x.com&gt;",
        "Jane Doe &lt;mailto:jane@x.museum&gt;",
        "Jane Doe",
    ],
)
def test_the_byline_is_the_name_whatever_the_top_level_domain_of_the_address_beside_it(author):
    """feedparser's address pattern ends a top-level domain at four letters: "gn (Jane Doe" was the byline."""
    assert one_post(rss_item(title="t", link="https://blog.example.com/a", author=author)).author == "Jane Doe"


def test_a_byline_that_is_only_an_address_is_none():
    assert one_post(rss_item(title="t", link="https://blog.example.com/a", author="jane@x.design")).author is None
