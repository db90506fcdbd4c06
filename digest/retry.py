"""The one way digest waits before trying again: exponential backoff, capped, with optional jitter."""

from __future__ import annotations

import random

MAX_DELAY = 60.0  # seconds: no pause between two attempts is longer


def backoff(attempt: int, base: float, *, jitter: float = 0.0, cap: float = MAX_DELAY) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): base, doubled each time, at most `cap`,
    stretched by up to `jitter` (0.5: up to half again) so that many clients do not retry in step."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (1 + random.random() * jitter) if jitter else delay
