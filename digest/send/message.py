"""The email of an issue, serialized once with the per-subscriber marks in it; each copy is a few byte joins.

Layout: multipart/alternative, text/plain then text/html, both UTF-8 and quoted-printable, CRLF line ends.
Quoted-printable keeps every line within 76 characters, but its soft line breaks could split a mark, so
each mark is put on a physical line of its own, between two soft breaks: `...=<CRLF>MARK=<CRLF>...`.
A subscriber's value is quoted-printable encoded in its place and wrapped to lines of at most 76
characters, so the copy is still valid quoted-printable and a decoder sees exactly the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from datetime import UTC, datetime
from email import policy
from email.utils import format_datetime, formataddr, parseaddr

from digest.issue.render import personalize
from digest.models import SUBSCRIBER_NAME_MARK, UNSUBSCRIBE_URL_MARK, RenderedIssue
from digest.send.unsubscribe import MAX_LINE, UnsubscribeLinks
from digest.settings.config import Newsletter
from digest.settings.subscribers import address_key
from digest.text import one_line

MARKS = (UNSUBSCRIBE_URL_MARK, SUBSCRIBER_NAME_MARK)
_MARK_SPLIT = re.compile("(" + "|".join(re.escape(mark) for mark in MARKS) + ")")
_QP_SAFE = frozenset(range(32, 127)) - {ord("=")}  # a space is fine: a soft break's "=" always follows
_QP_BYTE = [chr(b) if b in _QP_SAFE else f"={b:02X}" for b in range(256)]
_MAX_NAME = 100  # characters of a subscriber's name used in the To header and the body


def _wrap(encoded: bytes, width: int = 75) -> bytes:
    """Soft line breaks so that no line exceeds width + the "=" (76), never inside an =XX escape."""
    lines = []
    while len(encoded) > width:
        cut = width - (encoded[width - 1] == 61) - 2 * (encoded[width - 2] == 61)  # 61: "="
        lines.append(encoded[:cut])
        encoded = encoded[cut:]
    lines.append(encoded)
    return b"=\r\n".join(lines)


def qp_value(value: str) -> bytes:
    """A value for a mark's line: every byte but printable ASCII escaped, wrapped with soft breaks.

    The last line gets its soft break from the template, which already follows the mark.
    """
    return _wrap("".join([_QP_BYTE[b] for b in value.encode("utf-8")]).encode("ascii"))


def _qp_part(text: str) -> list[bytes | str]:
    """Quoted-printable body with CRLF line ends, as literal chunks and the marks (str) between them."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[bytes | str] = []
    for index, piece in enumerate(_MARK_SPLIT.split(text)):
        if index % 2:
            pieces += [b"=\r\n", piece, b"=\r\n"]
        elif piece:
            encoded = binascii.b2a_qp(piece.encode("utf-8"), quotetabs=False, istext=True, header=False)
            lines, newline, last = encoded.rpartition(b"\n")  # a mark's "=" may follow the last line: keep it <= 75
            pieces.append((lines + newline).replace(b"\n", b"\r\n") + _wrap(last))
    return pieces


_ENCODED_WORD_BYTES = 45  # 60 base64 characters, an encoded-word of 72: RFC 2047 allows 75
_FOLD_POINT = re.compile(r"(?<=\S) (?=\S)")  # a lone space between two words: CRLF may go before it


def fold(line: str, width: int = 78) -> str:
    """A header line folded before its spaces so that each physical line keeps within `width` where a space
    allows (RFC 5322 2.1.1); a word longer than that (a URL) stays whole on its own line."""
    if len(line) <= width:
        return line
    lines: list[str] = []
    for word in _FOLD_POINT.split(line):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\r\n ".join(lines)


def _header(name: str, value: str) -> bytes:
    """One header, RFC 2047-encoded and folded as needed; the common short ASCII case skips the slow path.

    A line break in the value would start a header of its own: the inputs are checked for them when they
    are read, and this refuses them again, whichever path the value takes.
    """
    if "\r" in value or "\n" in value:
        raise ValueError(f"a line break in the {name} header")
    line = f"{name}: {value}\r\n"
    if len(line) <= 80 and line.isascii():  # 78 and the CRLF
        return line.encode("ascii")
    return policy.SMTP.header_factory(name, value).fold(policy=policy.SMTP).encode("ascii")


_SPECIALS = dict.fromkeys(map(ord, '<>"()\\,;:@[]'), " ")


def _plain(text: str) -> bool:
    """ASCII that no reader takes for an encoded-word: written as it is, quoted if need be."""
    return text.isascii() and "=?" not in text


def _phrase(text: str) -> str:
    """A display name as RFC 5322 reads it: ASCII as atoms, quoted when it holds a special; anything else as
    RFC 2047 encoded-words, whole (an encoded-word inside quotes is not decoded, and a quote inside one is
    not a quote). Each holds whole words: a reader that keeps the space between two encoded-words (which
    RFC 2047 drops) shows no space inside a word. ASCII that looks like an encoded-word (`=?`) is encoded
    too, so that no reader decodes it."""
    if _plain(text):
        return formataddr((text, "x@x")).rpartition(" <")[0]
    chunks = [""]  # runs of whole words (a space ends each but the last), cut inside a word only if it must be
    for word in re.findall(r"\S+ ?", text):
        for piece in [word] if len(word.encode()) <= _ENCODED_WORD_BYTES else word:
            if len((chunks[-1] + piece).encode()) > _ENCODED_WORD_BYTES:
                chunks.append("")
            chunks[-1] += piece
    return " ".join(f"=?utf-8?b?{base64.b64encode(chunk.encode()).decode('ascii')}?=" for chunk in chunks if chunk)


