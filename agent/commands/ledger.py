"""The ledger of verified command ids: the same id never runs twice, across restarts.

Every command whose signature verified is recorded before it runs, with its name, expiry,
state and, once it ends, the final reply it got, so a repeat is answered from the record
(with `"duplicate": true`) instead of running again. The file is a JSON-lines journal in
`state_dir`: a schema header, then one line per change holding the whole entry (last line
wins). Starts and final replies are fsynced before the call returns, so a command never
runs unrecorded and a final reply is never followed, after a crash, by a second one;
progress lines are not (any non-final state after a crash means the same thing). The
journal is rewritten atomically (temp file, fsync, rename) at load and whenever it holds
more than twice as many lines as live entries.

Forgetting is safe only because of the clock: an entry is pruned once its expiry plus
`max_skew_s` is behind the never-backwards clock (agent/state/clock.py), after which the
envelope's own window check refuses the id as `expired`. The margin covers what the clock
may lose in a crash (its `persist_every_s` must not exceed `max_skew_s`). The ledger holds
at most `max_entries` ids; when full, it first prunes, then forgets final entries already
past their expiry, oldest expiry first, after flushing the clock so that "past" survives a
restart. While the agent runs, `prune_periodically` trims it on a timer as well. Running entries and entries still inside their window are never forgotten: if
those alone fill the ledger, `record_start` raises `LedgerFull` and the command must not
run. Only a controller sending more than `max_entries` commands within one TTL gets there.

A torn last line (a crash mid-append) is dropped quietly: the call that wrote it had not
returned, so its command never ran. Any other damage sets `recovered_from_corruption`, moves
the file aside as `<name>.corrupt-<epoch>`, and keeps the lines that still parse (each one
that survives is one more id that cannot be replayed).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

from agent.core.envelope import ID_PATTERN, CommandEnvelope
from agent.state.atomic import write_bytes

__all__ = [
    "FINAL_STATES",
    "RUNNING_STATES",
    "Clock",
    "CommandLedger",
    "DuplicateCommandId",
    "LedgerEntry",
    "LedgerError",
    "LedgerFull",
    "UnknownCommandId",
    "prune_periodically",
]

SCHEMA: Final = "edge-agent/command-ledger"
SCHEMA_VERSION: Final = 1
RUNNING_STATES: Final = frozenset({"accepted", "in_progress"})
FINAL_STATES: Final = frozenset({"succeeded", "failed", "canceled", "timed_out", "rejected"})
_HEADER: Final = json.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION}).encode() + b"\n"
_MIN_COMPACT_LINES: Final = 1024


class Clock(Protocol):
    """Anything with a `now()` that never goes backwards (NeverBackwardsClock)."""

    def now(self) -> float: ...


class LedgerError(Exception):
    """A ledger call that breaks the command lifecycle (a bug in the caller)."""


class DuplicateCommandId(LedgerError):
    """`record_start` for an id already in the ledger: look it up first."""


class UnknownCommandId(LedgerError):
    """Progress or a final reply for an id the ledger does not hold."""


class LedgerFull(LedgerError):
    """Every slot holds a running or still-valid command; the new one must not run."""


@dataclass(frozen=True)
class LedgerEntry:
    """One verified command id. `reply` is the recorded final reply (a fresh copy).

    The reply is held as compact JSON bytes: a parsed `run-checks` reply costs several
    times its text in Python objects (10,000 of them took 164 MiB).
    """

    id: str
    name: str
    state: str
    expires_ts: float
    started_ts: float
    reply_json: bytes | None = None

    @property
    def reply(self) -> dict[str, Any] | None:
        if self.reply_json is None:
            return None
        doc: dict[str, Any] = json.loads(self.reply_json)
        return doc

    @property
    def final(self) -> bool:
        """True once the command has its one final reply."""
        return self.state in FINAL_STATES


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_FIELDS: Final = frozenset({"id", "name", "state", "expires_ts", "started_ts", "reply"})
_REQUIRED: Final = _FIELDS - {"reply"}


def _entry_from_json(line: bytes) -> LedgerEntry | None:
    """Parse one journal line, or None when it is not a well-formed entry."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not _REQUIRED <= obj.keys() <= _FIELDS:
        return None
    cid, name, state, reply = obj["id"], obj["name"], obj["state"], obj.get("reply")
    if not (isinstance(cid, str) and ID_PATTERN.fullmatch(cid) and isinstance(name, str)):
        return None
    if not (_number(obj["expires_ts"]) and _number(obj["started_ts"])):
        return None
    final = state in FINAL_STATES
    if not (final or state in RUNNING_STATES) or final != isinstance(reply, dict):
        return None
    expires, started = float(obj["expires_ts"]), float(obj["started_ts"])
    return LedgerEntry(cid, name, state, expires, started, _compact_json(reply))


