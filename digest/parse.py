"""Feed bytes → sanitized `Post` records: stable ids, canonical URLs, UTC dates, plain-text summaries.

Everything from a feed is hostile: HTML goes through nh3 on a strict allow-list before anything
else reads it, and feedparser only ever sees bytes (given a string it would open URLs and files).
"""

from __future__ import annotations

import hashlib
import html
import re
import xml.sax
from calendar import timegm
from datetime import datetime, timezone
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import nh3

from .models import ParsedFeed, Post

SUMMARY_LIMIT = 300
TITLE_LIMIT = 100

# Query parameters that only say who sent the reader: the same article with and without them is one post.
_TRACKING_PARAMETERS = {
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid", "mc_cid", "mc_eid",
    "_hsenc", "_hsmi", "mkt_tok", "ref_src", "ref_url", "oly_anon_id", "oly_enc_id", "vero_id", "wt_mc",
    "spm", "s_cid", "cmpid",
}
_TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "at_", "ga_")

_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "dl", "dt", "em", "figcaption", "figure",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "q", "s",
    "small", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"},
                       "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
# Removed together with everything inside them, not just unwrapped.
_DROPPED_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "form", "noscript", "template",
                         "svg", "math", "frame", "frameset", "applet", "select", "textarea", "button", "title"}
_URL_SCHEMES = {"http", "https", "mailto"}

_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_PIXEL_SOURCE = re.compile(
    r"feeds\.feedburner\.com/~r|feedburner\.com/~ff|/~r/|pixel|beacon|tracker|tracking|/stat\?|/_/stat|"
    r"/open\.gif|/track/|/t\.gif|1x1|spacer\.gif|blank\.gif|stats\.wordpress\.com|pi\.feedsportal|"
    r"feeds\.wordpress\.com/1\.0/|/i/\?|\bga\?|google-analytics|doubleclick",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z0-9À-ÖØ-Þ])")
# Boilerplate that feed generators append to every entry; it says nothing about the post.
_BOILERPLATE = re.compile(
    r"\s*(The post .{1,300}? appeared first on .{1,200}?\.|Continue reading.{0,120}?$|Read more.{0,60}?$|"
    r"\[(…|\.\.\.|&hellip;)\]|\(Read more\.*\)|\d+ posts? - \d+ participants?(\s+Read full topic)?|"
    r"Read full topic)\s*$",
    re.IGNORECASE,
)


def parse_feed(content: bytes, feed_url: str, headers: dict[str, str] | None = None,
               fetched_url: str | None = None) -> ParsedFeed:
    """Parse one fetched document. Never raises: a document that is not a usable feed sets `error`."""
    response_headers = {key.lower(): value for key, value in (headers or {}).items()}
    # `feed_url` (as configured) names the feed and its posts; relative links resolve against where the
    # document really came from, which differs after a redirect.
    base_url = fetched_url or feed_url
    response_headers["content-location"] = base_url
    # Relative links are resolved by sanitize_html against a better base than feedparser would choose.
    parsed = feedparser.parse(content, response_headers=response_headers, sanitize_html=False,
                              resolve_relative_uris=False)
    error = _unusable(parsed, content, response_headers)
    if error:
        return ParsedFeed(title=None, posts=[], error=error)
    posts: list[Post] = []
    seen_ids: set[str] = set()
    for entry in parsed.entries:
        post = _post_from_entry(entry, feed_url, base_url)
        if post is not None and post.id not in seen_ids:
            seen_ids.add(post.id)
            posts.append(post)
    feed_title = plain_text(parsed.feed.get("title", "")) or None
    malformed = parsed.get("bozo_exception")
    if isinstance(malformed, xml.sax.SAXParseException):
        # feedparser's lenient parser got past the error: keep only the posts that have a link of their own.
        posts = [post for post in posts if post.canonical_url]
        if not posts:
            return ParsedFeed(title=None, posts=[], error=_malformed(malformed))
        return ParsedFeed(title=feed_title, posts=posts,
                          warning=f"{_malformed(malformed)} (kept {len(posts)} posts the lenient parser recovered)")
    return ParsedFeed(title=feed_title, posts=posts)


def _malformed(exception: xml.sax.SAXParseException) -> str:
    return f"not well-formed XML: line {exception.getLineNumber()}: {exception.getMessage()}"


def _unusable(parsed, content: bytes, headers: dict[str, str]) -> str | None:
    if not parsed.entries and _looks_like_html(content, headers):
        return "not a feed: got an HTML page"
    if not parsed.get("version") and not parsed.entries:
        return "not a feed: no RSS or Atom document found"
    return None


def _looks_like_html(content: bytes, headers: dict[str, str]) -> bool:
    start = content[:2048].lstrip().lower()
    return "html" in headers.get("content-type", "") or start.startswith((b"<!doctype html", b"<html"))


def _post_from_entry(entry, feed_url: str, base_url: str) -> Post | None:
    link = _entry_link(entry, base_url)
    body, body_base = _entry_html(entry)
    # An xml:base in the document wins; else the post's own address (aggregators republish other sites).
    content_html = sanitize_html(body, base=body_base if body_base and body_base != base_url else link or base_url)
    body_text = plain_text(content_html)
    title = plain_text(entry.get("title", ""))
    summary = summarize(body_text, title=title)
    if not title:
        title = _title_from(summary or body_text)
        summary = summarize(body_text.removeprefix(title).strip()) if body_text.startswith(title) else summary
    if not title and not link:
        return None
    if not title:
        title = urlsplit(link).netloc + urlsplit(link).path
    guid = (entry.get("id") or "").strip()
    identity = guid or link or hashlib.sha256(f"{title}\0{body_text}".encode()).hexdigest()
    return Post(
        id=hashlib.sha256(f"{feed_url}\0{identity}".encode()).hexdigest()[:32],
        feed_url=feed_url, canonical_url=link, title=title, author=_author(entry), summary=summary,
        content_html=content_html, published_at=_date(entry),
    )


