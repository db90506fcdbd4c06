"""The one way digest waits before trying again (exponential backoff, capped, with optional jitter), and
the one way it tells why a connection failed, for a message that names the setting to change."""

from __future__ import annotations

import random
import socket

MAX_DELAY = 60.0  # seconds: no pause between two attempts is longer


def backoff(attempt: int, base: float, *, jitter: float = 0.0, cap: float = MAX_DELAY) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): base, doubled each time, at most `cap`,
    stretched by up to `jitter` (0.5: up to half again) so that many clients do not retry in step."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (1 + random.random() * jitter) if jitter else delay


CONNECTION_REFUSED, NO_SUCH_HOST, LOOKUP_FAILED, TIMED_OUT = "refused", "no such host", "lookup failed", "timed out"


def connection_failure(exc: BaseException) -> str | None:
    """Why a connection failed, when its chain of causes says it in a way that points at a setting: nothing listens
    at the port (CONNECTION_REFUSED), the name does not resolve (NO_SUCH_HOST; LOOKUP_FAILED when the resolver says
    to try again), or no answer came in time (TIMED_OUT); None for anything else. The context is followed even
    where `raise ... from None` hid it: httpcore raises its errors so, from the socket's."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is a few links long; a cycle of contexts must not hang
        if seen is None:
            return None
        if isinstance(seen, ConnectionRefusedError):
            return CONNECTION_REFUSED
        if isinstance(seen, socket.gaierror):
            return LOOKUP_FAILED if seen.errno == socket.EAI_AGAIN else NO_SUCH_HOST
        if isinstance(seen, TimeoutError):
            return TIMED_OUT
        seen = seen.__cause__ or seen.__context__
    return None
