"""A wall clock that never goes backwards, even across restarts (docs/controller.md).

Command validity is judged against "now", and a replayed command is refused either because
its id is in the ledger or because it has expired. Stepping the system clock back (a dead
RTC battery, an NTP mistake, an operator) would make expired commands valid again, so the
agent keeps the latest time it has seen in a small file in `state_dir` and uses the later
of that and the clock. Writes are atomic (temp file, fsync, rename) and happen at most every
`persist_every_s` of clock progress, plus on `flush()`. A restart can therefore lose up to
that much progress; the command ledger keeps ids `max_skew_s` past their expiry, which must
be at least `persist_every_s`, so no id it has forgotten can come back into its window.

The flip side: a clock that once ran far ahead pins "now" there until real time catches up
(every command is `expired` meanwhile). Removing the file resets it; the ledger still holds
every id that has not yet expired by the pinned time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from agent.state.atomic import write_bytes

__all__ = ["NeverBackwardsClock"]

SCHEMA_VERSION: Final = 1


def _read_latest(path: Path) -> float:
    """The persisted time, or -inf when the file is missing, unreadable or corrupt."""
    try:
        doc = json.loads(path.read_bytes())
        latest = doc["latest"] if doc.get("version") == SCHEMA_VERSION else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return -math.inf
    # A bool is an int to isinstance; inf or NaN would pin or poison every comparison.
    if isinstance(latest, bool) or not isinstance(latest, int | float):
        return -math.inf
    return float(latest) if math.isfinite(latest) else -math.inf


class NeverBackwardsClock:
    """`now()` is the later of the wall clock and the latest time ever seen (persisted)."""

    def __init__(
        self,
        path: Path,
        wall: Callable[[], float] = time.time,
        *,
        persist_every_s: float = 60.0,
    ) -> None:
        self._path = path
        self._wall = wall
        self._persist_every_s = persist_every_s
        self._persisted = _read_latest(path)
        self._latest = self._persisted
        self.last_error: OSError | None = None
        """The last failed background write, for the daemon to log; cleared on success."""

    @property
    def persisted(self) -> float:
        """The time last written to the file (-inf before the first write)."""
        return self._persisted

    def now(self) -> float:
        """The current time, never earlier than any value returned before.

        Persists when the time has moved `persist_every_s` past the last write. A failed
        write does not fail the caller (it is retried on the next call and kept in
        `last_error`): the in-memory value still never goes backwards.
        """
        wall = self._wall()
        self._latest = max(self._latest, wall)
        if self._latest - self._persisted >= self._persist_every_s:
            try:
                self._persist()
            except OSError as e:
                self.last_error = e
        return self._latest

    def flush(self) -> None:
        """Persist the latest time now (on a clean stop); raises `OSError` on failure."""
        self.now()
        if self._latest > self._persisted:
            self._persist()

    def _persist(self) -> None:
        latest = self._latest
        doc = {"version": SCHEMA_VERSION, "latest": latest}
        write_bytes(self._path, json.dumps(doc).encode())
        self._persisted = latest
        self.last_error = None
