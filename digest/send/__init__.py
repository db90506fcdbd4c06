"""Delivery backends (smtp, buttondown) behind one small interface, and what they share."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sqlite_utils

from ..models import RenderedIssue


class SetupError(Exception):
    """Something missing or wrong on this machine (an env var, a secret file): one line, exit 2."""


class SendError(Exception):
    """The backend could not do its job (server unreachable, login refused, API error): one line, exit 1."""


class Unrecorded(SendError):
    """The drafts folder's receipt says the issue began sending, and the database knows nothing of it."""


class Clipped(SendError):
    """The email is past Gmail's clipping limit, and sending it clipped was not allowed: one line, exit 1."""


@dataclass
class SendReport:
    issue: str
    backend: str
    sent: int = 0
    failed: int = 0  # permanently refused (5xx): not retried
    pending: int = 0  # still to send: retries ran out on 4xx or dropped connections; a re-run resumes
    resent: int = 0  # left "sending" by an interrupted run, so sent again (the possible duplicates)
    complete: bool = False  # the issue is now `sent`
    remote_id: str | None = None  # buttondown's id of the email
    remote_status: str | None = None  # "draft" or "about_to_send"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reply) of this run's permanent failures
    returned_to_draft: bool = False  # nothing was delivered, so the issue is a draft again (editable, rebuildable)
    last_error: str | None = None  # why rows are still pending
    seconds: float = 0.0


class Backend(Protocol):
    name: str

    def deliver(self, db: sqlite_utils.Database, issue_id: str, rendered: RenderedIssue) -> SendReport:
        """Deliver the rendered issue, recording progress in the database so that a re-run resumes."""


def env_secret(name: str) -> str | None:
    """A secret from the environment: NAME itself, else the file named by NAME_FILE (trailing newline dropped).

    Secrets are only ever read here, and each one read is remembered so that `redact` can take it out of
    anything printed or stored (a proxy or server that echoes request headers back in an error).
    """
    value = os.environ.get(name)
    if not value:
        path = os.environ.get(f"{name}_FILE")
        if not path:
            return None
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SetupError(f"{name}_FILE: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if value:
        remember_secret(value)
    return value or None


_SECRETS: set[str] = set()
_CREDENTIALS = re.compile(r"\b(Token|Bearer|Basic)\s+[\w.~+/=-]+", re.IGNORECASE)
REDACTED = "[redacted]"


def remember_secret(*secrets: str) -> None:
    """Also take these out of output (forms of a secret: the base64 an SMTP AUTH sends, say)."""
    _SECRETS.update(secret for secret in secrets if len(secret) >= 4)


def redact(text: str) -> str:
    """`text` without any secret this process read, nor anything after an Authorization scheme's name."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _CREDENTIALS.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
