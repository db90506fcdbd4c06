"""Per-subscriber unsubscribe links: an HMAC-signed token, the one-click URL (RFC 8058) and the mailto fallback.

The token carries the address and its signature (`<address, base64url>.<HMAC-SHA256, base64url>`), so the
page behind newsletter.unsubscribe_url needs only the secret to know who clicked, and nobody can
unsubscribe an address they did not receive mail at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import quote

from ..config import Newsletter
from . import SetupError, env_secret

SECRET_ENV = "DIGEST_UNSUBSCRIBE_SECRET"
MAX_LINE = 998  # bytes in a line of a message, CRLF excluded (RFC 5322 2.1.1)
LONGEST_ADDRESS = "l" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 61  # 254 characters, the most SMTP allows


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, email: str) -> bytes:
    message = b"digest-unsubscribe\0" + email.casefold().encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()[:18]


def make_token(secret: str, email: str) -> str:
    return f"{_b64(email.encode('utf-8'))}.{_b64(_signature(secret, email))}"


def verify_token(secret: str, token: str) -> str | None:
    """The address a token was made for, or None when it was not made with this secret."""
    address_part, _, signature_part = token.strip().partition(".")
    try:
        email = _unb64(address_part).decode("utf-8")
        signature = _unb64(signature_part)
    except (binascii.Error, ValueError):
        return None
    return email if hmac.compare_digest(signature, _signature(secret, email)) else None


def mailto_url(newsletter: Newsletter) -> str:
    address = parseaddr(newsletter.reply_to or newsletter.from_address)[1]
    return f"mailto:{address}?subject=unsubscribe"


def sample_url(newsletter: Newsletter) -> str:
    """The unsubscribe link of the editor's renderings (drafts/*.html, the preview): no real token."""
    if newsletter.unsubscribe_url:
        return newsletter.unsubscribe_url.format(token="preview", email="subscriber@example.com")
    return mailto_url(newsletter)


def longest_url(newsletter: Newsletter) -> str:
    """The longest unsubscribe link a subscriber can get (a 254-character address): for size checks."""
    if not newsletter.unsubscribe_url:
        return mailto_url(newsletter)
    return newsletter.unsubscribe_url.format(token=make_token("size", LONGEST_ADDRESS), email=LONGEST_ADDRESS)


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Builds each subscriber's unsubscribe URL and List-Unsubscribe header value."""

    mailto: str
    url_template: str | None = None  # newsletter.unsubscribe_url: holds {token}, maybe {email}
    secret: str | None = None

    @classmethod
    def for_newsletter(cls, newsletter: Newsletter) -> UnsubscribeLinks:
        """With an unsubscribe_url, refuse to go on without the secret that signs its tokens."""
        if not newsletter.unsubscribe_url:
            return cls(mailto=mailto_url(newsletter))
        if not newsletter.unsubscribe_url.isascii():
            raise SetupError("newsletter.unsubscribe_url: percent-encode it, a mail header holds only ASCII")
        secret = env_secret(SECRET_ENV)
        if not secret:
            raise SetupError(f"{SECRET_ENV} is not set: it signs the unsubscribe links of newsletter.unsubscribe_url "
                             f"(use a long random string, and the same one on the unsubscribe page)")
        links = cls(mailto=mailto_url(newsletter), url_template=newsletter.unsubscribe_url, secret=secret)
        longest = len(links.header_line(LONGEST_ADDRESS))
        if longest > MAX_LINE:
            raise SetupError(f"newsletter.unsubscribe_url: too long: for a 254-character address the "
                             f"List-Unsubscribe line would be {longest} bytes, over the {MAX_LINE} "
                             f"a mail line may have")
        return links

    @property
    def one_click(self) -> bool:
        """RFC 8058 one-click needs an https URL to POST to; a mailto alone does not qualify."""
        return bool(self.url_template and self.url_template.startswith("https://"))

    def url(self, email: str) -> str:
        """The link in the email's footer: the signed URL when configured, else the mailto."""
        if not self.url_template:
            return self.mailto
        return self.url_template.format(token=make_token(self.secret, email), email=quote(email, safe="@"))

    def header_line(self, email: str) -> bytes:
        """The first physical line of the List-Unsubscribe header (the one holding the URL), as sent."""
        return f"List-Unsubscribe: {self.header(email)}".split("\r\n")[0].encode("utf-8")

    def header(self, email: str) -> str:
        """The List-Unsubscribe value: the URL (if any) then the mailto fallback, folded between the two."""
        if not self.url_template:
            return f"<{self.mailto}>"
        return f"<{self.url(email)}>,\r\n <{self.mailto}>"
