"""The unsubscribe link as far as the issue stage needs it: the mailto fallback, and the longest link a
subscriber can get, whose length the size checks count. The signed links themselves are made by the send
stage (send/unsubscribe.py), which checks that its longest token has TOKEN_CHARS characters.
"""

from __future__ import annotations

from email.utils import parseaddr

from digest.settings.config import Newsletter

LONGEST_ADDRESS = "l" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 61  # 254 characters, the most SMTP allows
# The length of an unsubscribe token for LONGEST_ADDRESS: "2.", the address in base64url (339 characters), ".",
# the 18-byte signature in base64url (24). Only the length matters to a size check.
TOKEN_CHARS = 366


def mailto_url(newsletter: Newsletter) -> str:
    address = parseaddr(newsletter.reply_to or newsletter.from_address)[1]
    return f"mailto:{address}?subject=unsubscribe"


def longest_url(newsletter: Newsletter) -> str:
    """The longest unsubscribe link a subscriber can get (a 254-character address): for size checks."""
    if not newsletter.unsubscribe_url:
        return mailto_url(newsletter)
    return newsletter.unsubscribe_url.format(token="t" * TOKEN_CHARS, email=LONGEST_ADDRESS)
