"""The bounded on-disk FIFO of QoS 1 messages that survives agent restarts (docs/api/asyncapi.yaml).

`directory/log` is one append-only file of records (the format is `agent.link.outboxlog`'s):
messages, and tombstones naming ids that left, acknowledged by the broker (`ack`, after its
PUBACK) or dropped. Opening replays the log and stops at the first record cut short or
failing its CRC (a crash mid-append tears only the tail), truncating the file there. One
file, so one descriptor per agent. Once dead bytes (messages gone, tombstones) outweigh the
live ones, the log is rewritten, or just truncated when nothing is live, so it stays under
about twice `max_bytes`.

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
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.link.messages import Kind, Outgoing
from agent.link.outboxlog import (
    KINDS,
    Message,
    Tombstone,
    datasync_job,
    encode_message,
    encode_tombstone,
    head_size,
    open_log,
    pread_exact,
    rewrite,
    scan,
    write_record,
)

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
    return encode_message(rec.kind, rec.id, rec.seq, rec.subtopic, payload)


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
        self._classes: dict[Kind, deque[int]] = {kind: deque() for kind in KINDS}
        self._drops: dict[Kind, int] = {}
        self.dropped_total: dict[Kind, int] = {}  # since start, never taken (for metrics)
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
        head = head_size(sub)
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
        return datasync_job(self._fd)

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
        try:
            self._fd = open_log(self.directory)
            self._replay()
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
        end = 0  # past the last good record, once the loop is done
        for end, record in scan(memoryview(pread_exact(self._fd, size, 0))):
            self._replay_record(record, end)
        if end < size:
            self.torn_bytes = size - end
            os.ftruncate(self._fd, end)
        self._end = end

    def _replay_record(self, record: Message | Tombstone, end: int) -> None:
        if isinstance(record, Tombstone):
            for ident in record.ids:
                if ident in self._index:
                    self._remove(ident)
            return
        self._next_id = max(self._next_id, record.id + 1)
        if record.id not in self._index:
            kind, seq, sub = record.kind, record.seq, record.subtopic
            self._add(_Rec(record.id, kind, seq, sub, record.size, record.head, end - record.size))

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
        self.dropped_total[kind] = self.dropped_total.get(kind, 0) + 1

    def _tombstone(self, ids: list[int]) -> None:
        if self.storage_error is not None or self._fd is None:
            return  # without a tombstone a restart may bring them back: harmless
        try:
            self._append(encode_tombstone(ids))
        except OSError as exc:
            self._fail(exc)

    # -- storage ---------------------------------------------------------------------------

    def _append(self, record: bytes) -> int:
        assert self._fd is not None
        offset = self._end
        write_record(self._fd, record, offset)
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
        fd = rewrite(self.directory, data)
        if fd is None:
            return  # the old log is intact; try again after the next ack
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
                    pread_exact(self._fd, run[-1].offset + run[-1].size - start, start)
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
