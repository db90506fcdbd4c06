"""A post's own page, for its description when its feed gives only a title (a feed's `summaries: page`).

The description is the page's `og:description`, else its meta description, else the first paragraph of its
article (of <article>, else <main>, else the body: the first with a sentence's length). lxml reads the page,
as premailer already makes it installed: a tolerant HTML parser in C that never fetches anything the page
names (no DTD, no entity, no network) and has been kept up for twenty years; a readability library would
add a dependency to find what three lookups find here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

from digest.text import cut_at_word, one_line
from digest.urls import clean_url

SUMMARY_CHARS = 300
MIN_IMAGE = 16  # pixels a side: smaller is a tracking pixel or a spacer, never a picture
SENTENCE = 40  # characters a paragraph must have to stand for the page (not a dateline or a byline)
# where a paragraph is not the article's: a "please enable JavaScript" notice, a menu, a cookie banner
_NOT_PROSE = ("noscript", "nav", "header", "footer", "aside", "form", "dialog")


@dataclass(frozen=True)
class PageInfo:
    description: str = ""
    image: tuple[str, int, int] | None = None  # og:image with its og:image:width and :height, when given


def charset_of(content_type: str) -> str | None:
    """The charset a Content-Type header names (`text/html; charset = "utf-8"`), if any."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def page_info(content: bytes, base: str, charset: str | None = None) -> PageInfo:
    """The page's description and image. `charset`: the one its Content-Type header names, which wins over the
    page's own (as in a browser); `base`: the page's address, for a relative og:image."""
    import lxml.html

    try:
        parser = lxml.html.HTMLParser(encoding=charset) if charset else None
        page = lxml.html.document_fromstring(content, parser=parser)
    except (ValueError, LookupError, lxml.etree.ParserError):  # empty, no document, an unknown charset
        return PageInfo()
    return PageInfo(description=_description(page), image=_image(page, base))


def _image(page, base: str) -> tuple[str, int, int] | None:
    def meta(name: str) -> str:
        found = page.xpath(f'//meta[@property="{name}"]/@content')
        return str(found[0]).strip() if found else ""

    url = clean_url(urljoin(base, meta("og:image")))
    try:
        width, height = int(meta("og:image:width") or 0), int(meta("og:image:height") or 0)
    except ValueError:
        return None
    if not url or min(width, height) < MIN_IMAGE:
        return None
    return url, width, height


def _description(page) -> str:
    """The page's description, cleaned and cut at SUMMARY_CHARS; "" when it has none."""
    for query in ('//meta[@property="og:description"]/@content', '//meta[@name="description"]/@content'):
        for found in page.xpath(query):
            text = one_line(str(found))
            if text:
                return cut_at_word(text, SUMMARY_CHARS)
    for container in ("//article", "//main", "//body"):
        for paragraph in page.xpath(f"{container}//p[not(ancestor::{' or ancestor::'.join(_NOT_PROSE)})]"):
            text = one_line(paragraph.text_content())
            if len(text) >= SENTENCE:
                return cut_at_word(text, SUMMARY_CHARS)
    return ""
