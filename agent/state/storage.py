"""Whether the agent can write its state directory, as a value the status can show.

A full or failing state disk must not stop the agent: memory holds what the disk cannot,
and the status says so through ``last_error`` (``state_storage_full`` or
``state_storage_failed``) until a write succeeds again. The agent's own failed writes (state,
status.json) come first; otherwise the outbox's, which it reports as text.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from agent.core import lifecycle as lc
from agent.core.codes import ErrorCode
from agent.logs import Log

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _code(full: bool) -> str:
    return ErrorCode.STATE_STORAGE_FULL if full else ErrorCode.STATE_STORAGE_FAILED


class StorageHealth:
    def __init__(self, state_dir: Path, *, now: Callable[[], float], log: Log) -> None:
        self._dir = state_dir
        self._now = now
        self._log = log
        self._own: lc.LastError | None = None
        self._outbox: lc.LastError | None = None
        # The outbox's latest write failure as text (None: fine); set once the link exists.
        self.outbox_error: Callable[[], str | None] = lambda: None

    def failed(self, what: str, e: OSError) -> bool:
        """Note a failed write; True when this is news the status must show."""
        code = _code(e.errno in _FULL)
        message = f"{what} in {self._dir}: {e.strerror or e}"
        if self._own is not None and self._own.code == code:
            return False
        self._own = lc.LastError(code, message, self._now())
        self._log.error("state.storage_failed", code=code, error=message)
        return True

    def recovered(self) -> bool:
        """A write succeeded; True when that ends a failure."""
        if self._own is None:
            return False
        self._log.info("state.storage_recovered", was=self._own.message)
        self._own = None
        return True

    def problem(self) -> lc.LastError | None:
        """For the status: the agent's own failed writes, else the outbox's."""
        if self._own is not None:
            return self._own
        text = self.outbox_error()
        if not text:
            self._outbox = None
            return None
        if self._outbox is None or self._outbox.message != text:
            full = any(os.strerror(n) in text for n in _FULL)
            self._outbox = lc.LastError(_code(full), text, self._now())
        return self._outbox


__all__ = ["StorageHealth"]