def _compact_json(reply: dict[str, Any] | None) -> bytes | None:
    return None if reply is None else json.dumps(reply, separators=(",", ":")).encode()


def _entry_line(entry: LedgerEntry) -> bytes:
    doc = asdict(entry)
    del doc["reply_json"]
    line = json.dumps(doc, separators=(",", ":")).encode()
    if entry.reply_json is not None:  # spliced in as it is, not parsed again
        line = line[:-1] + b',"reply":' + entry.reply_json + b"}"
    return line + b"\n"


class CommandLedger:
    """Verified command ids, their state and final replies, persisted in `path`."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        max_skew_s: float = 300.0,
        max_entries: int = 10_000,
        max_reply_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._path = path
        self._clock = clock
        self._grace_s = max_skew_s
        self._max_entries = max_entries
        self._max_reply_bytes = max_reply_bytes
        self._reply_bytes = 0
        self._fat: deque[str] = deque()  # ids whose reply may still hold a result, oldest first
        self._entries: dict[str, LedgerEntry] = {}
        self._fd = -1
        self._size = 0
        self._lines = 0
        self.recovered_from_corruption = False
        """True when the file was damaged at load; the daemon logs it once."""
        self.corrupt_copy: Path | None = None
        """Where the damaged file was moved, when `recovered_from_corruption`."""
        self.last_error: OSError | None = None
        """The last failed compaction (the journal is still valid), for the daemon to log."""
        self._load()
        self._interrupted = [e.id for e in self._entries.values() if not e.final]
        self.prune()
        self._compact()
        self._slim()  # a smaller max_reply_bytes than the last run's

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, command_id: str) -> LedgerEntry | None:
        """The entry for `command_id`, or None if it never verified (or was pruned)."""
        return self._entries.get(command_id)

    def interrupted(self) -> list[LedgerEntry]:
        """Entries that were running when the agent last stopped and still have no final
        reply: the daemon sends each one `failed` ("agent restarted while the command ran")
        through `record_final`, after which it is no longer listed."""
        found = (self._entries.get(cid) for cid in self._interrupted)
        return [e for e in found if e is not None and not e.final]

    # -- changes ---------------------------------------------------------------------------

    def record_start(self, envelope: CommandEnvelope) -> LedgerEntry:
        """Record a verified command as `accepted`, durably, before it runs.

        Only envelopes whose signature verified belong here (docs/controller.md): an unverified id
        must not be able to block, or answer for, a real command. Raises `DuplicateCommandId` if the id is known, `LedgerFull` if no slot can be
        freed safely, `OSError` if the write failed; in each case the command must not run.
        """
        if envelope.id in self._entries:
            raise DuplicateCommandId(envelope.id)
        if len(self._entries) >= self._max_entries:
            self._make_room()
        entry = LedgerEntry(
            envelope.id, envelope.name, "accepted", envelope.expires_ts, self._clock.now()
        )
        self._write(entry, durable=True)
        return entry

    def record_progress(self, command_id: str, state: str = "in_progress") -> None:
        """Move a running command to another running state (not fsynced: see module doc)."""
        if state not in RUNNING_STATES:
            raise ValueError(f"{state!r} is not a running state")
        entry = self._running(command_id)
        if entry.state != state:
            self._write(replace(entry, state=state), durable=False)

    def record_final(self, command_id: str, reply: dict[str, Any]) -> LedgerEntry:
        """Record the one final reply (its `state` must be final), durably, before it is sent."""
        state = reply.get("state")
        if state not in FINAL_STATES:
            raise ValueError(f"reply state {state!r} is not a final state")
        entry = self._running(command_id)
        final = replace(entry, state=state, reply_json=_compact_json(reply))
        self._write(final, durable=True)
        self._fat.append(command_id)
        self._slim()
        return final

    @property
    def reply_bytes(self) -> int:
        """What the recorded replies take, as compact JSON: at most `max_reply_bytes` once
        the oldest have been slimmed."""
        return self._reply_bytes

    def prune(self) -> int:
        """Forget final entries whose expiry plus `max_skew_s` is behind the clock."""
        cutoff = self._clock.now() - self._grace_s
        return self._forget(e for e in self._entries.values() if e.final and e.expires_ts < cutoff)

    def prune_and_compact(self) -> int:
        """The periodic trim: prune, and rewrite the journal when anything was forgotten.

        Without it a running agent forgot nothing until the ledger was full, so expired
        entries and their replies stayed in memory (a routine `run-checks` every 5 minutes
        held 10,000 replies after 35 days). A failed rewrite is kept in `last_error`.
        """
        forgotten = self.prune()
        if forgotten:
            try:
                self._compact()
            except OSError as e:
                self.last_error = e
        return forgotten

    def close(self) -> None:
        """Close the journal; the ledger must not be used afterwards."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- internals -------------------------------------------------------------------------

    def _running(self, command_id: str) -> LedgerEntry:
        entry = self._entries.get(command_id)
        if entry is None:
            raise UnknownCommandId(command_id)
        if entry.final:
            raise LedgerError(f"{command_id} already has its final reply ({entry.state})")
        return entry

    def _forget(self, entries: Iterable[LedgerEntry]) -> int:
        doomed = [e.id for e in entries]
        for cid in doomed:
            self._reply_bytes -= len(self._entries.pop(cid).reply_json or b"")
        return len(doomed)

    def _slim(self) -> None:
        """Over `max_reply_bytes`: the oldest replies lose their `result` (state, message and
        error stay, so a repeat still learns how its command ended). Bounds the ledger's
        memory by size, not only by count, and without forgetting an id early."""
        while self._reply_bytes > self._max_reply_bytes and self._fat:
            entry = self._entries.get(self._fat.popleft())
            reply = entry.reply if entry is not None else None
            if entry is None or reply is None or reply.get("result") is None:
                continue
            slim = replace(entry, reply_json=_compact_json(reply | {"result": None}))
            self._write(slim, durable=False)

    def _make_room(self) -> None:
        if self.prune():
            return
        now = self._clock.now()
        # Past expiry but inside the grace margin: safe to forget only once the clock file
        # holds a time after their expiry, or a restart could step back into their window.
        flush = getattr(self._clock, "flush", None)
        if callable(flush):
            flush()
        past = sorted(
            (e for e in self._entries.values() if e.final and e.expires_ts < now),
            key=lambda e: e.expires_ts,
        )
        excess = len(self._entries) - self._max_entries + 1
        if self._forget(past[: max(excess, 0)]) < excess:
            raise LedgerFull(f"{len(self._entries)} commands running or still valid")

    def _write(self, entry: LedgerEntry, *, durable: bool) -> None:
        line = _entry_line(entry)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            if durable:
                os.fsync(self._fd)
        except OSError:
            # Cut a partial line off so the next append does not glue onto it.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(line)
        self._lines += 1
        old = self._entries.get(entry.id)
        before = old.reply_json if old is not None else None
        self._reply_bytes += len(entry.reply_json or b"") - len(before or b"")
        self._entries[entry.id] = entry
        if self._lines > max(_MIN_COMPACT_LINES, 2 * len(self._entries)):
            try:
                self._compact()
            except OSError as e:
                # The record itself is safely in the journal, which stays valid, only
                # longer: failing the caller now would stop a command that is recorded
                # as started. Compaction is tried again on the next write.
                self.last_error = e

    def _compact(self) -> None:
        """Atomically rewrite the journal as the header plus one line per live entry."""
        data = _HEADER + b"".join(_entry_line(e) for e in self._entries.values())
        write_bytes(self._path, data)
        # From here on appends must go to the new file: the old inode is unlinked.
        new_fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.close()
        self._fd, self._size, self._lines = new_fd, len(data), 1 + len(self._entries)
        self.last_error = None

    def _load(self) -> None:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        lines.pop()  # the empty piece after the last newline, or a torn last line
        if not lines:
            # The header is only ever written by an atomic rewrite, so no crash explains
            # a file without one.
            self._set_aside()
            return
        try:
            header = json.loads(lines[0])
        except (ValueError, RecursionError):
            header = None
        known = header == {"schema": SCHEMA, "version": SCHEMA_VERSION}
        if not known:
            self._set_aside()
            # Another schema version's entries may mean something else; an unreadable
            # header with entry lines after it is still our file, damaged.
            if isinstance(header, dict) and header.get("schema") == SCHEMA:
                return
        for line in lines[1:]:
            entry = _entry_from_json(line)
            if entry is None:
                if not self.recovered_from_corruption:
                    self._set_aside()
                continue
            old = self._entries.get(entry.id)
            # A final entry never goes back to running; a later line of the same final
            # state is the same reply slimmed (see _slim).
            if old is None or not old.final or old.state == entry.state:
                self._entries[entry.id] = entry
        self._reply_bytes = sum(len(e.reply_json or b"") for e in self._entries.values())
        finals = sorted((e for e in self._entries.values() if e.final), key=lambda e: e.started_ts)
        self._fat.extend(e.id for e in finals)

    def _set_aside(self) -> None:
        """Move the damaged file out of the way, keeping it for a post-mortem."""
        stamp = int(self._clock.now())
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        n = 0
        while target.exists():
            n += 1
            target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{n}")
        os.replace(self._path, target)
        self.recovered_from_corruption = True
        self.corrupt_copy = target


async def prune_periodically(
    ledger: CommandLedger,
    interval_s: float,
    *,
    heartbeat: Callable[[], None] = lambda: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Trim `ledger` every `interval_s` for ever (a named loop of the daemon's TaskGroup)."""
    while True:
        heartbeat()
        await sleep(interval_s)
        ledger.prune_and_compact()
