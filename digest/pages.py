"""A post's own page, for its description when its feed gives only a title (a feed's `summaries: page`).

The description is the page's `og:description`, else its meta description, else the first paragraph of its
article (of <article>, else <main>, else the body: the first with a sentence's length). lxml reads the page,
as premailer already makes it installed: a tolerant HTML parser in C that never fetches anything the page
names (no DTD, no entity, no network) and has been kept up for twenty years; a readability library would
add a dependency to find what three lookups find here.
"""

from __future__ import annotations

from .text import cut_at_word, one_line

SUMMARY_CHARS = 300
SENTENCE = 40  # characters a paragraph must have to stand for the page (not a dateline or a byline)
# where a paragraph is not the article's: a "please enable JavaScript" notice, a menu, a cookie banner
_NOT_PROSE = ("noscript", "nav", "header", "footer", "aside", "form", "dialog")


def page_description(content: bytes, charset: str | None = None) -> str:
    """The page's description, cleaned and cut at SUMMARY_CHARS; "" when it has none. `charset`: the one its
    Content-Type header names, which wins over the page's own (as in a browser)."""
    import lxml.html

    try:
        parser = lxml.html.HTMLParser(encoding=charset) if charset else None
        page = lxml.html.document_fromstring(content, parser=parser)
    except (ValueError, LookupError, lxml.etree.ParserError):  # empty, no document, an unknown charset
        return ""
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
