"""Property-based tests (Hypothesis): whatever bytes, XML or YAML comes in, only the documented errors come out.

parse_feed never raises; load_config and parse_draft raise ConfigError (one line: file, line, field) and
nothing else; the text helpers never raise and leave no invisible control behind.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest import load_config
from digest.errors import ConfigError
from digest.feeds.parse import parse_feed, sanitize_html
from digest.issue.draft import parse_draft
from digest.text import one_line, plain_text, sanitized_text, strip_invisible
from digest.urls import clean_url, url_key

FEED = "https://blog.example.com/feed.xml"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that reaches into the corners: controls, bidi, joiners, surrogate-adjacent, tags, CJK, RTL, emoji.
nasty_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from("\u202e\u2066\u200b\u200c\u200d\ufeff\U000e0041\U0001f3f4&<>\"'\x00\x85"),
    ),
    max_size=60,
)
references = st.sampled_from(
    [
        "&#xD800;",
        "&#x110000;",
        "&#99999999999;",
        "&#0;",
        "&amp;#xDFFF;",
        "&#x1F600;",
        "&lt;",
        "&nbsp;",
        "&bogus;",
        "&#",
        "&#x;",
    ]
)


def _xml_text(draw) -> str:
    parts = draw(st.lists(st.one_of(nasty_text.map(_escape), references), max_size=5))
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def feeds(draw) -> bytes:
    """RSS or Atom documents, well-formed or not, with hostile text in every field."""
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        fields = {
            tag: _xml_text(draw)
            for tag in draw(
                st.lists(st.sampled_from(["title", "link", "guid", "description", "pubDate", "author"]), unique=True)
            )
        }
        if draw(st.booleans()):
            fields["link"] = draw(
                st.sampled_from(
                    [
                        "https://x.example.com/a#b",
                        "/relative",
                        "javascript:x()",
                        "",
                        "http://[::1",
                        "https://x.example.com/?utm_source=a&id=1",
                    ]
                )
            )
        entries.append("<item>" + "".join(f"<{tag}>{value}</{tag}>" for tag, value in fields.items()) + "</item>")
    body = f'<rss version="2.0"><channel><title>{_xml_text(draw)}</title>{"".join(entries)}</channel></rss>'
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # cut anywhere: not well-formed
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "iso-8859-1", "latin-1-declared-utf-8"]))
    if encoding == "latin-1-declared-utf-8":
        return ('<?xml version="1.0" encoding="utf-8"?>' + body).encode("latin-1", "replace")
    return (f'<?xml version="1.0" encoding="{encoding}"?>' + body).encode(encoding, "replace")


@SETTINGS
@given(st.binary(max_size=2000))
def test_parse_feed_never_raises_on_random_bytes(content):
    parsed = parse_feed(content, FEED)
    assert parsed.error is not None or isinstance(parsed.posts, list)


@SETTINGS
@given(feeds())
def test_parse_feed_never_raises_on_hostile_feeds_and_keeps_its_promises(content):
    parsed = parse_feed(content, FEED, {"Content-Type": "application/rss+xml"})
    for post in parsed.posts:
        assert len(post.title) <= 200 and len(post.summary) <= 300 and post.title
        assert strip_invisible(post.title) == post.title and "\n" not in post.title
        assert post.canonical_url is None or post.canonical_url.startswith(("http://", "https://"))
        assert all(not 0xD800 <= ord(char) <= 0xDFFF for char in post.title + post.summary + post.content_html)
    assert len({post.id for post in parsed.posts}) == len(parsed.posts)


yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-10, 10**6),
        st.floats(allow_nan=True),
        nasty_text,
        st.sampled_from(["News", "https://x.example.com/feed", "{token}", "2026-W14", "Europe/London"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "newsletter",
                    "feeds",
                    "title",
                    "url",
                    "section",
                    "sections",
                    "from",
                    "timezone",
                    "collect",
                    "smtp",
                    "max_items",
                    "include",
                    "unsubscribe_url",
                    "issue",
                    "subject",
                    "items",
                    "more",
                    "stale",
                    "sponsor",
                    "intro",
                    "feed",
                    "site",
                    "published",
                ]
            )
            | st.text(string.ascii_lowercase, max_size=6),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


def _yaml_texts():
    dumped = yaml_values.map(lambda value: yaml.safe_dump(value, allow_unicode=True, sort_keys=False))
    raw = st.text(alphabet=st.sampled_from([*list(":-[]{}&*!|>'\"#%@` \n\tabc12"), "\u202e", "é"]), max_size=200)
    nested = st.integers(30, 3000).map(lambda depth: "a: " + "[" * depth + "]" * depth)
    return st.one_of(dumped, raw, nested)


@SETTINGS
@given(_yaml_texts())
def test_any_feeds_yaml_is_a_config_or_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("config") / "feeds.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as error:
        message = str(error)
    else:
        return
    assert "\n" not in message and message.startswith(str(path))


@SETTINGS
@given(_yaml_texts())
def test_any_draft_is_a_draft_or_one_line_error(text):
    path = Path("/nowhere/drafts/2026-W14.yaml")
    try:
        parse_draft(path, text)
    except ConfigError as error:
        message = str(error)
    else:
        return
    assert "\n" not in message and message.startswith(str(path))


@SETTINGS
@given(nasty_text)
def test_text_helpers_never_raise_and_leave_nothing_invisible_behind(text):
    cleaned = one_line(text)
    assert strip_invisible(cleaned) == cleaned
    assert not any(char in cleaned for char in "\u202e\u2066\u200b\ufeff\x00\x85\n\t")


html_fragments = st.lists(
    st.one_of(
        nasty_text,
        st.sampled_from(
            [
                *("<p>", "</p>", "<br>", "<b>", "</b>", '<a href="https://x.example/?a=1&b=2">', "</a>", "<!-- c -->"),
                *('<img alt="a>b" src="https://x.example/i.png">', "<script>x()</script>", "<li>", "<svg><g>"),
                *("<table><tr><td>", "</td></tr></table>", "<pre>  a\n b</pre>", "<", ">", "&nbsp;", "&#x2028;"),
                "&amp;",
            ]
        ),
    ),
    max_size=12,
).map("".join)


@SETTINGS
@given(html_fragments)
def test_sanitized_html_reads_the_same_by_the_fast_path_and_the_html_parser(fragment):
    """The identity of a link-less post hashes its text: both readings must agree, character for character."""
    cleaned = sanitize_html(fragment, base="https://x.example/")
    assert sanitized_text(cleaned) == plain_text(cleaned)


@SETTINGS
@given(st.text(max_size=80), st.sampled_from([None, FEED]))
def test_clean_urls_are_http_and_clean_twice_the_same(url, base):
    cleaned = clean_url(url, base)
    if cleaned is not None:
        assert cleaned.startswith(("http://", "https://")) and clean_url(cleaned) == cleaned
        assert url_key(cleaned) == url_key(clean_url(cleaned))


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_nesting_is_one_line_at_any_depth(tmp_path, depth):
    path = tmp_path / "feeds.yaml"
    path.write_text("feeds: " + "[" * depth + "]" * depth, encoding="utf-8")
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_config(path)
