"""Joining and leaving the list on the web: double opt-in, and the unsubscribe links' tokens honoured.

    request_subscription   POST /subscribe: a pending subscriber, and whether to mail a confirmation link
    confirmation_message   that mail: a link signed for the address, valid CONFIRM_DAYS
    confirm                GET /confirm: the link's address becomes active
    unsubscribe            POST /unsubscribe: an unsubscribe link's address is never mailed again

A confirmation token is `c2.<address>.<issued, seconds>.<sequence>.<HMAC-SHA256>` (base64url parts): the
sequence is the number its request took among the subscriber events (store migration m011), so that an
unsubscribe after it wins even within the same second. Links of release 0.x (`c1`, without a sequence) are
still honoured for their 7 days, ordered by time. Signed with the
same secret as the unsubscribe tokens (send/unsubscribe.py) but over another purpose: neither kind passes
for the other. Both are bound to the newsletter's list-id and to the address, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr

import sqlite_utils

from digest import store
from digest.send.message import PrefoldedHeader, date_header, list_id_header
from digest.send.unsubscribe import _b64, _unb64, signed_address
from digest.settings.config import Config
from digest.settings.subscribers import address_key, clean_name, is_valid_email

CONFIRM_DAYS = 7
CONFIRM_VERSION = "c2"


def _confirm_signature(secret: str, newsletter: str, email: str, issued: int, sequence: int | None) -> bytes:
    fields = ["digest-confirm", "c1" if sequence is None else CONFIRM_VERSION, newsletter, address_key(email)]
    fields += [str(issued)] + ([] if sequence is None else [str(sequence)])
    return hmac.new(secret.encode("utf-8"), "\0".join(fields).encode("utf-8"), hashlib.sha256).digest()[:18]


def make_confirm_token(secret: str, newsletter: str, email: str, issued: datetime, sequence: int = 0) -> str:
    seconds = int(issued.timestamp())
    signature = _confirm_signature(secret, newsletter, email, seconds, sequence)
    parts = [email.encode("utf-8"), str(seconds).encode("ascii"), str(sequence).encode("ascii"), signature]
    return ".".join([CONFIRM_VERSION, *(_b64(part) for part in parts)])


@dataclass(frozen=True)
class ConfirmToken:
    email: str
    issued: datetime
    sequence: int | None = None  # None: a c1 link, made before the sequence

    def expired(self, now: datetime) -> bool:
        return now - self.issued > timedelta(days=CONFIRM_DAYS)


def verify_confirm_token(secret: str, newsletter: str, token: str) -> ConfirmToken | None:
    """The address and issue time a confirmation token was signed for, or None (forged, another kind)."""
    parts = token.strip().split(".")
    if (parts[0], len(parts)) not in (("c1", 4), (CONFIRM_VERSION, 5)):
        return None
    try:
        email = _unb64(parts[1]).decode("utf-8")
        seconds = int(_unb64(parts[2]).decode("ascii"))
        sequence = int(_unb64(parts[3]).decode("ascii")) if len(parts) == 5 else None
        signature = _unb64(parts[-1])
        issued = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    if not hmac.compare_digest(signature, _confirm_signature(secret, newsletter, email, seconds, sequence)):
        return None
    return ConfirmToken(email=email, issued=issued, sequence=sequence)


def request_subscription(db: sqlite_utils.Database, email: str, name: str, now: datetime, *, per_day: int) -> bool:
    """Record a request to join; returns whether to mail a confirmation link.

    A new address is pending until confirmed. An active one needs nothing. Someone who unsubscribed may come
    back through a new confirmation; a bounced or complained address is never mailed from a form. At most
    `per_day` confirmation mails go to one address a day (UTC): a form cannot be used to flood an inbox. Requests
    never confirmed are forgotten once their last link has expired."""
    key, today, now_text = address_key(email), now.astimezone(UTC).date().isoformat(), store.iso(now)
    with store.transaction(db):
        db.execute(
            "DELETE FROM subscribers WHERE status = 'pending' AND source = 'form' AND updated_at < ?",
            [store.iso(now - timedelta(days=CONFIRM_DAYS))],
        )
        row = db.execute(
            "SELECT status, confirmations_sent, confirmation_day FROM subscribers WHERE email_key = ?", [key]
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO subscribers (email_key, email, name, status, source, joined_at, updated_at, "
                "confirmations_sent, confirmation_day) VALUES (?, ?, ?, 'pending', 'form', ?, ?, 1, ?)",
                [key, email, clean_name(name), now_text, now_text, today],
            )
            return True
        status, sent, day = row
        if status == "active" or status in ("bounced", "complained"):
            return False
        sent = sent if day == today else 0
        if sent >= per_day:
            return False
        db.execute(
            "UPDATE subscribers SET confirmations_sent = ?, confirmation_day = ?, updated_at = CASE WHEN status = "
            "'pending' THEN ? ELSE updated_at END, name = CASE WHEN ? != '' AND status = 'pending' THEN ? ELSE name "
            "END WHERE email_key = ?",
            [sent + 1, today, now_text, clean_name(name), clean_name(name), key],
        )
    return True


def confirm(db: sqlite_utils.Database, token: ConfirmToken, now: datetime) -> str:
    """Activate the address of a valid, unexpired token. Returns what happened: confirmed, already (active),
    unsubscribed (they left after this link was sent: an old link does not bring them back), blocked (bounced
    or complained), unknown (no such subscriber)."""
    key = address_key(token.email)
    with store.transaction(db):
        row = db.execute("SELECT status, updated_at, status_seq FROM subscribers WHERE email_key = ?", [key]).fetchone()
        if row is None:
            return "unknown"
        status, updated_at, status_seq = row
        if status == "active":
            return "already"
        if status in ("bounced", "complained"):
            return "blocked"
        if status == "unsubscribed" and _left_after(token, updated_at, status_seq):
            return "unsubscribed"
        db.execute(
            "UPDATE subscribers SET status = 'active', source = 'form', consent_at = ?, updated_at = ?, "
            "status_detail = 'confirmed by email' WHERE email_key = ?",
            [store.iso(now), store.iso(now), key],
        )
    return "confirmed"


def _left_after(token: ConfirmToken, updated_at: str, status_seq: int) -> bool:
    """Whether the unsubscribe came after the token's request: by the sequence; a c1 link (sent by an older
    release, good for 7 days after the upgrade) by time, as it was."""
    if token.sequence is None:
        return store.from_iso(updated_at) > token.issued
    return status_seq > token.sequence


def next_sequence(db: sqlite_utils.Database) -> int:
    """The next number of the subscriber events' sequence (inside the caller's transaction)."""
    db.execute("UPDATE subscriber_sequence SET value = value + 1")
    return db.execute("SELECT value FROM subscriber_sequence").fetchone()[0]


def unsubscribe(
    db: sqlite_utils.Database, secret: str, list_id: str, token: str, now: datetime, how: str
) -> str | None:
    """The address an unsubscribe token was signed for (under any list-id the newsletter has sent with), now
    never mailed again; None for a forged token, which changes nothing."""
    email = signed_address(db, secret, list_id, token)
    if email is None or not is_valid_email(email):
        return None
    store.suppress(db, email, "unsubscribed", now, detail=how)
    return email


def confirmation_message(config: Config, email: str, confirm_url: str, now: datetime) -> EmailMessage:
    """The mail holding the confirmation link, from the newsletter's sender with the issues' own headers
    (List-Id, Auto-Submitted), less the List-Unsubscribe: nobody is subscribed yet."""
    newsletter = config.newsletter
    message = EmailMessage()
    message["From"] = newsletter.from_address
    message["To"] = email
    if newsletter.reply_to:
        message["Reply-To"] = newsletter.reply_to
    message["Subject"] = f"Confirm your subscription to {newsletter.title}"
    message["Date"] = date_header(now.timestamp())
    domain = parseaddr(newsletter.from_address)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<confirm.{secrets.token_hex(12)}@{domain}>"
    message["List-Id"] = PrefoldedHeader("List-Id", list_id_header(newsletter))
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    text = (
        f"Someone, probably you, asked to receive {newsletter.title} at {email}.\n\n"
        f"To confirm, open this link within {CONFIRM_DAYS} days:\n\n{confirm_url}\n\n"
        f"If it was not you, ignore this message: you will not be mailed again.\n"
    )
    # The link whole on its line, not cut by quoted-printable's soft breaks: 7bit allows 998-byte lines.
    message.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    return message
