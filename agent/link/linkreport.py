"""What the broker link tells the rest of the agent, apart from the connection itself.

`LinkReporter` turns what happened to the connections into calls of `on_link_error(code,
message)`, only when the link's condition changes (`agent.link.linkstate.LinkCondition`
decides), and makes the link's own error events: `outbox_full` (at most once a minute while
connected) and `commands_dropped` (paced by `agent.link.intake`). `OutboxSyncer` batches the
outbox's fsyncs: replies and statuses at once, other messages within `SYNC_DELAY_S`, the
fdatasync itself off the event loop. No aiomqtt here: `agent.link.mqtt` reads the broker's
reason codes and calls these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent import _compat
from agent.core.timefmt import iso
from agent.link.linkstate import LinkCondition
from agent.link.messages import describe_drops
from agent.link.outbox import Outbox
from agent.logs import Log

__all__ = ["DROP_REPORT_S", "SYNC_DELAY_S", "LinkReporter", "OutboxSyncer", "leaves"]

DROP_REPORT_S = 60.0  # at most one outbox_full event per minute while connected
SYNC_DELAY_S = 0.05  # outbox fsync batching window


class LinkReporter:
    """The link's condition and its own events; `send_event(payload)` queues an event."""

    def __init__(
        self,
        uid: str,
        log: Log,
        *,
        send_event: Callable[[dict[str, Any]], None],
        next_seq: Callable[[], int],
        now: Callable[[], float],
        on_link_error: Callable[[str | None, str | None], None] | None,
    ) -> None:
        self._uid, self._log, self._send_event = uid, log, send_event
        self._next_seq, self._now, self._on_link_error = next_seq, now, on_link_error
        self.condition = LinkCondition(uid)
        self._last_drop_report = -DROP_REPORT_S

    # -- condition -------------------------------------------------------------------------

    def failed(self, code: str, message: str, *, connected: bool) -> None:
        self._log.warning("mqtt.connect_failed", code=code, error=message)
        self.condition.connect_failed(code, message)
        self.report(connected=connected)

    def connected(self) -> None:
        self.condition.connected()
        self._last_drop_report = -DROP_REPORT_S
        self.report(connected=True)

    def lost(self, *, taken_over: bool, lasted: float, now: float, connected: bool) -> None:
        self.condition.lost(taken_over=taken_over, lasted=lasted, now=now)
        self.report(connected=connected)

    def calm(self, *, connected: bool) -> None:
        if self.condition.calm() and connected:
            self._log.info("mqtt.uid_conflict_cleared")
        self.report(connected=connected)

    def report(self, *, connected: bool) -> None:
        # Only a change of condition is news; the message may vary per attempt.
        if not self.condition.assess(connected=connected):
            return
        code, message = self.condition.error or (None, None)
        if code == "uid_conflict":
            self._log.error("mqtt.uid_conflict", message=message)
        if self._on_link_error is not None:
            self._on_link_error(code, message)

    # -- the link's own events -------------------------------------------------------------

    def outbox_drops(self, outbox: Outbox, now: float) -> None:
        """Tell what the full outbox dropped, at most once per `DROP_REPORT_S`."""
        if now - self._last_drop_report < DROP_REPORT_S:
            return
        drops = outbox.take_drops()
        if not drops:
            return
        self._last_drop_report = now
        self._log.warning("outbox.full", dropped={str(k): n for k, n in drops.items()})
        self.error("outbox_full", describe_drops(drops))

    def error(self, code: str, message: str) -> None:
        event = {"uid": self._uid, "ts": iso(self._now()), "seq": self._next_seq()}
        self._send_event(event | {"type": "error", "code": code, "message": message})


class OutboxSyncer:
    """Batches `outbox` fsyncs; `schedule(urgent=...)` after each put, `cancel()` at close."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._handle: asyncio.TimerHandle | None = None

    def schedule(self, *, urgent: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._outbox.sync()
            return
        if urgent or self._handle is None:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = loop.call_later(0 if urgent else SYNC_DELAY_S, self._sync, loop)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        job = self._outbox.begin_sync()
        if job is not None:
            loop.run_in_executor(None, job)  # fdatasync off the loop, on the shared pool


def leaves(group: _compat.BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a (nested) group, depth first: TaskGroups nest theirs."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, _compat.BaseExceptionGroup) else [exc])
    return out
