"""The character encoding of a fetched feed: every document re-encoded as UTF-8 before feedparser reads it.

Choosing UTF-8, the Content-Type's charset, the XML declaration's or Windows-1252 for each stray byte is a
concern of its own (bytes, not entries), and it keeps feedparser from guessing with chardet.
"""

from __future__ import annotations

import codecs
import re

from digest.feeds.pages import charset_of

# UTF-32 and UTF-16 documents, by their byte order mark or, without one, by where the zero bytes of their
# first (ASCII) characters fall (XML 1.0, appendix F): "<?", "<r", " <" alike.
_WIDE_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
_WIDE_ZEROS = {  # which of the first four bytes are zero → the encoding
    (False, True, True, True): "utf-32-le",
    (True, True, True, False): "utf-32-be",
    (False, True, False, True): "utf-16-le",
    (True, False, True, False): "utf-16-be",
}
_EBCDIC = b"\x4c\x6f\xa7\x94"  # "<?xm" in EBCDIC: left to feedparser, which reads it
_DECLARED_ENCODING = re.compile(rb"""^(\s*<\?xml[^>]*?\bencoding\s*=\s*["'])([^"']*)""")
_CHARSET = re.compile(r";\s*charset\s*=[^;]*", re.IGNORECASE)
# Windows-1252 for the bytes 0x80 to 0x9F it defines (curly quotes, dashes, €); the five it leaves undefined stay
# C1 controls, which every text drops.
_WINDOWS_1252 = {
    byte: bytes([byte]).decode("windows-1252")
    for byte in range(0x80, 0xA0)
    if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def _stray_bytes_as_windows_1252(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start : error.end].decode("latin-1").translate(_WINDOWS_1252), error.end


codecs.register_error("digest-windows-1252", _stray_bytes_as_windows_1252)


def as_utf8(content: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """The document as UTF-8, its declaration and Content-Type saying so, so that feedparser reads it as is.

    The encoding is chosen here: when the declared one fails on a single stray byte, feedparser decodes the whole
    document by chardet's guess (one Latin-1 "ñ" in a UTF-8 feed turned every "é" into "Ã©", or into Arabic),
    and chardet takes 28 MB in each parse process. Here, in order:
    - a document that is valid UTF-8 is UTF-8, whatever it declares: text in a legacy encoding never is, while
      UTF-8 declared as ISO-8859-1 is common ("Café" would read "CafÃ©"); unless it declares a 7-bit encoding
      (ISO-2022-JP), whose text is ASCII bytes;
    - else the Content-Type's charset, else the XML declaration's: the first that reads every byte;
    - else, after a UTF-8 byte order mark or in mostly UTF-8 characters with a few stray bytes: UTF-8, each stray
      byte read as Windows-1252 (Latin-1 or Windows-1252 text pasted into a UTF-8 feed);
    - else a legacy encoding: the one declared, U+FFFD for what it cannot read, or Windows-1252 (HTML's
      default). So an undeclared KOI8-R reads wrong, as it does in feedparser without chardet.
    UTF-16 and UTF-32 are found by their first bytes; the byte-level checks that follow (character references)
    see every character."""
    encoding = next((name for start, name in _WIDE_BOMS if content.startswith(start)), None)
    if encoding is None and len(content) >= 4:
        first = content[:4]
        encoding = _WIDE_ZEROS.get((first[0] == 0, first[1] == 0, first[2] == 0, first[3] == 0))
    if encoding is not None:
        content = content.decode(encoding, errors="replace").encode("utf-8")
    elif content.startswith(_EBCDIC):
        return content, headers
    else:
        content = _utf8_bytes(content, headers)
    media_type = _CHARSET.sub("", headers.get("content-type", "")).strip() or "application/xml"
    return _DECLARED_ENCODING.sub(rb"\1utf-8", content, count=1), {
        **headers,
        "content-type": f"{media_type}; charset=utf-8",
    }


def _utf8_bytes(content: bytes, headers: dict[str, str]) -> bytes:
    bom = content.startswith(codecs.BOM_UTF8)  # UTF-8, whatever follows says (XML 1.0, appendix F)
    if bom:
        content = content[len(codecs.BOM_UTF8) :]
    declared = _DECLARED_ENCODING.match(content)
    names = (charset_of(headers.get("content-type", "")), declared.group(2).decode("latin-1") if declared else None)
    candidates = [codec for codec in map(_ascii_compatible_codec, names) if codec]
    # A 7-bit encoding (ISO-2022-JP, HZ, UTF-7) writes its text in ASCII bytes, which are valid UTF-8 too.
    seven_bit = [codec for codec in candidates if codec.startswith("iso2022") or codec in ("hz", "utf-7")]
    for codec in dict.fromkeys([*seven_bit, "utf-8"] if bom else [*seven_bit, "utf-8", *candidates]):
        try:
            text = content.decode(codec)
        except UnicodeError:  # also what a codec that is no character set (idna) raises
            continue
        return content if codec == "utf-8" else text.encode("utf-8")
    if bom or _mostly_utf8(content):
        return content.decode("utf-8", errors="digest-windows-1252").encode("utf-8")
    legacy = next((codec for codec in candidates if codec not in ("ascii", "utf-8")), "windows-1252")
    try:
        return content.decode(legacy, errors="replace").encode("utf-8")
    except UnicodeError:
        return content.decode("windows-1252", errors="replace").encode("utf-8")


def _mostly_utf8(content: bytes) -> bool:
    """Whether the document holds at least as many UTF-8 characters beyond ASCII as bytes that are not UTF-8."""
    escaped = content.decode("utf-8", errors="surrogateescape")  # each stray byte a lone surrogate
    stray = len(escaped) - len(escaped.encode("utf-8", errors="ignore").decode("utf-8"))
    beyond_ascii = len(escaped) - len(escaped.encode("ascii", errors="ignore"))
    return beyond_ascii - stray >= stray


def _ascii_compatible_codec(name: str | None) -> str | None:
    """The text codec a declared name stands for, when it writes ASCII as ASCII (not UTF-16, EBCDIC or base64)."""
    try:
        codec = codecs.lookup((name or "").strip()).name
        if "<?xml feed>".encode(codec) != b"<?xml feed>":
            return None
    except (LookupError, ValueError, TypeError):
        return None
    return "gb18030" if codec == "gb2312" else codec  # what "GB2312" feeds hold is GBK, which GB18030 contains


# Only the references that may be impossible: six hex digits or more (past U+FFFFF), seven decimal digits or more
# (past 999,999), and the surrogates' ranges (U+D800 to U+DFFF, 55296 to 57343), leading zeros allowed; `replace`
# decides. Matching every reference called back into Python for each of the thousands of valid ones.
_CHARACTER_REFERENCE = re.compile(
    rb"&(?:amp;)?#(x0*(?:[0-9a-f]{6,}|d[89a-f][0-9a-f]{2})|[0-9]{7,}|0*5[5-7][0-9]{3});", re.IGNORECASE
)


def valid_character_references(content: bytes) -> bytes:
    """Numeric character references to code points that cannot exist (surrogates, past U+10FFFF, numbers of
    any size) make feedparser raise: they become U+FFFD, in markup and in escaped HTML alike."""

    def replace(match: re.Match) -> bytes:
        number = match.group(1)
        digits = number[1:] if number[:1] in (b"x", b"X") else number
        if len(digits) > 8:
            return b"&#xFFFD;"
        code = int(digits, 16) if digits is not number else int(digits)
        return b"&#xFFFD;" if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF else match.group(0)

    return _CHARACTER_REFERENCE.sub(replace, content) if b"&" in content else content
