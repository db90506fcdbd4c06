"""Secrets, from the environment only, and their removal from anything digest prints or stores.

Each secret read through `env_secret` is remembered, so that `redact` can take it out of a server's reply
or an API's error that echoes the request (a proxy repeating `Authorization: Token ...`, a login refusal
repeating the credentials) where that text enters digest: what reaches the terminal or the ledger shows
`[redacted]` in its place. A secret of a real secret's length (SECRET_LENGTH) is taken out wherever it is; a
shorter one (an SMTP password may be a word) only where it stands alone, and only from such outside text:
`redact_printed`, for every line digest prints, takes out the long ones and the credential patterns alone,
so that a password such as `feeds` never turns digest's own report into "1 [redacted] in 0.1 s".
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from digest.errors import SetupError

SECRET_LENGTH = 16  # characters a secret that signs links must have; no path or word holds one by chance
DIFFERENT_CHARACTERS = 8  # a signing secret with fewer is one character repeated, or nearly
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
    """A secret that signs links (None when unset), refused, and not remembered, when it is short (fewer than
    SECRET_LENGTH characters), has a space or a line break at either end (a copy-and-paste slip), or has fewer
    than DIFFERENT_CHARACTERS different characters (`aaaaaaaaaaaaaaaa`: guessed at once)."""
    value = _read(name)
    if value:
        if len(value) < SECRET_LENGTH:
            problem = f"too short ({SECRET_LENGTH} characters needed, it has {len(value)})"
        elif value != value.strip():
            problem = "too simple (a space or a line break at its start or end)"
        elif len(set(value)) < DIFFERENT_CHARACTERS:
            problem = f"too simple ({DIFFERENT_CHARACTERS} different characters needed, it has {len(set(value))})"
        else:
            return env_secret(name)
        raise SetupError(f"{name} is {problem}: it {purpose}; make one with {MAKE_SECRET}")
    return env_secret(name)


def _read(name: str) -> str | None:
    value = os.environ.get(name)
    path = os.environ.get(f"{name}_FILE")
    if value and path:
        raise SetupError(f"set {name} or {name}_FILE, not both")
    if value:
        return value
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
# One of 1 to 3 characters only as a whole token: after a space, a quote, a bracket, = or :, and before a space,
# a quote, a bracket, , ; & or a full stop that ends the text or a sentence.
_TOKEN_BEFORE = r"(?<![^\s\"'=:(\[<])"
_TOKEN_AFTER = r"(?=$|[\s\"',;&)\]>]|[.:!?](?:\s|$))"
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
        if secret:
            escaped = (repr(secret)[1:-1], repr(secret.encode("utf-8"))[2:-1], json.dumps(secret)[1:-1])
            for form in {secret, *escaped, quote(secret, safe="")}:
                _SECRETS[form] = None if len(secret) >= SECRET_LENGTH else _standing_alone(form, len(secret) < 4)


def _standing_alone(form: str, whole_token: bool) -> re.Pattern[str]:
    if whole_token:
        return re.compile(rf"{_TOKEN_BEFORE}{re.escape(form)}{_TOKEN_AFTER}")
    return re.compile(rf"(?<!\w)(?<!\w{_JOINERS}){re.escape(form)}(?!\w|{_JOINERS}\w)")


def redact(text: str) -> str:
    """Text from outside (a server's reply, an API's answer, a library's error) without any secret this process
    read, nor what `redact_printed` takes out. Called where that text enters digest, never on digest's own
    lines, out of which a short secret would take a word."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            alone = _SECRETS[secret]
            text = text.replace(secret, REDACTED) if alone is None else alone.sub(REDACTED, text)
    return redact_printed(text)


def redact_printed(text: str) -> str:
    """What digest prints, without the secrets of a real secret's length (no word holds one by chance), what
    follows an Authorization scheme's name, a credential-named parameter (`api_key=`, `password:`), or the user
    and password of a URL."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if _SECRETS[secret] is None and secret in text:
            text = text.replace(secret, REDACTED)
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
