"""Feed bytes → sanitized `Post` records: identities, clean links, UTC dates, plain-text titles and summaries.

Everything from a feed is hostile: HTML goes through nh3 on a strict allow-list before anything
else reads it, feedparser only ever sees bytes (given a string it would open URLs and files), and
invisible controls (bidi overrides, zero-width and control characters) leave every text.

Identity: what readers see as one post is stored once, and two posts are never merged.
- Within one feed, an entry is its guid: two entries with different guids are two posts, even when
  their links differ only by the fragment (microblogs: `…/01.html#a1`, `#a2`) or are absent. An entry
  repeated in one document (the same guid twice, with the same link) is one post. A guid that different
  entries share (different links, or link-less ones with different titles or text) identifies nothing
  and is ignored.
- An entry without a guid is its link; without either, a hash of its normalized title and text.
- Across feeds and fetches, a link is one article whatever its scheme, `www.`, default port or tracking
  parameters (`utm_*`, `ref`, `source`, ...): the same article from an aggregator and from the blog is one
  post, kept in its https form (see urls.py). An entry whose guid changed (its old guid gone from the
  feed, or a generator that makes a new one on every fetch) is recognized by its link, or, link-less,
  by its title and text (store.py applies these rules against what is stored).
- The link is the article's own: `feedburner:origLink` and similar win over the feed's link, and
  redirectors that carry the target in their query are unwrapped. A tracker link that names the article
  by an id only (FeedPress, FeedBurner) stays, but the post's source is its feed's site, not the tracker.

Size: titles are cut at a word to 200 characters and summaries to 300, so that one hostile entry cannot
push an email past Gmail's clipping limit.
"""

from __future__ import annotations

import hashlib
import html
import re
import xml.sax
from calendar import timegm
from collections import defaultdict
from datetime import UTC, datetime
from urllib.parse import unquote, urljoin, urlsplit

import feedparser
import nh3

from digest.feeds.encoding import as_utf8, valid_character_references
from digest.feeds.pages import MIN_IMAGE
from digest.models import ParsedFeed, Post
from digest.text import content_key, cut_at_word, one_line, plain_text, same_words, sanitized_text, strip_invisible
from digest.urls import clean_url, host_of, is_opaque_redirect, unwrap, url_key

SUMMARY_LIMIT = 300
TITLE_LIMIT = 200
GUID_LIMIT = 1000

_ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "small",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "u",
    "ul",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
# Removed together with everything inside them, not just unwrapped.
_DROPPED_WITH_CONTENT = {
    "script",
    "style",
    "iframe",
    "object",
    "embed",
    "form",
    "noscript",
    "template",
    "svg",
    "math",
    "frame",
    "frameset",
    "applet",
    "select",
    "textarea",
    "button",
    "title",
}
_URL_SCHEMES = {"http", "https", "mailto"}
# Where feeds put the article's own address when their <link> goes through a click tracker.
_ORIGINAL_LINK_KEYS = ("feedburner_origlink", "pheedo_origlink", "feedpress_origlink", "origlink")

_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_PIXEL_SOURCE = re.compile(
    r"feeds\.feedburner\.com/~r|feedburner\.com/~ff|/~r/|pixel|beacon|tracker|tracking|/stat\?|/_/stat|"
    r"/open\.gif|/track/|/t\.gif|1x1|spacer\.gif|blank\.gif|stats\.wordpress\.com|pi\.feedsportal|"
    r"feeds\.wordpress\.com/1\.0/|/i/\?|\bga\?|google-analytics|doubleclick|feedpress\.me/\d+/\d+\.gif",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z0-9À-ÖØ-Þ])")
# Boilerplate that feed generators append to every entry; it says nothing about the post. It is looked for
# only in the last _BOILERPLATE_REACH characters: on a whole long text the pattern's backtracking is quadratic
# (20,000 digits took 1.3 s), and the longest boilerplate is about 550 characters; and only when a word of it is
# there (_BOILERPLATE_HINT), since most texts have none.
_BOILERPLATE_REACH = 1000
_BOILERPLATE_HINT = re.compile(r"appeared first|continue reading|read more|read full topic|participant|\[", re.I)
_BOILERPLATE = re.compile(
    r"\s*(The post .{1,300}? appeared first on .{1,200}?\.|Continue reading.{0,120}?$|Read more.{0,60}?$|"
    r"\[(…|\.\.\.|&hellip;)\]|\(Read more\.*\)|\d+ posts? - \d+ participants?(\s+Read full topic)?|"
    r"Read full topic)\s*$",
    re.IGNORECASE,
)


