"""Per-subscriber unsubscribe links: an HMAC-signed token, the one-click URL (RFC 8058) and the mailto fallback.

A token carries its version, the address and a signature: `2.<address, base64url>.<HMAC-SHA256, base64url>`,
so the page behind newsletter.unsubscribe_url needs only the secret to know who clicked, and nobody can
unsubscribe an address they did not receive mail at. The signature covers the version, the newsletter
(its list-id: a token of one newsletter means nothing to another sharing the secret) and the address as
`address_key` compares it (no Unicode case folding: `ſ@x` is not `s@x`). Tokens of release 0.1.0 (no
version) are still honoured for ASCII addresses, whose links are in inboxes already.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

import sqlite_utils

from digest import store
from digest.credentials import MAKE_SECRET, signing_secret
from digest.errors import SetupError
from digest.issue.unsubscribe_link import LONGEST_ADDRESS, mailto_url
from digest.settings.config import Newsletter
from digest.settings.subscribers import address_key, is_valid_email

SECRET_ENV = "DIGEST_UNSUBSCRIBE_SECRET"
MAX_LINE = 998  # bytes in a line of a message, CRLF excluded (RFC 5322 2.1.1)


SIGNS = "signs the unsubscribe links of newsletter.unsubscribe_url"


def unsubscribe_secret(purpose: str = SIGNS) -> str | None:
    """DIGEST_UNSUBSCRIBE_SECRET, for every command that signs or checks a link (send, run, the review copies,
    serve, unsubscribe); None when unset, refused when too short (credentials.signing_secret)."""
    return signing_secret(SECRET_ENV, purpose)


def missing_secret(purpose: str) -> SetupError:
    """The one line for a command that needs the secret and finds it unset."""
    return SetupError(f"{SECRET_ENV} is not set: it {purpose}; make one with {MAKE_SECRET}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


TOKEN_VERSION = "2"


def _signature(secret: str, newsletter: str, email: str) -> bytes:
    message = "\0".join(("digest-unsubscribe", TOKEN_VERSION, newsletter, address_key(email))).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()[:18]


def _legacy_signature(secret: str, email: str) -> bytes:
    """Release 0.1.0's signature, over the case-folded address."""
    message = b"digest-unsubscribe\0" + email.casefold().encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()[:18]


def make_token(secret: str, newsletter: str, email: str) -> str:
    """The token of `email` for the newsletter whose list-id is `newsletter`."""
    return f"{TOKEN_VERSION}.{_b64(email.encode('utf-8'))}.{_b64(_signature(secret, newsletter, email))}"


def verify_token(secret: str, newsletter: str, token: str) -> str | None:
    """The address a token was made for by this newsletter with this secret, or None."""
    parts = token.strip().split(".")
    try:
        if len(parts) == 3 and parts[0] == TOKEN_VERSION:
            email, signature = _unb64(parts[1]).decode("utf-8"), _unb64(parts[2])
            expected = _signature(secret, newsletter, email)
        elif len(parts) == 2:
            email, signature = _unb64(parts[0]).decode("utf-8"), _unb64(parts[1])
            if not email.isascii() or not is_valid_email(email):  # case folding could make it someone else's
                return None  # token; and a version-2 token re-read as one of 0.1.0 holds no address
            expected = _legacy_signature(secret, email)
        else:
            return None
    except (binascii.Error, ValueError):
        return None
    return email if hmac.compare_digest(signature, expected) else None


def signed_address(db: sqlite_utils.Database, secret: str | None, current: str, token: str) -> str | None:
    """The address a token was signed for under the newsletter's list-id or any it has sent issues with (a
    change of title or site_url changes the default one; links already in inboxes must still work), or None."""
    if not secret:
        return None
    for list_id in dict.fromkeys([current, *store.list_ids(db)]):
        email = verify_token(secret, list_id, token)
        if email is not None:
            return email
    return None


def sample_url(newsletter: Newsletter) -> str:
    """The unsubscribe link of the editor's renderings (drafts/*.html, the preview): no real token."""
    if newsletter.unsubscribe_url:
        return newsletter.unsubscribe_url.format(token="preview", email="subscriber@example.com")
    return mailto_url(newsletter)


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Builds each subscriber's unsubscribe URL and List-Unsubscribe header value."""

    mailto: str
    url_template: str | None = None  # newsletter.unsubscribe_url: holds {token}, maybe {email}
    secret: str | None = None
    newsletter: str = ""  # the list-id the tokens are bound to

    @classmethod
    def for_newsletter(cls, newsletter: Newsletter) -> UnsubscribeLinks:
        """With an unsubscribe_url, refuse to go on without the secret that signs its tokens."""
        if not newsletter.unsubscribe_url:
            return cls(mailto=mailto_url(newsletter))
        if not newsletter.unsubscribe_url.isascii():
            raise SetupError("newsletter.unsubscribe_url: percent-encode it, a mail header holds only ASCII")
        secret = unsubscribe_secret()
        if not secret:
            raise missing_secret(SIGNS)
        links = cls(
            mailto=mailto_url(newsletter),
            url_template=newsletter.unsubscribe_url,
            secret=secret,
            newsletter=newsletter.list_identifier,
        )
        longest = len(links.header_line(LONGEST_ADDRESS))
        if longest > MAX_LINE:
            raise SetupError(
                f"newsletter.unsubscribe_url: too long: for a 254-character address the "
                f"List-Unsubscribe line would be {longest} bytes, over the {MAX_LINE} "
                f"a mail line may have"
            )
        return links

    @property
    def one_click(self) -> bool:
        """RFC 8058 one-click needs an https URL to POST to; a mailto alone does not qualify."""
        return bool(self.url_template and self.url_template.startswith("https://"))

    def url(self, email: str) -> str:
        """The link in the email's footer: the signed URL when configured, else the mailto."""
        if not self.url_template:
            return self.mailto
        if self.secret is None:  # for_newsletter refuses an unsubscribe_url without its secret
            raise RuntimeError("an unsubscribe_url without the secret that signs its tokens")
        return self.url_template.format(
            token=make_token(self.secret, self.newsletter, email), email=quote(email, safe="@")
        )

    def header_line(self, email: str) -> bytes:
        """The first physical line of the List-Unsubscribe header (the one holding the URL), as sent."""
        return f"List-Unsubscribe: {self.header(email)}".split("\r\n")[0].encode("utf-8")

    def header(self, email: str, url: str | None = None) -> str:
        """The List-Unsubscribe value: the URL (if any) then the mailto fallback, folded between the two.
        `url`: `self.url(email)` when the caller has it already (its token costs an HMAC)."""
        if not self.url_template:
            return f"<{self.mailto}>"
        return f"<{url or self.url(email)}>,\r\n <{self.mailto}>"
