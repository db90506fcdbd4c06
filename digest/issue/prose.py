"""The editor's prose (the intro, item summaries, the sponsor's text) as Markdown: links, bold, italic, inline
code and lists, nothing else. Rendered by markdown-it-py with every other rule off and raw HTML off, then
sanitized by nh3 (only those elements, only http(s) and mailto links); and turned into plain text for the text
part, its links as numbered references ("Django 6.0 [1]" … "[1] https://...").

Feed summaries stay plain text: `escape_markdown` writes them into the draft with the few characters that
Markdown would read escaped.
"""

from __future__ import annotations

import functools
import re
import textwrap
from dataclasses import dataclass

import nh3

from digest.text import TEXT_WIDTH, wrap

ALLOWED_TAGS = {"p", "a", "strong", "em", "code", "ul", "ol", "li", "br"}
ALLOWED_SCHEMES = {"http", "https", "mailto"}
REFERENCES = "\n\n[1] "  # where a text's link references begin


@dataclass(frozen=True)
class Prose:
    """A piece of the editor's Markdown, as HTML (sanitized) and as plain text (wrapped, links numbered)."""

    html: str
    text: str

    def __html__(self) -> str:  # a template that prints it whole gets the HTML, unescaped (it is sanitized)
        return self.html

    def __str__(self) -> str:
        return self.text

    def __bool__(self) -> bool:
        return bool(self.text.strip())

    @property
    def body(self) -> str:
        """The text without its numbered link references."""
        return self.text.split(REFERENCES, 1)[0]


@functools.cache
def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("zero", {"html": False, "linkify": False, "typographer": False}).enable(
        ["emphasis", "link", "backticks", "list", "newline", "escape", "entity"]
    )


def render_prose(source: str, width: int = TEXT_WIDTH) -> Prose:
    if not source.strip():
        return Prose("", "")
    tokens = _parser().parse(source)
    html = nh3.clean(
        _parser().renderer.render(tokens, _parser().options, {}),
        tags=ALLOWED_TAGS,
        attributes={"a": {"href"}},
        url_schemes=ALLOWED_SCHEMES,
        link_rel=None,
        attribute_filter=_absolute_links_only,
    ).strip()
    return Prose(html=html, text=_text(tokens, width))


def _absolute_links_only(tag: str, attribute: str, value: str) -> str | None:
    """A link in an email has no page to be relative to: `/docs` and `//host/x` lose their href (nh3 lets
    relative links through whatever the schemes)."""
    if tag == "a" and attribute == "href" and not re.match(r"(?i)(https?|mailto):", value):
        return None
    return value


def _text(tokens, width: int) -> str:
    """Blocks separated by a blank line, list items as "- " or "1. ", links as "text [n]" with the numbered
    URLs after the whole."""
    blocks: list[str] = []
    references: list[str] = []
    lists: list[list[int]] = []  # for each open list: [next number] (ordered) or [] (bullets)
    prefix = ""
    for token in tokens:
        if token.type == "bullet_list_open":
            lists.append([])
        elif token.type == "ordered_list_open":
            lists.append([int(token.attrGet("start") or 1)])
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif token.type == "list_item_open":
            counter = lists[-1]
            indent = "  " * (len(lists) - 1)
            if counter:
                prefix = f"{indent}{counter[0]}. "
                counter[0] += 1
            else:
                prefix = f"{indent}- "
        elif token.type == "inline":
            line = _inline_text(token.children or [], references)
            if prefix:
                blocks.append(textwrap.fill(line, width, initial_indent=prefix, subsequent_indent=" " * len(prefix)))
                prefix = ""
            else:
                blocks.append(wrap(line, width))
    joined = "\n\n".join(block for block in blocks if block)
    joined = re.sub(r"(?m)^(\s*(?:- |\d+\. ).*)\n\n(?=\s*(?:- |\d+\. ))", r"\1\n", joined)  # items: one a line
    if references:
        joined += "\n\n" + "\n".join(f"[{number}] {url}" for number, url in enumerate(references, 1))
    return joined


def _inline_text(children, references: list[str]) -> str:
    parts: list[str] = []
    link: str | None = None
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "link_open":
            href = child.attrGet("href") or ""
            link = href if re.match(r"(?i)(https?|mailto):", href) else None
        elif child.type == "link_close" and link is not None:
            references.append(link)
            parts.append(f" [{len(references)}]")
            link = None
    return " ".join("".join(parts).split())


_SPECIAL = re.compile(r"[\\`*_\[\]<>&]")  # every underscore: `__init__` would be emphasis; `&amp;` an entity
_BLOCK_START = re.compile(r"^(\s*)(?:([#>+-])|(\d+)([.)]))(?=\s|$)")  # "- x", "1. x", and a bare "2024."


def escape_markdown(text: str) -> str:
    """Plain text (a feed's summary) that Markdown renders as itself: its emphasis, link, code and HTML marks,
    and a start that would make a heading, a quote or a list, escaped with backslashes."""
    escaped = _SPECIAL.sub(lambda match: "\\" + match.group(), text)
    return _BLOCK_START.sub(
        lambda match: match[1] + ("\\" + match[2] if match[2] else match[3] + "\\" + match[4]), escaped
    )
