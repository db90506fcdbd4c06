"""Text from feeds made fit to show: invisible controls removed, HTML turned into plain text, cut at a word.

Shared by parse (what is stored), render (what an editor typed into the draft) and the mail headers.
"""

from __future__ import annotations

import hashlib
import html
import re
import textwrap
import unicodedata
from html.parser import HTMLParser

# Always removed: C0 and C1 controls (tab and line breaks become spaces first); bidi embeddings, overrides
# and isolates (U+202E turns "Invoice \u202egnp.exe" into "Invoice exe.png"); characters that show nothing:
# zero-width space, word joiner, invisible operators, deprecated format controls, BOM, interlinear
# annotation, Mongolian vowel separator, Hangul fillers; and what is no character at all (surrogates,
# U+FFFE, U+FFFF).
_REMOVED = dict.fromkeys(
    (
        *range(32),
        127,
        *range(128, 160),
        *range(8234, 8239),
        *range(8294, 8298),
        8203,
        *range(8288, 8293),
        *range(8298, 8304),
        65279,
        *range(65529, 65532),
        6158,
        4447,
        4448,
        12644,
        65440,
        *range(55296, 57344),
        65534,
        65535,
    )
)
_SPACES = re.compile("[\t\n\r\u2028\u2029\x85]")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")


def _character_class(codes: dict[int, None]) -> re.Pattern[str]:
    """One regular expression for a set of code points, as ranges: a search in C, where str.translate with a
    dict looks up every character of the text in Python's dict (a third of parsing time)."""
    ranges, ordered = [], sorted(codes)
    start = previous = ordered[0]
    for code in [*ordered[1:], -1]:
        if code != previous + 1:
            ranges.append(re.escape(chr(start)) + (f"-{re.escape(chr(previous))}" if previous > start else ""))
            start = code
        previous = code
    return re.compile(f"[{''.join(ranges)}]")


_REMOVED_PATTERN = _character_class(_REMOVED)
_REMOVED_BUT_NEWLINES = _character_class({code: None for code in _REMOVED if code != ord("\n")})
# Kept only where they do something. ZWJ and ZWNJ shape Persian, Arabic and Indic words and join emoji
# (👩‍💻): kept after a letter, mark or symbol (a Bengali or Malayalam word may end in one), removed
# elsewhere. Tag characters spell out flags after 🏴 (England, Scotland); elsewhere they hide text.
_JOINERS = "\u200c\u200d"


_TAGS = re.compile("[\U000e0000-\U000e007f]")
_FLAG = re.compile("\U0001f3f4[\U000e0020-\U000e007e]{1,6}\U000e007f")  # 🏴 and its region's tag letters


def _without_tags(text: str) -> str:
    """Tag characters only inside flag sequences: anywhere else they carry text nobody sees."""
    kept, end = [], 0
    for flag in _FLAG.finditer(text):
        kept += [_TAGS.sub("", text[end : flag.start()]), flag.group()]
        end = flag.end()
    return "".join(kept) + _TAGS.sub("", text[end:])


def strip_invisible(text: str, *, keep_newlines: bool = False) -> str:
    """`text` without the invisible controls above; tabs and line breaks become spaces unless `keep_newlines`."""
    if not text:
        return ""
    if keep_newlines:
        text = _REMOVED_BUT_NEWLINES.sub("", _LINE_BREAKS.sub("\n", text).replace("\t", " "))
    else:
        text = _REMOVED_PATTERN.sub("", _SPACES.sub(" ", text))
    if text.isascii():
        return text
    if _TAGS.search(text):
        text = _without_tags(text)
    if "\u200c" not in text and "\u200d" not in text:
        return text
    kept, before = [], ""
    for char in text:
        if char not in _JOINERS or (before and unicodedata.category(before)[0] in "LMS"):
            kept.append(char)
        before = char
    return "".join(kept)


def one_line(text: str | None) -> str:
    """Visible text on one line, white space collapsed."""
    return " ".join(strip_invisible(text or "").split())


TEXT_WIDTH = 72  # columns of the email's text part


def wrap(text: str, width: int = TEXT_WIDTH) -> str:
    """Fill prose at `width` columns; words (and URLs) longer than that stay whole on their own line."""
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False) if text else ""


def cut_at_word(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else cut at the last word boundary before it, with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:-–—·") + "…"


def content_key(title: str, text: str) -> str:
    """A post's identity when it has neither guid nor link: its normalized title and text."""
    normalized = "\0".join(" ".join(strip_invisible(part).casefold().split()) for part in (title, text))
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:32]


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "tr"}
        | {"figure", "figcaption", "dd", "dt", "hr", "section", "article", "header"}
    )
    _SKIPPED = frozenset({"script", "style", "template", "noscript", "iframe", "svg"})

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
    """Visible text of an HTML fragment: entities decoded, one line per block, spaces collapsed."""
    if "<" not in fragment and "&" not in fragment:
        return _lines(fragment)
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    return _lines("".join(extractor.parts))


def _lines(text: str) -> str:
    """Visible text, one line per line that holds any, spaces collapsed."""
    lines = (
        " ".join(line.split()) for line in strip_invisible(text.replace("\xa0", " "), keep_newlines=True).splitlines()
    )
    return "\n".join(line for line in lines if line)


# A tag as nh3 writes it: attribute values double-quoted, where ">" may appear unescaped.
_ATTRIBUTES = r"""(?:[^>"']|"[^"]*"|'[^']*')*>"""
_SANITIZED_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*" + _ATTRIBUTES)
_SANITIZED_BLOCK = re.compile(
    r"</?(?:" + "|".join(sorted(_TextExtractor._BLOCKS, key=len, reverse=True)) + r")(?![a-zA-Z0-9])" + _ATTRIBUTES,
    re.IGNORECASE,
)


def sanitized_text(fragment: str) -> str:
    """plain_text of HTML that nh3 has cleaned, in half the time: such HTML has no comments, no skipped
    element and no malformed tag, so a regular expression reads it as the HTML parser would."""
    if "<" not in fragment and "&" not in fragment:
        return plain_text(fragment)
    return _lines(html.unescape(_SANITIZED_TAG.sub("", _SANITIZED_BLOCK.sub("\n", fragment))))


_WORD_CHARS = re.compile(r"\W+")


def same_words(a: str, b: str) -> bool:
    """Whether two texts hold the same words, ignoring case, punctuation and spacing."""
    return _WORD_CHARS.sub(" ", a).casefold().split() == _WORD_CHARS.sub(" ", b).casefold().split()
