"""subscribers.csv: the list of who gets the newsletter, read with the line of every row.

Addresses are compared by `address_key` (the domain lower-cased, and in the local part only ASCII letters):
Unicode case folding would make `ſ@x` and `s@x` one person, so that one's unsubscribe link would unsubscribe
the other.
"""

from __future__ import annotations

import csv
import re
import string
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import ConfigError
from .text import one_line
from .yamlfile import read_text_file

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


def read_subscribers(path: Path | str, strict: bool = False) -> tuple[list[Subscriber], list[ConfigError]]:
    """Subscribers from the CSV (columns email, name, status), the same address (`address_key`) merged.

    Rows with a bad address are returned as problems (or raised when strict), never silently dropped. The
    file is read as it is parsed, row by row: a list of 100,000 is never in memory twice.
    """
    path = Path(path)
    problems: list[ConfigError] = []
    by_email: dict[str, Subscriber] = {}
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ConfigError(path, None, None, NOT_FOUND) from None
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(handle)
    with handle:
        try:
            header = [name.strip().lower() for name in next(reader, [])]
            if "email" not in header:
                raise ConfigError(path, 1, "email", "the header row must have an 'email' column")
            for name in ("email", "name", "status"):
                if header.count(name) > 1:
                    raise ConfigError(path, 1, name, f"the header row has more than one '{name}' column")
            columns = {name: header.index(name) for name in ("email", "name", "status") if name in header}
            for cells in reader:
                line = reader.line_num
                row = {name: cells[index].strip() for name, index in columns.items() if index < len(cells)}
                email = row.get("email", "")
                status = _STATUS_NAMES.get((row.get("status") or "active").lower(), row.get("status", ""))
                if not email and not any(cell.strip() for cell in cells):
                    continue
                problem = None
                if not is_valid_email(email):
                    problem = ConfigError(path, line, "email", f"not a valid address: {email!r}")
                elif status not in SUBSCRIBER_STATUSES:
                    problem = ConfigError(path, line, "status", f"must be one of {', '.join(SUBSCRIBER_STATUSES)}")
                if problem:
                    if strict:
                        raise problem
                    problems.append(problem)
                    continue
                key = address_key(email)
                previous = by_email.get(key)
                if previous is not None and previous.status != "active":
                    continue  # an unsubscribe or bounce anywhere in the file wins
                by_email[key] = Subscriber(email=email, name=clean_name(row.get("name", "")), status=status)
        except csv.Error as exc:
            raise ConfigError(path, reader.line_num, None, f"not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:  # decoded a block at a time: the whole file tells the line
            read_text_file(path, NOT_FOUND, encoding="utf-8-sig")
            raise ConfigError(path, None, None, f"not UTF-8: {exc.reason}") from None  # changed meanwhile
        except OSError as exc:
            raise ConfigError(path, reader.line_num or None, None, f"cannot read: {exc.strerror or exc}") from None
    return list(by_email.values()), problems