def parse_feed(
    content: bytes, feed_url: str, headers: dict[str, str] | None = None, fetched_url: str | None = None
) -> ParsedFeed:
    """Parse one fetched document. Never raises: a document that is not a usable feed sets `error`."""
    response_headers = {key.lower(): value for key, value in (headers or {}).items()}
    # `feed_url` (as configured) names the feed and its posts; relative links resolve against where the
    # document really came from, which differs after a redirect. feedparser is not told that address: it
    # would turn a guid such as "S-1" into a link. Links are resolved here, content by sanitize_html.
    base_url = fetched_url or feed_url
    try:
        content, response_headers = as_utf8(content, response_headers)
        parsed = feedparser.parse(
            valid_character_references(content),
            response_headers=response_headers,
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as exc:  # feedparser's own bugs on hostile input: this feed fails, nothing else
        return ParsedFeed(title=None, posts=[], error=f"cannot parse: {type(exc).__name__}: {exc}"[:300])
    error = _unusable(parsed, content, response_headers)
    if error:
        return ParsedFeed(title=None, posts=[], error=error)
    site_url = _site_url(parsed.feed, base_url)
    feed_itself = url_key(clean_url(base_url) or base_url)
    links = [_original_link(entry, base_url, feed_itself) for entry in parsed.entries]
    shared_guids = _shared_guids(parsed.entries, links)
    posts: list[Post] = []
    seen_ids: set[str] = set()
    empty, unreadable = 0, []
    for entry, link in zip(parsed.entries, links, strict=True):
        try:
            post = _post_from_entry(entry, link, feed_url, base_url, site_url, shared_guids)
        except Exception as exc:  # one hostile entry costs itself, not its feed
            unreadable.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        if post is None:
            empty += 1
        elif post.id not in seen_ids:
            seen_ids.add(post.id)
            posts.append(post)
    warnings = [f"skipped {empty} {'entry' if empty == 1 else 'entries'} with no title, text or link"] if empty else []
    if unreadable:
        warnings.append(
            f"skipped {len(unreadable)} unreadable {'entry' if len(unreadable) == 1 else 'entries'} ({unreadable[0]})"
        )
    feed_title = one_line(plain_text(parsed.feed.get("title", ""))) or None
    malformed = parsed.get("bozo_exception")
    if isinstance(malformed, xml.sax.SAXParseException):
        # feedparser's lenient parser got past the error: keep only the posts that have a link of their own.
        posts = [post for post in posts if post.canonical_url]
        if not posts:
            return ParsedFeed(title=None, posts=[], error=_malformed(malformed))
        warnings.insert(0, f"{_malformed(malformed)} (kept {len(posts)} posts the lenient parser recovered)")
    return ParsedFeed(title=feed_title, posts=posts, site_url=site_url, warning="; ".join(warnings) or None)


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


def _site_url(feed, base_url: str) -> str | None:
    """The home page the feed belongs to (its channel link), unless that is the feed document itself."""
    site = clean_url(unwrap(feed.get("link") or ""), base_url)
    return site if site and url_key(site) != url_key(clean_url(base_url) or "") else None


def _guid(entry) -> str:
    return strip_invisible(str(entry.get("id") or "")).strip()[:GUID_LIMIT]


def _shared_guids(entries, links: list[str | None]) -> set[str]:
    """Guids that different entries share (different links, or link-less ones with different titles or
    text): a generator bug, such as the feed's URL as every guid."""
    seen: dict[str, set] = defaultdict(set)
    for entry, link in zip(entries, links, strict=True):
        guid = _guid(entry)
        if guid:
            seen[guid].add(url_key(link) if link else (entry.get("title"), entry.get("summary")))
    return {guid for guid, entries_of_guid in seen.items() if len(entries_of_guid) > 1}


def _post_from_entry(
    entry, link: str | None, feed_url: str, base_url: str, site_url: str | None, shared_guids: set[str]
) -> Post | None:
    body, body_base = _entry_html(entry)
    # An xml:base in the document wins; else the post's own address (aggregators republish other sites).
    content_html = sanitize_html(body, base=body_base if body_base and body_base != base_url else link or base_url)
    body_text = sanitized_text(content_html)
    title = cut_at_word(one_line(plain_text(entry.get("title", ""))), TITLE_LIMIT)
    summary = summarize(body_text, title=title)
    if not title:
        title = _title_from(summary or body_text)
        summary = summarize(body_text.removeprefix(title).strip()) if body_text.startswith(title) else summary
    if not title and link:
        title = cut_at_word(one_line(host_of(link) + unquote(urlsplit(link).path)), TITLE_LIMIT)
    if not title:
        return None  # neither title, text nor link: nothing a reader could be shown
    guid = _guid(entry)
    if guid in shared_guids:
        guid = ""
    link_key = url_key(link) if link else None
    text_key = content_key(title, body_text)
    identity = guid or link_key or text_key
    source = host_of(site_url) if is_opaque_redirect(link) or not link else host_of(link)
    return Post(
        id=hashlib.sha256(f"{feed_url}\0{identity}".encode()).hexdigest()[:32],
        feed_url=feed_url,
        canonical_url=link,
        title=title,
        author=_author(entry),
        summary=summary,
        content_html=content_html,
        published_at=_date(entry),
        guid=guid or None,
        url_key=link_key,
        content_key=text_key,
        source=source or None,
        **_image(entry, link or base_url),
    )


def _image(entry, base: str) -> dict:
    """The entry's thumbnail: media:thumbnail, else an image in media:content or an image enclosure; only an
    http(s) address with its width and height given (the email reserves the place; an image without them
    could be anything), and larger than a tracking pixel."""
    candidates = list(entry.get("media_thumbnail") or [])
    candidates += [media for media in entry.get("media_content") or [] if _is_image(media)]
    candidates += [enclosure for enclosure in entry.get("enclosures") or [] if _is_image(enclosure)]
    for candidate in candidates:
        url = clean_url(urljoin(base, str(candidate.get("url") or candidate.get("href") or "")))
        try:
            width, height = int(candidate.get("width") or 0), int(candidate.get("height") or 0)
        except (TypeError, ValueError):
            continue
        if url and url.startswith(("http://", "https://")) and width >= MIN_IMAGE and height >= MIN_IMAGE:
            return {"image_url": url, "image_width": width, "image_height": height}
    return {}


def _is_image(media) -> bool:
    return str(media.get("medium") or "") == "image" or str(media.get("type") or "").startswith("image/")


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


def _original_link(entry, base_url: str, feed_itself: str) -> str | None:
    """The article's own address: the original link a tracker-wrapping feed carries, else the entry's link
    (unwrapped), else, for a link through an opaque tracker, a guid that is the permalink. A link that only
    points back at the feed document (whose url_key is `feed_itself`) is no link at all."""
    for key in _ORIGINAL_LINK_KEYS:
        value = entry.get(key)
        original = clean_url(unwrap(str(value)), base_url) if value else None
        if original:
            return original
    candidates = [entry.get("link")] + [
        link.get("href") for link in entry.get("links", []) if link.get("rel", "alternate") == "alternate"
    ]
    for candidate in candidates:
        # An RSS guid without isPermaLink="false" becomes the link in feedparser: only when it is a whole URL
        # (a guid such as "S-1" or "urn:uuid:…" is no address, even resolved against the feed's).
        base = None if entry.get("guidislink") and candidate == entry.get("id") else base_url
        url = clean_url(unwrap(candidate or ""), base)
        if url and url_key(url) != feed_itself:
            if is_opaque_redirect(url):
                permalink = clean_url(str(entry.get("id") or ""))
                if permalink and not is_opaque_redirect(permalink) and url_key(permalink) != feed_itself:
                    return permalink
            return url
    return None


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
        fragment,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        url_schemes=_URL_SCHEMES,
        url_relative=absolute,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return _IMG.sub(_image_or_nothing, cleaned)


def _image_or_nothing(match: re.Match) -> str:
    attributes = dict(_ATTRIBUTE.findall(match.group(0)))
    source = attributes.get("src", "")
    sizes = [_number(attributes.get(side)) for side in ("width", "height")]
    tiny = any(size is not None and size <= 2 for size in sizes)
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


def summarize(text: str, *, title: str = "", limit: int = SUMMARY_LIMIT) -> str:
    """One or two sentences, at most `limit` characters, cut at a sentence or else a word boundary."""
    lines = text.splitlines()
    if lines and title and same_words(lines[0], title):
        lines = lines[1:]
    text = " ".join(lines)
    if len(text) > 2 * _BOILERPLATE_REACH + limit:  # the summary is the text's start: the rest cannot matter
        text = text[: _BOILERPLATE_REACH + limit]
    cut = max(0, len(text) - _BOILERPLATE_REACH)
    if _BOILERPLATE_HINT.search(text, cut):
        text = text[:cut] + _BOILERPLATE.sub("", text[cut:])
    text = text.strip()
    sentences = _SENTENCE_END.split(text)
    if len(text) <= limit and len(sentences) <= 2:
        return text
    summary = ""
    for sentence in sentences[:2]:
        candidate = f"{summary} {sentence}".strip()
        if len(candidate) > limit:
            break
        summary = candidate
    return summary or cut_at_word(text, limit)


def _title_from(text: str) -> str:
    first = _SENTENCE_END.split(text.split("\n", 1)[0], maxsplit=1)[0] if text else ""
    return cut_at_word(first, TITLE_LIMIT)


_ADDRESS = re.compile(r"(?:mailto:)?[^\s<>()\[\]@,;]+@[^\s<>()\[\]@,;]+")
_EMPTY_BRACKETS = re.compile(r"<\s*>|\(\s*\)|\[\s*\]")


def _author(entry) -> str | None:
    """The byline: a name, never an address. feedparser takes the name out of "address (Name)" and "Name
    <address>" with an address pattern whose top-level domain ends at four letters ("jane@studio.design
    (Jane Doe)" gave "gn (Jane Doe"), so where it found an address, the name is what is left of the whole
    string once every address and the brackets it leaves empty are taken out."""
    detail = entry.get("author_detail") or {}
    name = str(detail.get("name") or entry.get("author") or "")
    if detail.get("email") or "@" in name:
        name = _EMPTY_BRACKETS.sub("", _ADDRESS.sub("", str(entry.get("author") or name))).strip()
        if name.startswith("(") and name.endswith(")"):
            name = name[1:-1]
    return cut_at_word(one_line(plain_text(name)), 200) or None


def _date(entry) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        moment = entry.get(key)
        if moment:
            try:
                return datetime.fromtimestamp(timegm(moment), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
    return None
