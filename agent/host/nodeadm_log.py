"""A nodeadm step's log file: rotated before each run and followed line by line while it grows.

nodeadm's output goes to a file, never a pipe (a pipe to an agent that restarted would
SIGPIPE the step), so the agent reads what was appended since its last look. The last
``KEEP_LOGS`` runs of each step are kept as ``x.log.1`` … ``x.log.5``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

KEEP_LOGS = 5
# A line longer than this without a newline is passed on in pieces rather than held.
MAX_LINE = 64 * 1024


def rotate(log_path: Path, keep: int = KEEP_LOGS) -> None:
    """Shift ``x.log`` → ``x.log.1`` → … → ``x.log.<keep>``; the oldest falls off."""
    for i in range(keep - 1, 0, -1):
        older = log_path.with_name(f"{log_path.name}.{i}")
        if older.exists():
            os.replace(older, log_path.with_name(f"{log_path.name}.{i + 1}"))
    if log_path.exists():
        os.replace(log_path, log_path.with_name(f"{log_path.name}.1"))


class LogFollower:
    """Reads a growing file from the start and hands on each complete line."""

    def __init__(self, path: Path, on_text: Callable[[str], None]) -> None:
        self._path = path
        self._on_text = on_text
        self._pos = 0
        self._buf = b""

    def poll(self) -> None:
        try:
            with self._path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        self._pos += len(data)
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        for raw in complete:
            self._on_text(raw.decode("utf-8", "replace"))
        while len(self._buf) > MAX_LINE:
            head, self._buf = self._buf[:MAX_LINE], self._buf[MAX_LINE:]
            self._on_text(head.decode("utf-8", "replace"))

    def finish(self) -> None:
        self.poll()
        if self._buf:
            self._on_text(self._buf.decode("utf-8", "replace"))
            self._buf = b""
