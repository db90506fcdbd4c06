"""Secrets, from the environment only, and their removal from anything digest prints or stores.

Each secret read through `env_secret` is remembered, so that `redact` can take it out of a server's reply
or an API's error that echoes the request (a proxy repeating `Authorization: Token ...`, a login refusal
repeating the credentials): what reaches the terminal or the ledger shows `[redacted]` in its place.
A secret of a real secret's length (SECRET_LENGTH) is taken out wherever it is; a shorter one (an SMTP
password may be a word) only where it stands alone, so that a path or a word that holds it is left as it is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from digest.errors import SetupError

SECRET_LENGTH = 16  # characters a secret that signs links must have; no path or word holds one by chance
MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def env_secret(name: str) -> str | None:
    """A secret from the environment: NAME itself, else the file named by NAME_FILE (trailing newline dropped).

    Secrets are only ever read here, and each one read is remembered so that `redact` can take it out of
    anything printed or stored (a proxy or server that echoes request headers back in an error).
    """
    value = _read(name)
    if value:
        remember_secret(value)
    return value or None


def signing_secret(name: str, purpose: str) -> str | None:
    """A secret that signs links (None when unset): one of fewer than SECRET_LENGTH characters is refused, and
    not remembered, so that `redact` never takes a short word out of the refusal or anything else."""
    value = _read(name)
    if value and len(value) < SECRET_LENGTH:
        raise SetupError(
            f"{name} is too short ({SECRET_LENGTH} characters needed, it has {len(value)}): it {purpose}; "
            f"make one with {MAKE_SECRET}"
        )
    return env_secret(name)


def _read(name: str) -> str | None:
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"{name}_FILE: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


# Each form a remembered secret may take in an echo, with the expression that finds it standing alone (None:
# anywhere). Alone: not inside a word, nor joined to one by - . / \ @ + ~ (a path, a file name, an address).
_SECRETS: dict[str, re.Pattern[str] | None] = {}
_JOINERS = r"[-./\\@+~]"
REDACTED = "[redacted]"
# What follows an Authorization header; a token after a scheme's name, or a credential-named parameter or
# header, when it looks like a credential (a digit, or base64's + / =): prose such as "Basic Django tutorials"
# or "Secret: Django talks" (a feed's name) stays as it is. And a URL's user:password@.
_CREDENTIAL_NAMES = r"(?:x-)?api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|passw(?:or)?d|pwd|secret"
_AUTHORIZATION = re.compile(r"\b((?:proxy-)?authorization\s*[:=]\s*)[^\r\n,;]+", re.IGNORECASE)
_SCHEME = re.compile(r"\b(Token|Bearer|Basic)\s+(?=[\w.~+/=-]*[\d+/=])[\w.~+/=-]{8,}", re.IGNORECASE)
_ASSIGNED = re.compile(rf"\b({_CREDENTIAL_NAMES})=[^\s\"'&,;)]+", re.IGNORECASE)
_QUOTED = re.compile(rf"""\b({_CREDENTIAL_NAMES})(["']?\s*:\s*)(["'])[^"']*\3""", re.IGNORECASE)
_HEADER = re.compile(rf"\b({_CREDENTIAL_NAMES})(\s*:\s*)(?=[^\s\"'&,;)]*\d)[^\s\"'&,;)]{{8,}}", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
_CREDENTIAL_WORDS = ("key", "token", "secret", "passw", "pwd")  # one of them is in each of _CREDENTIAL_NAMES


def remember_secret(*secrets: str) -> None:
    """Also take these out of output, in the forms an echo may take: as written, escaped as repr() and JSON
    escape it (a password holding a quote, a backslash or an accent; smtplib's errors show bytes), and
    percent-encoded in a URL."""
    for secret in secrets:
        if len(secret) >= 4:
            escaped = (repr(secret)[1:-1], repr(secret.encode("utf-8"))[2:-1], json.dumps(secret)[1:-1])
            for form in {secret, *escaped, quote(secret, safe="")}:
                _SECRETS[form] = None if len(secret) >= SECRET_LENGTH else _standing_alone(form)


def _standing_alone(form: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w)(?<!\w{_JOINERS}){re.escape(form)}(?!\w|{_JOINERS}\w)")


def redact(text: str) -> str:
    """`text` without any secret this process read, nor what follows an Authorization scheme's name, a
    credential-named parameter (`api_key=`, `password:`), or the user and password of a URL."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            alone = _SECRETS[secret]
            text = text.replace(secret, REDACTED) if alone is None else alone.sub(REDACTED, text)
    # Each expression runs only where its words are: a case-insensitive scan costs 60-80 ms a pattern over the
    # 2 MB that `collect --json` prints for 10,000 feeds. The other letters that re.IGNORECASE takes for ASCII
    # ones (İ, dotless ı, long ſ; the Kelvin sign lowers to k) are folded too, so that no match is skipped.
    folded = text.lower().replace("i\u0307", "i").replace("ı", "i").replace("ſ", "s")
    if "authorization" in folded:
        text = _AUTHORIZATION.sub(lambda match: f"{match[1]}{REDACTED}", text)
    if any(word in folded for word in ("token", "bearer", "basic")):
        text = _SCHEME.sub(lambda match: f"{match[1]} {REDACTED}", text)
    if any(word in folded for word in _CREDENTIAL_WORDS):
        text = _ASSIGNED.sub(lambda match: f"{match[1]}={REDACTED}", text)
        text = _QUOTED.sub(lambda match: f"{match[1]}{match[2]}{match[3]}{REDACTED}{match[3]}", text)
        text = _HEADER.sub(lambda match: f"{match[1]}{match[2]}{REDACTED}", text)
    return _USERINFO.sub(lambda match: f"{match.group(1)}{REDACTED}@", text) if "@" in text else text
