"""Incoming commands, bounded: a queue of payloads and a few workers, whatever the broker sends.

The broker link reads every message off the connection at once (it is how a lost connection
is noticed) and hands each command payload to `CommandIntake.offer`, which queues it or drops
it; a fixed number of workers hand queued payloads to the command handler, so memory and
concurrency stay bounded during a flood. Two lanes share one FIFO: payloads of up to
`SMALL_BYTES` (every genuine command envelope is a few hundred bytes) may fill `max_small`
slots, larger ones only `max_large_bytes` in all. A flood of large junk therefore never
crowds out a small genuine command; a flood of small junk can, and what does not fit is
dropped. Drops are counted and told in one `commands_dropped` error event once they stop for
`QUIET_S` (a burst is one event), at least once a minute during a long flood, and never more
than once per `MIN_GAP_S`. A
dropped command gets no reply: the controller sees the event and sends it again. No aiomqtt
here; `agent.link.mqtt` owns the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from agent.logs import Log

__all__ = ["CommandIntake"]

SMALL_BYTES = 4096
MAX_SMALL = 1024  # a flood of 1,000 genuine pings sent at once still fits
MAX_LARGE_BYTES = 4 * 1024 * 1024
WORKERS = 4
QUIET_S = 2.0
REPORT_EVERY_S = 60.0
MIN_GAP_S = 10.0


class CommandIntake:
    """Queues command payloads for `handler`, run by `WORKERS` tasks between start() and stop().

    `report(message)` is called with the text of a `commands_dropped` event when drops are
    due to be told; `handler` must not raise (one that does is logged and the worker goes on).
    """

    def __init__(
        self,
        handler: Callable[[bytes], Awaitable[None]],
        *,
        report: Callable[[str], None],
        log: Log,
        max_small: int = MAX_SMALL,
        max_large_bytes: int = MAX_LARGE_BYTES,
    ) -> None:
        self._handler, self._report, self._log = handler, report, log
        self._max_small, self._max_large = max_small, max_large_bytes
        self._queue: deque[bytes] = deque()
        self._small = self._large_bytes = 0
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._dropped = self._dropped_bytes = 0
        self._last_report: float | None = None
        self._first_drop = 0.0
        self._report_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def dropped_total(self) -> int:
        """Drops not yet reported (the count of the next `commands_dropped` event)."""
        return self._dropped

    def offer(self, payload: bytes) -> bool:
        """Queue `payload` if its lane has room; otherwise count it as dropped. Never blocks."""
        size = len(payload)
        if size <= SMALL_BYTES:
            fits = self._small < self._max_small
        else:
            fits = self._large_bytes + size <= self._max_large
        if not fits:
            self._drop(size)
            return False
        if size <= SMALL_BYTES:
            self._small += 1
        else:
            self._large_bytes += size
        self._queue.append(payload)
        self._ready.set()
        return True

    def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"command-intake-{i}")
                for i in range(WORKERS)
            ]

    async def stop(self) -> None:
        """End the workers (commands still queued are dropped with the link) and the timer."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers, timeout=1.0)
        if self._report_handle is not None:
            self._report_handle.cancel()
            self._report_handle = None

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            payload = self._queue.popleft()
            if len(payload) <= SMALL_BYTES:
                self._small -= 1
            else:
                self._large_bytes -= len(payload)
            try:
                await self._handler(payload)
            except Exception as exc:  # noqa: BLE001 - one payload must not stop the intake
                self._log.error("mqtt.command_handler_failed", error=repr(exc))

    def _drop(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._dropped:
            self._first_drop = now
        self._dropped += 1
        self._dropped_bytes += size
        due = min(now + QUIET_S, self._first_drop + REPORT_EVERY_S)
        if self._last_report is not None:
            due = max(due, self._last_report + MIN_GAP_S)
        if self._report_handle is not None:
            if self._report_handle.when() == due:
                return
            self._report_handle.cancel()
        self._report_handle = loop.call_at(due, self._tell)

    def _tell(self) -> None:
        self._report_handle = None
        n, size = self._dropped, self._dropped_bytes
        self._dropped = self._dropped_bytes = 0
        self._last_report = asyncio.get_running_loop().time()
        self._log.warning("mqtt.commands_dropped", dropped=n, bytes=size)
        self._report(
            f"{n} incoming command messages ({size} bytes) dropped: more arrived than the "
            "agent queues; they got no reply, send them again"
        )
