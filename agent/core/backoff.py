"""Backoff policy: capped exponential backoff with full jitter, shared by every retry loop.

Pure: the random source is passed in, so tests and a thousand agents in one process each
get their own. Full jitter (a uniform draw in ``[0, min(cap, base * 2**attempt)]``) spreads a
fleet that lost its broker or controller at the same moment, so they do not return together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0 for the first retry)."""
    ceiling = float(min(cap, base * (2 ** min(attempt, 62))))
    return rng.uniform(0.0, ceiling)


def capped_exponential(attempt: int, base: float, cap: float) -> float:
    """Deterministic variant for retries a person watches (join failures): base, 2x, 4x ... cap."""
    return float(min(cap, base * (2 ** min(attempt, 62))))


@dataclass
class Backoff:
    """Attempt counter around `full_jitter`; `reset()` after a success."""

    base: float
    cap: float
    rng: random.Random
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = full_jitter(self.attempt, self.base, self.cap, self.rng)
        self.attempt += 1
        if retry_after is not None:
            # Retry-After is the server's floor; never wait longer than our own cap for it.
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self.attempt = 0