def _entry_html(entry) -> tuple[str, str | None]:
    """The richest body the entry has (full content, HTML preferred, else its summary) and its xml:base."""
    contents = entry.get("content") or []
    for wanted in ("text/html", "application/xhtml+xml", None):
        for part in contents:
            if (wanted is None or part.get("type") == wanted) and part.get("value", "").strip():
                return _as_html(part), part.get("base")
    summary = entry.get("summary_detail") or {}
    return (_as_html(summary), summary.get("base")) if summary.get("value") else ("", None)


def _as_html(part) -> str:
    value = part.get("value", "")
    if part.get("type") == "text/plain":
        return "<p>" + html.escape(value).replace("\n\n", "</p><p>") + "</p>"
    return value


def _entry_link(entry, base_url: str) -> str | None:
    """The post's own address; a link that only points back at the feed document is no link at all."""
    candidates = [entry.get("link")] + [link.get("href") for link in entry.get("links", [])
                                        if link.get("rel", "alternate") == "alternate"]
    feed_itself = canonical_url(base_url)
    for candidate in candidates:
        url = canonical_url(candidate or "", base_url)
        if url and url != feed_itself:
            return url
    return None


def canonical_url(url: str, base: str | None = None) -> str | None:
    """Absolute http(s) URL without fragment or tracking parameters, or None when it is not one."""
    url = (url or "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(urljoin(base, url) if base else url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    if port and not (scheme, port) in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)
             if not _is_tracking(key)]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query, safe="/:,@!$'()*+;~"), ""))


def _is_tracking(parameter: str) -> bool:
    parameter = parameter.lower()
    return parameter in _TRACKING_PARAMETERS or parameter.startswith(_TRACKING_PREFIXES)


def sanitize_html(fragment: str, *, base: str) -> str:
    """Strict allow-list: no scripts, frames, forms, handlers or styles; absolute links; no tracking pixels."""
    if not fragment:
        return ""

    def absolute(url: str) -> str | None:
        if url.startswith("#"):
            return None  # a footnote link into a page the reader is not on
        try:
            return urljoin(base, url)
        except ValueError:  # e.g. "//[x": nh3 would print the traceback of an exception raised here
            return None

    cleaned = nh3.clean(
        fragment, tags=_ALLOWED_TAGS, attributes=_ALLOWED_ATTRIBUTES, clean_content_tags=_DROPPED_WITH_CONTENT,
        url_schemes=_URL_SCHEMES, url_relative=absolute, link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return _IMG.sub(_image_or_nothing, cleaned)


def _image_or_nothing(match: re.Match) -> str:
    attributes = dict(_ATTRIBUTE.findall(match.group(0)))
    source = attributes.get("src", "")
    tiny = any(_number(attributes.get(side)) is not None and _number(attributes.get(side)) <= 2
               for side in ("width", "height"))
    if not source or tiny or _PIXEL_SOURCE.search(source):
        return ""
    if "alt" not in attributes:
        return match.group(0)[:-1].rstrip("/ ") + ' alt="">'
    return match.group(0)


def _number(value: str | None) -> float | None:
    try:
        return float((value or "").strip().removesuffix("px"))
    except ValueError:
        return None


class _TextExtractor(HTMLParser):
    _BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
               "table", "tr", "figure", "figcaption", "dd", "dt", "hr", "section", "article", "header"}
    _SKIPPED = {"script", "style", "template", "noscript", "iframe", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIPPED:
            self.skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def plain_text(fragment: str) -> str:
    """Text of an HTML fragment: entities decoded, one line per block, spaces collapsed."""
    if "<" not in fragment and "&" not in fragment:
        text = fragment
    else:
        extractor = _TextExtractor()
        extractor.feed(fragment)
        extractor.close()
        text = "".join(extractor.parts)
    lines = (" ".join(line.split()) for line in text.replace("\xa0", " ").splitlines())
    return "\n".join(line for line in lines if line)


def summarize(text: str, *, title: str = "", limit: int = SUMMARY_LIMIT) -> str:
    """One or two sentences, at most `limit` characters, cut at a sentence or else a word boundary."""
    lines = text.splitlines()
    if lines and title and _same_words(lines[0], title):
        lines = lines[1:]
    text = _BOILERPLATE.sub("", " ".join(lines)).strip()
    sentences = _SENTENCE_END.split(text)
    if len(text) <= limit and len(sentences) <= 2:
        return text
    summary = ""
    for sentence in sentences[:2]:
        candidate = f"{summary} {sentence}".strip()
        if len(candidate) > limit:
            break
        summary = candidate
    return summary or _cut_at_word(text, limit)


def _cut_at_word(text: str, limit: int) -> str:
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:-–—") + "…"


def _title_from(text: str) -> str:
    first = _SENTENCE_END.split(text.split("\n", 1)[0], maxsplit=1)[0] if text else ""
    return first if len(first) <= TITLE_LIMIT else _cut_at_word(first, TITLE_LIMIT)


def _same_words(a: str, b: str) -> bool:
    return _words(a) == _words(b)


def _words(text: str) -> list[str]:
    return re.sub(r"\W+", " ", text).casefold().split()


def _author(entry) -> str | None:
    detail = entry.get("author_detail") or {}
    name = detail.get("name") or entry.get("author") or ""
    name = plain_text(name)[:200]
    return name or None


def _date(entry) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        moment = entry.get(key)
        if moment:
            try:
                return datetime.fromtimestamp(timegm(moment), tz=timezone.utc)
            except (OverflowError, ValueError, OSError):
                continue
    return None
