"""The signup form's limits, in the memory of `digest serve`: per client, per inbox, and a cap on all the
confirmation mails of an hour of which one client may spend only a share.

A client is its real address: an IPv4 client that reaches an IPv6 socket as `::ffff:a.b.c.d` is that IPv4
address (else every IPv4 client would share one /64), an IPv6 client its /64. A client's share of the cap is
counted also for its allocation (allocation_key): one VPS with a /48 is 65,536 /64s, and would else be as many
clients. Someone a limit refuses is told to come back later (429 and Retry-After), never that a mail is on its way.
"""

from __future__ import annotations

import ipaddress
import threading
import time

from digest.settings.config import ServeSettings
from digest.settings.subscribers import address_key

SHARE = 10  # one client may spend at most 1/SHARE of the hour's confirmations (at least one)


class RateLimit:
    """At most about `limit` requests per `window` seconds per key, in this process's memory: the counts of the
    current window and of the one before, weighted by how much of it still overlaps (a sliding estimate). Two
    plain dicts: memory holds the keys of two windows at most, and no call walks them."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._start = time.monotonic()
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._start
            if elapsed >= self.window:
                self._previous = self._current if elapsed < 2 * self.window else {}
                self._current = {}
                self._start += self.window * (elapsed // self.window)
                elapsed = now - self._start
            overlap = 1 - elapsed / self.window
            if self._previous.get(key, 0) * overlap + self._current.get(key, 0) >= self.limit:
                return False
            self._current[key] = self._current.get(key, 0) + 1
            return True


def client_key(host: str) -> str:
    """Who a client is, for the limits: an IPv4 address (also when it arrives IPv4-mapped on an IPv6 socket), or
    the /64 network of an IPv6 one (one host usually has a whole /64 to pick addresses from)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def allocation_key(client: str) -> str:
    """The block of addresses one customer is usually given, from a client_key: an IPv6 /48 (what RIRs and
    hosters assign an end site, RFC 6177; a /56 or a /64 lies inside it), an IPv4 /24 (the smallest block routed
    on the Internet, so a renter of many IPv4 addresses most often holds them in /24s). Larger would put strangers
    in one share (a /32 is a whole provider); smaller would let one VPS be many clients."""
    try:
        network = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return client
    prefix = 48 if network.version == 6 else 24
    return str(network.supernet(new_prefix=prefix)) if network.prefixlen > prefix else str(network)


def inbox_key(email: str) -> str:
    """The inbox an address delivers to, for the per-inbox limit: without a `+tag`, and for Gmail without dots
    (`v.i.c.tim+1@gmail.com` is `victim@gmail.com`'s inbox)."""
    local, _, domain = address_key(email).rpartition("@")
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


class SignupLimits:
    """The limits of `serve:`; each check returns why it refuses (a sentence for the page, and the seconds for
    Retry-After), or None."""

    def __init__(self, settings: ServeSettings):
        self.per_client = RateLimit(settings.subscribes_per_hour, 3600.0)
        self.per_inbox = RateLimit(settings.confirmations_per_day, 86400.0)
        self.share = RateLimit(max(1, settings.confirmations_per_hour // SHARE), 3600.0)
        self.allocation_share = RateLimit(max(1, settings.confirmations_per_hour // SHARE), 3600.0)
        self.all = RateLimit(settings.confirmations_per_hour, 3600.0)

    def client(self, client: str) -> tuple[str, int] | None:
        if not self.per_client.allow(client):
            return "Too many signups from here: try again in an hour.", 3600
        return None

    def confirmation(self, client: str, email: str) -> tuple[str, int] | None:
        """Whether a confirmation mail may be asked for: the same checks for a known address as for a new one."""
        if not self.per_inbox.allow(inbox_key(email)):
            text = "Several confirmation links went to this inbox today: use one of them, or try again tomorrow."
            return text, 86400
        # in this order: what a share refuses spends nothing of the cap everyone else uses
        if (
            not self.share.allow(client)
            or not self.allocation_share.allow(allocation_key(client))
            or not self.all.allow("")
        ):
            return "Too many signups right now: no mail was sent. Please try again in an hour.", 3600
        return None
