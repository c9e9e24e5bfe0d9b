"""Whether a file the agent re-reads may have changed since it was last read.

A file's inode, size and mtime stand for its content, except for a file changed within the
last moments: it may change again inside one tick of the filesystem's clock with the same
size (every Ed25519 PEM is 113 bytes, a rotated password is often as long as the old one), so
the same stamp. Such a stamp is not trusted and the file is read again next time (git's
"racy clean" rule). Used for the command key and the secrets struck from the log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

Stamp = tuple[int, int, int]
RACY_NS: Final = 2_000_000_000


def stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: Stamp | None = None
        self._trusted = False  # whether _seen may stand for the file's content

    def changed(self) -> bool:
        """True when the file may differ from the last time this said True (and the first
        time): the caller reads it again. A missing file is a change once."""
        now = stamp(self.path)
        if self._trusted and now == self._seen:
            return False
        self._seen = now
        self._trusted = now is None or time.time_ns() - now[2] >= RACY_NS
        return True


__all__ = ["RACY_NS", "FileWatch", "Stamp", "stamp"]
