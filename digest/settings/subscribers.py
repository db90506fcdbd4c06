"""Subscriber lists read from CSV: our subscribers.csv, and the exports of other newsletter services to import.

Addresses are compared by `address_key` (the domain lower-cased, and in the local part only ASCII letters):
Unicode case folding would make `ſ@x` and `s@x` one person, so that one's unsubscribe link would unsubscribe
the other.

Every file is read as it is parsed, row by row (a list of 100,000 is never in memory twice), through one
reader: `_csv_rows` turns any problem with the file as a whole into one ConfigError, a `_Layout` (which
column holds what, and what the file's words for a subscriber's state mean in ours) reads each row, and
`_collect` merges the same address and keeps each bad row as a problem naming its line and its column.
"""

from __future__ import annotations

import csv
import re
import string
import unicodedata
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from digest.errors import ConfigError
from digest.text import one_line

NOT_FOUND = "not found (run `digest init` to write a starter file)"
SUBSCRIBER_STATUSES = ("active", "pending", "unsubscribed", "bounced", "complained")
SUPPRESSED = ("unsubscribed", "bounced", "complained")  # never mailed again; the database's record always wins
_STATUS_NAMES = {name: name for name in SUBSCRIBER_STATUSES}  # one string each, not one a row
_EMAIL = re.compile(
    r"^[^@\s<>(),;:\"\[\]\\\x00-\x1f\x7f]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


@dataclass(frozen=True, slots=True)
class Subscriber:
    email: str
    name: str = ""
    status: str = "active"  # one of SUBSCRIBER_STATUSES
    joined_at: datetime | None = None  # as an imported file tells it
    consent_at: datetime | None = None


@dataclass
class SubscriberFile:
    """A subscriber list read from a file: whose export it is, who is in it, and the rows that were skipped."""

    # "digest", "buttondown", "mailchimp", "substack", "listmonk", or "generic": another list with an email column
    format: str
    subscribers: list[Subscriber]
    problems: list[ConfigError]  # rows skipped, each naming the file, its line and the field


def address_key(address: str) -> str:
    """Who an address is, for comparing two: the domain lower-cased, and in the local part only ASCII letters.

    Unicode case folding would make `ſ@x.example` and `straße@x.example` the same person as `s@x.example`
    and `strasse@x.example`: one's unsubscribe link would unsubscribe the other. Composed and decomposed
    forms of one character (`é` typed as one code point or as `e` and an accent) are one address.
    """
    address = unicodedata.normalize("NFC", address.strip())
    local, at, domain = address.rpartition("@")
    if not at:
        return address.translate(_ASCII_LOWER)
    return f"{local.translate(_ASCII_LOWER)}@{domain.lower()}"


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def is_valid_email(address: str) -> bool:
    return bool(_EMAIL.match(address)) and len(address) <= 254


def clean_name(name: str) -> str:
    """A display name fit for a To header: a control character counts as a space (CR, LF, NUL...), invisible
    controls go (bidi overrides...; joiners stay inside words), white space is collapsed."""
    return one_line(_CONTROLS.sub(" ", name))


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula at a cell's start


def spreadsheet_safe(cell: str) -> str:
    """A cell no spreadsheet runs as a formula: one that starts like one is written behind an apostrophe, and so
    is one that starts with an apostrophe, so that `_from_spreadsheet_safe` gives every cell back as it was
    (`'=x` is written `''=x`)."""
    return "'" + cell if cell.startswith(_ESCAPED) else cell


def _from_spreadsheet_safe(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_ESCAPED) else cell


_ESCAPED = (*FORMULA_STARTS, "'")


def parse_moment(text: str) -> datetime:
    """A date and time as the exports write it, in UTC (one without a zone is UTC): ISO 8601 (ours, Buttondown's,
    Substack's `2024-01-31T12:34:56.789Z`, Mailchimp's `2024-01-31 12:34:56`), or the `2024-01-31 12:34:56.789
    +0000 UTC` of Go's time.String() that listmonk writes. ValueError when it is none of these."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        go = _GO_TIME.fullmatch(text)
        if go is None:
            raise
        moment = datetime.fromisoformat(f"{go[1]}{go[2]}:{go[3]}")
    if moment.tzinfo is None:  # combine, not replace(tzinfo=UTC): 0.13 µs instead of 0.65 µs on Python 3.11
        return datetime.combine(moment, moment.time(), UTC)
    return moment.astimezone(UTC)


_GO_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ([+-]\d\d)(\d\d)(?: \S+)?")


# --- reading a file -----------------------------------------------------------------------------------------

_Rows = Generator[tuple[int, list[str]], None, None]  # each row of a CSV file with its line, the header first


def read_subscribers(path: Path | str, strict: bool = False) -> tuple[list[Subscriber], list[ConfigError]]:
    """Subscribers from the CSV (columns email, name, status), the same address (`address_key`) merged.

    Rows with a bad address are returned as problems (or raised when strict), never silently dropped. Other
    columns are not read (a `digest subscribers export` file's dates are for `read_subscriber_export`).
    """
    path = Path(path)
    problems: list[ConfigError] = []
    with closing(_csv_rows(path, NOT_FOUND)) as rows:
        header = _Header(path, rows)
        email = header.column("email")
        if email is None:
            raise ConfigError(path, 1, "email", "the header row must have an 'email' column")
        subscribers = _collect(path, rows, _digest_layout(header, email, dates=False), problems, strict)
    return subscribers, problems


def read_subscriber_export(path: Path | str) -> SubscriberFile:
    """The subscribers of a list exported by digest (`digest subscribers export`), Buttondown, Mailchimp, Substack
    or listmonk, whose export it is told by the header row; any other CSV with an email column is a list of
    active subscribers (or of the statuses its `status` column gives, in our words).

    The same address (`address_key`) is merged, a status that stops the mail winning. A row with a bad address,
    a status word the export does not use or a date that is no date is skipped, as a problem naming its line
    and column. A file that cannot be read as UTF-8 CSV, or that has no email column, is a ConfigError.
    """
    path = Path(path)
    problems: list[ConfigError] = []
    with closing(_csv_rows(path, "not found")) as rows:
        layout = _export_layout(_Header(path, rows))
        subscribers = _collect(path, rows, layout, problems, strict=False)
    return SubscriberFile(layout.format, subscribers, problems)


def _csv_rows(path: Path, missing: str) -> _Rows:
    """Each row of a UTF-8 CSV file (a BOM is dropped), with its line, the header row first. Any problem with the
    file as a whole is one ConfigError: `missing`, unreadable, not UTF-8 or binary (with its line), not CSV, or
    larger than any list (see `_text_lines`)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(path, None, None, missing) from None
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(_text_lines(handle, path))
    with handle:
        try:
            for cells in reader:
                yield reader.line_num, cells  # the line a row ends on: a quoted name may hold a line break
        except csv.Error as exc:
            raise ConfigError(path, reader.line_num, None, f"not valid CSV: {exc}") from None
        except OSError as exc:
            raise ConfigError(path, reader.line_num or None, None, f"cannot read: {exc.strerror or exc}") from None


MAX_LINE = 1 << 20  # bytes: a "line" longer is no list of subscribers (/dev/zero, a binary file)
MAX_FILE = 1 << 30  # bytes: ten million subscribers of a 25-column Mailchimp export take about 2 GB, ours 1 GB


def _text_lines(handle: BinaryIO, path: Path) -> Iterator[str]:
    """The file's lines, each decoded from UTF-8 on its own, so that a problem names its line: none read past
    MAX_LINE nor the file past MAX_FILE (`/dev/urandom` is never read whole into memory), and a header
    row with a NUL byte, which no text file holds, refused as binary."""
    read = 0
    for number, data in enumerate(_byte_lines(handle), 1):
        read += len(data)
        if len(data) > MAX_LINE:
            raise ConfigError(path, number, None, f"a line of more than {MAX_LINE:,} bytes: not a CSV list")
        if read > MAX_FILE:
            raise ConfigError(path, number, None, f"more than {MAX_FILE:,} bytes: larger than any list")
        if number == 1 and b"\0" in data:  # a name's NUL further on is a slip, cleaned (see clean_name)
            raise ConfigError(path, number, None, "binary data (a NUL byte): not a CSV list")
        try:
            yield data.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {number})"
            raise ConfigError(path, number, None, problem) from None


_LINE_END = re.compile(rb"\r\n|\r|\n")  # as a spreadsheet ends its lines, the old Mac's lone \r included


def _byte_lines(handle: BinaryIO, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a binary file, each with its ending, read a block at a time: a line past MAX_LINE is given
    as soon as it is that long, unfinished (no UTF-8 character holds a \r or \n byte: the cut is safe)."""
    pending = b""
    while True:
        chunk = handle.read(block)
        data = pending + chunk
        start = 0
        for match in _LINE_END.finditer(data):
            if chunk and match.end() == len(data) and match[0] == b"\r":
                break  # the block may cut a \r\n in two: wait for the next one
            yield data[start : match.end()]
            start = match.end()
        pending = data[start:]
        if not chunk or len(pending) > MAX_LINE:
            if pending:
                yield pending
            if not chunk:
                return
            pending = b""


class _Header:
    """The header row: its column names as written (for problems) and as compared (trimmed, lower-cased)."""

    def __init__(self, path: Path, rows: _Rows):
        _, cells = next(rows, (1, []))
        self.path = path
        self.names = [cell.replace("\ufeff", "").strip() for cell in cells]  # a BOM saved twice, by a spreadsheet
        self.keys = [name.lower() for name in self.names]

    def column(self, *keys: str) -> int | None:
        """Where the first of `keys` the header has is; a column named twice is refused (which one to read?)."""
        for key in keys:
            if key in self.keys:
                if self.keys.count(key) > 1:
                    raise ConfigError(self.path, 1, key, f"the header row has more than one '{key}' column")
                return self.keys.index(key)
        return None

    def columns(self, *keys: str) -> tuple[int, ...]:
        return tuple(index for key in keys if (index := self.column(key)) is not None)


class _BadCell(Exception):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class _Layout:
    """How one kind of file is read: which column holds what, and the file's words for a state in ours."""

    format: str
    names: list[str]  # the header as written, to name a column in a problem
    email: int
    name: tuple[int, ...] = ()  # joined by a space: Mailchimp's first and last name
    status: int | None = None
    words: Mapping[str, str] = field(default_factory=dict)  # the status column's word, lower-cased → ours
    default: str = "active"  # without a status column
    left: int | None = None  # without a status column: a date here (unsubscribed on...) means unsubscribed
    joined: tuple[int, ...] = ()  # the first of these columns filled in
    consent: tuple[int, ...] = ()

    def read(self, cells: list[str]) -> Subscriber | None:
        """The row's subscriber; None for a blank row. _BadCell for a bad address, status word or date."""
        count = len(cells)
        email = _from_spreadsheet_safe(cells[self.email].strip()) if self.email < count else ""
        if not email and not any(cell.strip() for cell in cells):
            return None
        if not is_valid_email(email):
            raise _BadCell(self.names[self.email], f"not a valid address: {email!r}")
        status = self.default
        if self.status is not None:
            word = cells[self.status].strip() if self.status < count else ""
            found = self.words.get(word.lower())
            if found is None:
                known = ", ".join(known for known in self.words if known)
                raise _BadCell(self.names[self.status], f"must be one of {known}, not {word!r}")
            status = found
        elif self.left is not None and self.left < count and cells[self.left].strip():
            status = "unsubscribed"
        name = clean_name(" ".join(_from_spreadsheet_safe(cells[index]) for index in self.name if index < count))
        return Subscriber(email, name, status, self._moment(cells, self.joined), self._moment(cells, self.consent))

    def _moment(self, cells: list[str], columns: tuple[int, ...]) -> datetime | None:
        for index in columns:
            text = cells[index].strip() if index < len(cells) else ""
            if text:
                try:
                    return parse_moment(text)
                except (ValueError, OverflowError):
                    raise _BadCell(self.names[index], f"not a date and time (ISO 8601): {text!r}") from None
        return None


def _collect(path: Path, rows: _Rows, layout: _Layout, problems: list[ConfigError], strict: bool) -> list[Subscriber]:
    """The subscribers of the rows, the same address merged; each bad row a problem (raised when strict)."""
    by_email: dict[str, Subscriber] = {}
    for line, cells in rows:
        try:
            subscriber = layout.read(cells)
        except _BadCell as bad:
            problem = ConfigError(path, line, bad.field, bad.problem)
            if strict:
                raise problem from None
            problems.append(problem)
            continue
        if subscriber is None:
            continue
        key = address_key(subscriber.email)
        previous = by_email.get(key)
        if previous is None or previous.status == "active" or _WEIGHT[subscriber.status] > _WEIGHT[previous.status]:
            by_email[key] = subscriber  # an unsubscribe or bounce anywhere in the file wins, then a pending one
    return list(by_email.values())


_WEIGHT = {"active": 0, "pending": 1, "unsubscribed": 2, "bounced": 2, "complained": 2}


# --- which file is whose ------------------------------------------------------------------------------------

# Ours: what `digest subscribers export` writes (`source` is the import's own, not read).
_DIGEST_COLUMNS = {"email", "name", "status", "source", "joined_at", "consent_at"}
_DIGEST_WORDS = {"": "active", **_STATUS_NAMES}

# Buttondown's subscriber types (its API's SubscriberType; an export's `subscriber_type` or, since the API's
# 2024-08-01 version, `type`). `spammy` and `bounced` are not in today's list, read in case an older file has them.
_BUTTONDOWN_TYPES = {
    # mailed, paying or not: a paid subscription that ends, lapses or pauses still gets the free issues
    **dict.fromkeys(
        ("regular", "premium", "gifted", "trialed", "churning", "churned", "past_due", "paused", "upcoming", "unpaid"),
        "active",
    ),
    "unactivated": "pending",  # has not confirmed the double opt-in
    "unsubscribed": "unsubscribed",
    "removed": "unsubscribed",  # removed by the newsletter
    "blocked": "unsubscribed",  # blocked by the newsletter
    "undeliverable": "bounced",
    "bounced": "bounced",
    "complained": "complained",  # marked an email as spam
    "spammy": "complained",  # a signup its firewall judged spam: never mailed, like a complaint
}

# listmonk's statuses are the subscriber's, across all lists. Disabled and blocklisted subscribers are left
# out of every campaign, and the export does not say why (listmonk blocklists on an unsubscribe from all lists,
# and on bounces when set to): unsubscribed is the status that keeps them out here and claims no more.
_LISTMONK_STATUSES = {"enabled": "active", "disabled": "unsubscribed", "blocklisted": "unsubscribed"}

# Substack's `email_disabled` is true for a reader who gets no email from the publication.
_SUBSTACK_EMAIL_DISABLED = {"": "active", "false": "active", "true": "unsubscribed"}

_MAILCHIMP_COLUMNS = {"member_rating", "optin_time", "confirm_time", "leid", "euid", "unsub_time", "clean_time"}
_EMAIL_COLUMNS = ("email", "e-mail", "email address", "email_address")
_LEFT_COLUMNS = ("unsubscription_date", "unsubscribed_at", "unsub_time")
_KNOWN = "digest reads its own subscribers.csv and the exports of Buttondown, Mailchimp, Substack and listmonk"


def _digest_layout(header: _Header, email: int, dates: bool = True) -> _Layout:
    return _Layout(
        "digest",
        header.names,
        email,
        name=header.columns("name"),
        status=header.column("status"),
        words=_DIGEST_WORDS,
        joined=header.columns("joined_at") if dates else (),
        consent=header.columns("consent_at") if dates else (),
    )


def _export_layout(header: _Header) -> _Layout:
    """How to read a file, told by its header row: the first export whose columns it has."""
    keys = set(header.keys)
    email = header.column("email")
    if email is not None and {"uuid", "attributes", "status"} <= keys:
        return _Layout(
            "listmonk",
            header.names,
            email,
            name=header.columns("name"),
            status=header.column("status"),
            words=_LISTMONK_STATUSES,
            joined=header.columns("created_at"),
        )
    if email is not None and keys & {"email_disabled", "active_subscription"}:
        return _Layout(
            "substack",
            header.names,
            email,
            name=header.columns("name"),
            status=header.column("email_disabled"),
            words=_SUBSTACK_EMAIL_DISABLED,
            joined=header.columns("created_at"),
        )
    if "email address" in keys and keys & _MAILCHIMP_COLUMNS:
        # Mailchimp exports its subscribed, unsubscribed and cleaned (bounced) members as three files
        kind = "unsubscribed" if "unsub_time" in keys else "bounced" if "clean_time" in keys else "active"
        return _Layout(
            "mailchimp",
            header.names,
            header.columns("email address")[0],
            name=header.columns("first name", "last name"),
            default=kind,
            joined=header.columns("optin_time", "confirm_time"),
            consent=header.columns("confirm_time", "optin_time"),
        )
    if keys & {"email", "email_address"} and keys & {"creation_date", "subscriber_type"}:
        return _Layout(
            "buttondown",
            header.names,
            header.columns("email", "email_address")[0],
            status=header.column("subscriber_type", "type"),
            words=_BUTTONDOWN_TYPES,
            left=header.column("unsubscription_date"),
            joined=header.columns("creation_date"),
        )
    if email is not None and keys <= _DIGEST_COLUMNS:
        return _digest_layout(header, email)
    email = header.column(*_EMAIL_COLUMNS)
    if email is None:
        raise ConfigError(
            header.path, 1, None, f"the header row has no email column ({', '.join(_EMAIL_COLUMNS)}): {_KNOWN}"
        )
    return _Layout(
        "generic",
        header.names,
        email,
        name=header.columns("name") or header.columns("first name", "last name", "first_name", "last_name"),
        status=header.column("status"),
        words=_DIGEST_WORDS,
        left=header.column(*_LEFT_COLUMNS),
    )
