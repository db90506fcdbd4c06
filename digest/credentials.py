"""Secrets, from the environment only, and their removal from anything digest prints or stores.

Each secret read through `env_secret` is remembered, so that `redact` can take it out of a server's reply
or an API's error that echoes the request (a proxy repeating `Authorization: Token ...`, a login refusal
repeating the credentials): what reaches the terminal or the ledger shows `[redacted]` in its place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SetupError


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
