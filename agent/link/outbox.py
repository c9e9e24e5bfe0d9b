"""The bounded on-disk FIFO of QoS 1 messages that survives agent restarts (contract §3).

`directory/log` is one append-only file of records `[len u32][crc32 u32][body]`, a body being
a message (kind, id, seq, subtopic, payload) or a tombstone naming ids that left, acknowledged
by the broker (`ack`, after its PUBACK) or dropped. Opening replays the log and stops at the
first record cut short or failing its CRC (a crash mid-append tears only the tail), truncating
the file there. One file, so one descriptor per agent. Once dead bytes (messages gone,
tombstones) outweigh the live ones, the log is rewritten, or just truncated when nothing is
live, so it stays under about twice `max_bytes`.

Durability: `put` hands the record to the kernel before returning, so it survives a crash of
the agent. Nothing fsyncs on the hot path: the owner runs the function `begin_sync()` returns
off the event loop (the link does within 50 ms, at once for status and replies). After a power
cut the last few tombstones may be missing, so a few acknowledged messages go out again, which
the contract allows (consumers de-duplicate by `seq`).

A failing write (ENOSPC, EDQUOT, EIO, EFBIG) sets `storage_error` and keeps new messages in a
bounded memory tail that moves to disk, in order, once a retry (every `retry_storage_s`)
succeeds. When full, the outbox (or the memory tail) drops superseded statuses first, then
nodeadm events, then other events (oldest first), then the latest status, replies last; an
incoming message that would itself be next is not stored. `take_drops()` counts them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.link.messages import Kind, Outgoing

_HEADER = struct.Struct("<II")  # body length, crc32(body)
_MESSAGE = struct.Struct("<BQqB")  # kind code, id, seq, subtopic length
_TOMBSTONE = 0x80
_CODES: tuple[Kind, ...] = (Kind.STATUS, Kind.NODEADM_EVENT, Kind.EVENT, Kind.REPLY)
COMPACT_MIN_BYTES = 256 * 1024
MEMORY_TAIL_BYTES = 1024 * 1024
RETRY_STORAGE_S = 5.0


@dataclass(slots=True, eq=False)
class _Rec:
    """Index entry of a live message; `offset` -1 means it lives in memory only (`payload`)."""

    id: int
    kind: Kind
    seq: int
    subtopic: str
    size: int  # whole record, header included
    head: int  # record bytes before the payload
    offset: int = -1
    payload: bytes | None = None


def _encode(rec: _Rec, payload: bytes) -> bytes:
    sub = rec.subtopic.encode()
    body = b"".join((_MESSAGE.pack(_CODES.index(rec.kind) + 1, rec.id, rec.seq, len(sub)), sub))
    body += payload
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class Outbox:
    """One agent's outbox in `directory`; not thread-safe (the link's event loop owns it)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        memory_tail_bytes: int = MEMORY_TAIL_BYTES,
        retry_storage_s: float = RETRY_STORAGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._memory_cap = min(memory_tail_bytes, max_bytes)
        self._retry_s, self._clock = retry_storage_s, clock
        self._index: OrderedDict[int, _Rec] = OrderedDict()
        self._classes: dict[Kind, deque[int]] = {kind: deque() for kind in _CODES}
        self._drops: dict[Kind, int] = {}
        self._live = self._disk_live = self._memory = 0
        self._end = 0  # logical end of `log`; bytes past it are debris of a failed write
        self._next_id = 1
        self._fd: int | None = None
        self._dirty = False
        self._failed_at = 0.0
        self.storage_error: str | None = None
        self.torn_bytes = 0
        self._open()

    # -- public ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    @property
    def bytes_used(self) -> int:
        """Bytes of the live records (headers included), on disk and in memory."""
        return self._live

    @property
    def dirty(self) -> bool:
        """Written since the last `begin_sync()`."""
        return self._dirty

    def put(self, msg: Outgoing) -> None:
        """Queue `msg` under the next id (its own `id` is ignored), dropping by policy if full."""
        if msg.kind not in self._classes:
            raise ValueError(f"{msg.kind} messages are never queued")
        sub = sys.intern(msg.subtopic)  # a handful of distinct strings shared by every record
        head = _HEADER.size + _MESSAGE.size + len(sub.encode())
        rec = _Rec(self._next_id, msg.kind, msg.seq, sub, head + len(msg.payload), head)
        self._next_id += 1
        to_disk = self._disk_usable()
        if not self._make_room(rec.kind, rec.size, memory=not to_disk):
            self._count_drop(rec.kind)
            return
        if to_disk:
            try:
                rec.offset = self._append(_encode(rec, msg.payload))
            except OSError as exc:
                self._fail(exc)
                if not self._make_room(rec.kind, rec.size, memory=True):
                    self._count_drop(rec.kind)
                    return
        if rec.offset < 0:
            rec.payload = msg.payload
        self._add(rec)

    def peek(self, n: int, after: int = 0) -> list[Outgoing]:
        """The first `n` pending messages with an id above `after`, oldest first."""
        recs: list[_Rec] = []
        for rec in self._index.values():
            if rec.id > after:
                recs.append(rec)
                if len(recs) >= n:
                    break
        return [
            Outgoing(rec.kind, rec.subtopic, bytes(data[rec.head :]), rec.seq, rec.id)
            for rec, data in zip(recs, self._read(recs), strict=True)
        ]

    def pending(self) -> list[Outgoing]:
        return self.peek(len(self._index))

    def is_pending(self, ident: int) -> bool:
        return ident in self._index

    def ack(self, ident: int) -> None:
        """The broker acknowledged `ident`: it leaves the outbox (unknown ids are ignored)."""
        if ident in self._index:
            if self._remove(ident).offset >= 0:
                self._tombstone([ident])
            self._maybe_compact()

    def take_drops(self) -> dict[Kind, int]:
        """Messages dropped for lack of room since the last call, by kind."""
        drops, self._drops = self._drops, {}
        return drops

    def begin_sync(self) -> Callable[[], None] | None:
        """A function making all written so far durable, to run in a thread; None if clean.

        It owns a duplicate of the descriptor, so a compaction that replaces the log meanwhile
        cannot close it under the fdatasync.
        """
        if not self._dirty or self._fd is None:
            return None
        self._dirty = False
        try:
            fd = os.dup(self._fd)
        except OSError:
            return None

        def sync() -> None:
            try:
                os.fdatasync(fd)
            except OSError:
                pass  # a failing disk shows up on the next write as storage_error
            finally:
                os.close(fd)

        return sync

    def sync(self) -> None:
        job = self.begin_sync()
        if job is not None:
            job()

    def close(self) -> None:
        self.sync()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # -- opening and replay ----------------------------------------------------------------

    def _open(self) -> None:
        log = self.directory / "log"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = not log.exists()
            self._fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._replay()
            if created:
                _fsync_dir(self.directory)
        except OSError as exc:
            # An unusable state dir must not stop the agent: it runs on a memory-only outbox
            # for this process's lifetime (a later retry could only half-load the log).
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
            self.storage_error = f"outbox unavailable in {self.directory}: {exc}"
            return
        self._maybe_compact()

    def _replay(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        data = memoryview(_pread_exact(self._fd, size, 0))
        pos = 0
        while pos + _HEADER.size <= size:
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if length == 0 or end > size:
                break
            body = data[pos + _HEADER.size : end]
            if zlib.crc32(body) != crc or not self._replay_record(body, pos):
                break
            pos = end
        if pos < size:
            self.torn_bytes = size - pos
            os.ftruncate(self._fd, pos)
        self._end = pos

    def _replay_record(self, body: memoryview, offset: int) -> bool:
        if body[0] == _TOMBSTONE:
            if (len(body) - 1) % 8:
                return False
            for (ident,) in struct.iter_unpack("<Q", body[1:]):
                if ident in self._index:
                    self._remove(ident)
            return True
        if len(body) < _MESSAGE.size or not 1 <= body[0] <= len(_CODES):
            return False
        code, ident, seq, sublen = _MESSAGE.unpack_from(body)
        if _MESSAGE.size + sublen > len(body):
            return False
        try:
            sub = sys.intern(bytes(body[_MESSAGE.size : _MESSAGE.size + sublen]).decode())
        except UnicodeDecodeError:
            return False
        self._next_id = max(self._next_id, ident + 1)
        if ident not in self._index:
            head, size = _HEADER.size + _MESSAGE.size + sublen, _HEADER.size + len(body)
            self._add(_Rec(ident, _CODES[code - 1], seq, sub, size, head, offset))
        return True

    # -- index, room and drops -------------------------------------------------------------

    def _add(self, rec: _Rec) -> None:
        self._index[rec.id] = rec
        self._classes[rec.kind].append(rec.id)
        self._live += rec.size
        if rec.offset >= 0:
            self._disk_live += rec.size
        else:
            self._memory += rec.size

    def _remove(self, ident: int) -> _Rec:
        rec = self._index.pop(ident)
        self._live -= rec.size
        if rec.offset >= 0:
            self._disk_live -= rec.size
        else:
            self._memory -= rec.size
        # Class queues hold ids in order; trimming both ends keeps [0] the oldest live id and
        # [-1] the newest, and bounds a queue by its live records plus holes between them.
        ids = self._classes[rec.kind]
        while ids and ids[0] not in self._index:
            ids.popleft()
        while ids and ids[-1] not in self._index:
            ids.pop()
        return rec

    def _make_room(self, kind: Kind, size: int, *, memory: bool) -> bool:
        """Drop by policy until `size` more bytes fit; False when the new message goes."""
        if size > self.max_bytes or (memory and size > self._memory_cap):
            return False
        victims: list[int] = []
        keep = True
        while keep and (
            self._live + size > self.max_bytes
            or (memory and self._memory + size > self._memory_cap)
        ):
            # Over the overall bound any record may go; over the memory cap only memory ones
            # free what is short.
            victim = self._victim(kind, only_memory=self._live + size <= self.max_bytes)
            if victim is None:
                keep = False
            else:
                rec = self._remove(victim)
                self._count_drop(rec.kind)
                if rec.offset >= 0:
                    victims.append(victim)
        if victims:
            self._tombstone(victims)
            self._maybe_compact()
        return keep

    def _victim(self, kind: Kind, only_memory: bool) -> int | None:
        statuses = self._classes[Kind.STATUS]
        newest = statuses[-1] if statuses else None
        # Every pending status is superseded by a newer pending one, or by an incoming status.
        found = self._first(Kind.STATUS, only_memory, None if kind is Kind.STATUS else newest)
        if found is not None:
            return found
        for cls in (Kind.NODEADM_EVENT, Kind.EVENT):
            found = self._first(cls, only_memory)
            if found is not None or kind is cls:
                return found
        if kind is Kind.STATUS:
            return None
        if newest is not None and not (only_memory and self._index[newest].offset >= 0):
            return newest
        return self._first(Kind.REPLY, only_memory)

    def _first(self, cls: Kind, only_memory: bool, exclude: int | None = None) -> int | None:
        for ident in self._classes[cls]:
            rec = self._index.get(ident)
            if rec is not None and ident != exclude and not (only_memory and rec.offset >= 0):
                return ident
        return None

    def _count_drop(self, kind: Kind) -> None:
        self._drops[kind] = self._drops.get(kind, 0) + 1

    def _tombstone(self, ids: list[int]) -> None:
        if self.storage_error is not None or self._fd is None:
            return  # without a tombstone a restart may bring them back: harmless
        body = bytes([_TOMBSTONE]) + struct.pack(f"<{len(ids)}Q", *ids)
        try:
            self._append(_HEADER.pack(len(body), zlib.crc32(body)) + body)
        except OSError as exc:
            self._fail(exc)

    # -- storage ---------------------------------------------------------------------------

    def _append(self, record: bytes) -> int:
        assert self._fd is not None
        offset = self._end
        try:
            _pwrite_all(self._fd, record, offset)
        except OSError:
            # Leave no torn record behind: the next append goes at `offset` again anyway.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)
            raise
        self._end = offset + len(record)
        self._dirty = True
        return offset

    def _fail(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self.storage_error = f"outbox write failed in {self.directory}: {reason}"
        self._failed_at = self._clock()

    def _disk_usable(self) -> bool:
        """True when the next record can go to disk, moving the memory tail there first."""
        if self._fd is None:
            return False
        if self.storage_error is None:
            return True
        if self._clock() - self._failed_at < self._retry_s:
            return False
        try:
            os.ftruncate(self._fd, self._end)
            for rec in [r for r in self._index.values() if r.offset < 0]:
                assert rec.payload is not None
                rec.offset = self._append(_encode(rec, rec.payload))
                rec.payload = None
                self._memory -= rec.size
                self._disk_live += rec.size
        except OSError as exc:
            self._fail(exc)
            return False
        self.storage_error = None
        return True

    def _maybe_compact(self) -> None:
        dead = self._end - self._disk_live
        if (
            self._fd is None
            or self.storage_error
            or dead <= max(COMPACT_MIN_BYTES, self._disk_live)
        ):
            return
        if self._disk_live == 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                self._end = 0
            return
        recs = [rec for rec in self._index.values() if rec.offset >= 0]
        data = b"".join(self._read(recs))
        tmp = self.directory / "log.tmp"
        fd = -1
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
            os.replace(tmp, self.directory / "log")
        except OSError:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return  # the old log is intact; try again after the next ack
        _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd, self._end, self._dirty, pos = fd, len(data), False, 0
        for rec in recs:
            rec.offset, pos = pos, pos + rec.size

    def _read(self, recs: list[_Rec]) -> list[memoryview]:
        """Whole records, one pread per contiguous run on disk (memory ones re-encoded)."""
        out: list[memoryview] = []
        run: list[_Rec] = []

        def flush() -> None:
            if run and self._fd is not None:
                start = run[0].offset
                view = memoryview(
                    _pread_exact(self._fd, run[-1].offset + run[-1].size - start, start)
                )
                out.extend(view[r.offset - start : r.offset - start + r.size] for r in run)
            run.clear()

        for rec in recs:
            if rec.offset < 0:
                flush()
                assert rec.payload is not None
                out.append(memoryview(_encode(rec, rec.payload)))
                continue
            if run and rec.offset != run[-1].offset + run[-1].size:
                flush()
            run.append(rec)
        flush()
        return out


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset) if size else b""
    if len(data) != size:
        raise OSError(errno.EIO, f"outbox log shorter than its index ({len(data)} < {size})")
    return data


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        done += written


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