def _to_header(email: str, name: str) -> bytes:
    """To, built by hand: the email package's refolding can drop the quotes around a decoded display name.
    An SMTPUTF8 address is written as it is (formataddr wants an ASCII one)."""
    if not name:
        return f"To: {email}\r\n".encode()
    return f"{fold(f'To: {_phrase(name)} <{email}>')}\r\n".encode()


def list_id_header(newsletter: Newsletter) -> str:
    """`Django Digest <django-digest.digest.example.com>`: the title as a phrase (RFC 2919), unfolded.
    A title that must be encoded loses its specials (`<>"()\\,;:@[]`, each a space): a reader that decodes
    the phrase before it looks for the address must still find the list id."""
    title = one_line(newsletter.title)
    if not _plain(title):  # encoded: decoded, its specials are raw again and `Café <Code>` reads as `<Code>`
        title = " ".join(title.translate(_SPECIALS).split())
    phrase = _phrase(title) if title.strip() else ""
    return f"{phrase} <{newsletter.list_identifier}>" if phrase else f"<{newsletter.list_identifier}>"


class PrefoldedHeader(str):
    """A header the email package writes as digest folded it: to its policies an object with a `name` is a
    header object. Its own refolding of List-Id would put a quoted title's quote inside an encoded-word."""

    name: str

    def __new__(cls, name: str, value: str) -> PrefoldedHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: policy.Policy) -> str:
        return fold(f"{self.name}: {self}").replace("\r\n", policy.linesep) + policy.linesep


def date_header(timestamp: float) -> str:
    """RFC 5322's Date: UTC written `+0000` (`GMT` is obsolete, `-0000` says the zone is unknown)."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


class Unmailable(ValueError):
    """No well-formed message can be made for this address."""


class MessageFactory:
    """Serializes the issue once; `copy()` makes one subscriber's message from it."""

    def __init__(self, rendered: RenderedIssue, newsletter: Newsletter, links: UnsubscribeLinks, issue_id: str):
        self.issue_id, self.links = issue_id, links
        self.sender = parseaddr(newsletter.from_address)[1]
        self.domain = self.sender.rpartition("@")[2] or "localhost"
        boundary = f"=_digest_{secrets.token_hex(12)}"  # "=_" never occurs in quoted-printable text
        common = [_header("From", newsletter.from_address), _header("Subject", rendered.subject)]
        if newsletter.reply_to:
            common.append(_header("Reply-To", newsletter.reply_to))
        if links.one_click:
            common.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        # What mailbox providers expect of a newsletter (RFC 2919, RFC 3834), and no out-of-office replies
        # from Exchange flooding the editor's inbox.
        common += [
            f"{fold('List-Id: ' + list_id_header(newsletter))}\r\n".encode("ascii"),
            b"Precedence: bulk\r\n",
            b"Auto-Submitted: auto-generated\r\n",
            b"X-Auto-Response-Suppress: OOF, AutoReply\r\n",
        ]
        common += [
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'.encode("ascii"),
        ]
        chunks: list[bytes | tuple[str, bool]] = [b"".join(common)]
        for subtype, body in (("plain", rendered.text), ("html", rendered.html)):
            chunks.append(
                f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
                f"Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii")
            )
            chunks += [(piece, subtype == "html") if isinstance(piece, str) else piece for piece in _qp_part(body)]
            chunks.append(b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode("ascii"))
        self._chunks = _merge_literals(chunks)
        self._date: tuple[int, bytes] = (0, b"")

    def message_id(self, email: str) -> str:
        """The same for every attempt at one (issue, subscriber): a resend after a crash can be recognized."""
        digest = hashlib.sha256(f"{self.issue_id}\0{address_key(email)}".encode()).hexdigest()[:24]
        return f"<{self.issue_id}.{digest}@{self.domain}>"

    def test_message_id(self) -> str:
        return f"<{self.issue_id}.test.{secrets.token_hex(12)}@{self.domain}>"

    def _date_header(self) -> bytes:
        """The Date line, made once a second rather than once a message."""
        second, date = int(time.time()), self._date  # the workers share the factory: one read of the pair
        if date[0] != second:
            date = self._date = (second, _header("Date", date_header(second)))
        return date[1]

    def copy(self, email: str, name: str, message_id: str) -> bytes:
        """One subscriber's message: their headers, then the body with their parts substituted."""
        name = " ".join(name.split())[:_MAX_NAME]
        url = self.links.url(email)
        values = {}
        for html in (False, True):
            for mark in MARKS:
                values[mark, html] = qp_value(personalize(mark, unsubscribe_url=url, name=name, html=html))
        unsubscribe = f"List-Unsubscribe: {self.links.header(email, url)}\r\n".encode("ascii")
        if unsubscribe.index(b"\r\n") > MAX_LINE:  # only for addresses longer than any real one
            raise Unmailable(f"its List-Unsubscribe line would exceed {MAX_LINE} bytes")
        head = b"".join(
            (
                _to_header(email, name),
                self._date_header(),
                _header("Message-ID", message_id),
                unsubscribe,
            )
        )
        return head + b"".join([chunk if isinstance(chunk, bytes) else values[chunk] for chunk in self._chunks])


def _merge_literals(chunks: list) -> list:
    merged: list = []
    for chunk in chunks:
        if isinstance(chunk, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += chunk
        else:
            merged.append(chunk)
    return merged
