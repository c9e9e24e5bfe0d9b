"""The outbox's on-disk record format: framing, replay up to a torn tail, and rewriting.

`directory/log` is one append-only file of records `[len u32][crc32 u32][body]`. A body is a
message (kind code 1-4, id u64, seq i64, subtopic length u8, the subtopic, then the payload)
or a tombstone (0x80, then the u64 ids that left the outbox). `scan` reads a log image record
by record and stops at the first one cut short, failing its CRC or malformed: a crash
mid-append tears only the tail. `write_record` appends without leaving a torn record behind,
and `rewrite` replaces the log with a compacted image durably (temp file, fsync, rename,
directory fsync). The index of live messages and the drop policy are `agent.link.outbox`'s;
this module knows bytes and files only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from agent.link.messages import Kind

LOG_FILE = "log"
HEADER = struct.Struct("<II")  # body length, crc32(body)
MESSAGE = struct.Struct("<BQqB")  # kind code, id, seq, subtopic length
TOMBSTONE = 0x80
# Kind codes on disk are positions in this tuple, plus one: append new kinds, never reorder.
KINDS: tuple[Kind, ...] = (Kind.STATUS, Kind.NODEADM_EVENT, Kind.EVENT, Kind.REPLY)


class Message(NamedTuple):
    """A message record found by `scan`; `size` is the whole record, `head` what precedes
    the payload (both header included)."""

    id: int
    kind: Kind
    seq: int
    subtopic: str
    size: int
    head: int


class Tombstone(NamedTuple):
    """The ids of messages that left the outbox (acknowledged or dropped)."""

    ids: tuple[int, ...]


def head_size(subtopic: str) -> int:
    """Bytes of a message record before its payload."""
    return HEADER.size + MESSAGE.size + len(subtopic.encode())


def encode_message(kind: Kind, ident: int, seq: int, subtopic: str, payload: bytes) -> bytes:
    sub = subtopic.encode()
    body = b"".join((MESSAGE.pack(KINDS.index(kind) + 1, ident, seq, len(sub)), sub))
    body += payload
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def encode_tombstone(ids: list[int]) -> bytes:
    body = bytes([TOMBSTONE]) + struct.pack(f"<{len(ids)}Q", *ids)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def scan(data: memoryview) -> Iterator[tuple[int, Message | Tombstone]]:
    """The good records of a log image, each with the offset just past it, in file order.

    Ends at the first record cut short, failing its CRC or malformed; everything from there
    on is a torn tail.
    """
    size, pos = len(data), 0
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length == 0 or end > size:
            return
        body = data[pos + HEADER.size : end]
        record = _decode(body) if zlib.crc32(body) == crc else None
        if record is None:
            return
        yield end, record
        pos = end


def _decode(body: memoryview) -> Message | Tombstone | None:
    if body[0] == TOMBSTONE:
        if (len(body) - 1) % 8:
            return None
        return Tombstone(tuple(ident for (ident,) in struct.iter_unpack("<Q", body[1:])))
    if len(body) < MESSAGE.size or not 1 <= body[0] <= len(KINDS):
        return None
    code, ident, seq, sublen = MESSAGE.unpack_from(body)
    if MESSAGE.size + sublen > len(body):
        return None
    try:
        # A handful of distinct strings shared by every record.
        sub = sys.intern(bytes(body[MESSAGE.size : MESSAGE.size + sublen]).decode())
    except UnicodeDecodeError:
        return None
    head = HEADER.size + MESSAGE.size + sublen
    return Message(ident, KINDS[code - 1], seq, sub, HEADER.size + len(body), head)


# -- files ---------------------------------------------------------------------------------


def open_log(directory: Path) -> int:
    """A read-write descriptor on `directory/log`, creating both (0700, 0600) if missing."""
    log = directory / LOG_FILE
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = not log.exists()
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if created:
        fsync_dir(directory)
    return fd


def write_record(fd: int, record: bytes, offset: int) -> None:
    """Write `record` at `offset`; on failure cut the file back to `offset`, then raise."""
    try:
        pwrite_all(fd, record, offset)
    except OSError:
        # Leave no torn record behind: the next append goes at `offset` again anyway.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise


def rewrite(directory: Path, data: bytes) -> int | None:
    """Replace the log with `data`, durably; a descriptor on the new log.

    None when that failed: the old log is then intact.
    """
    tmp = directory / (LOG_FILE + ".tmp")
    fd = -1
    try:
        # One writer per state_dir: whatever sits at the temp name is a crash's leftover
        # (or planted); unlink does not follow a link, O_EXCL|O_NOFOLLOW never write through one.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        pwrite_all(fd, data, 0)
        os.fsync(fd)
        os.replace(tmp, directory / LOG_FILE)
    except OSError:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    fsync_dir(directory)
    return fd


def datasync_job(fd: int) -> Callable[[], None] | None:
    """A function making all written to `fd` so far durable, to run in a thread.

    It owns a duplicate of the descriptor, so a compaction that replaces the log meanwhile
    cannot close it under the fdatasync. None when the descriptor cannot be duplicated.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return None

    def sync() -> None:
        try:
            os.fdatasync(dup)
        except OSError:
            pass  # a failing disk shows up on the next write as storage_error
        finally:
            os.close(dup)

    return sync


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset) if size else b""
    if len(data) != size:
        raise OSError(errno.EIO, f"outbox log shorter than its index ({len(data)} < {size})")
    return data


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        done += written


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
