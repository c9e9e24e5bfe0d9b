"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A crash or power cut at any point leaves either the old file or the new one, never a torn
one. Every state file of the agent is written through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One name per process and thread, so two writers never share a temp file. O_EXCL and
    # O_NOFOLLOW: whatever already sits at that name (a link planted there, a file with
    # other owners or modes) is never written through. Only a crash of an earlier process
    # with the same pid leaves one: it is removed (unlink does not follow a link) and the
    # create is tried once more.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, _CREATE, mode)
    except FileExistsError:
        tmp.unlink()
        fd = os.open(tmp, _CREATE, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: object, mode: int = 0o600) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n", mode)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
