"""The lifecycle driver: carries out what the pure state machine decides.

It owns the agent's `lifecycle.State`, feeds it events (boot, assignments, check results,
nodeadm outcomes, health, commands, a one-second tick for retries), persists it after every
change, and runs the actions: one piece of work at a time (checks or a nodeadm step), so there
are never two nodeadm runs at once. Phase changes and notes are handed to ``emit`` as events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent import _compat
from agent.core import lifecycle as lc
from agent.core.checks import CheckResult
from agent.core.codes import Step
from agent.logs import Log


@dataclass(frozen=True)
class _Barrier:
    """Not a lifecycle event: resolved when the loop reaches it, i.e. once every event
    posted before it has been applied (see `LifecycleDriver.settled`)."""

    reached: asyncio.Future[None]


StepRunner = Callable[[Step, lc.OpArgs, lc.State], Awaitable[lc.StepDone]]
ChecksRunner = Callable[[lc.State], Awaitable[list[CheckResult]]]


async def _no_kubelet() -> str | None:
    return None


class LifecycleDriver:
    def __init__(
        self,
        *,
        state: lc.State,
        policy: lc.Policy,
        run_step: StepRunner,
        run_checks: ChecksRunner,
        tracker_present: Callable[[], bool],
        persist: Callable[[lc.State], None],
        emit: Callable[[str, dict[str, Any]], None],
        on_change: Callable[[lc.State, lc.State], None],
        now: Callable[[], float],
        log: Log,
        heartbeat: Callable[[], None] | None = None,
        kubelet_version: Callable[[], Awaitable[str | None]] = _no_kubelet,
    ) -> None:
        self.state = state
        self.policy = policy
        self._run_step = run_step
        self._run_checks = run_checks
        self._tracker_present = tracker_present
        self._kubelet_version = kubelet_version
        self._persist = persist
        self._emit = emit
        self._on_change = on_change
        self._now = now
        self._log = log
        self._heartbeat = heartbeat
        self._events: asyncio.Queue[lc.Event | _Barrier] = asyncio.Queue()
        self._pending: collections.deque[lc.Action] = collections.deque()
        self._work: asyncio.Task[None] | None = None
        self._work_name: str | None = None
        self._changed = asyncio.Condition()

    # ---- inputs -------------------------------------------------------------------------
    def post(self, event: lc.Event) -> None:
        self._events.put_nowait(event)

    async def settled(self) -> lc.State:
        """The state once every event posted so far has been applied."""
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._events.put_nowait(_Barrier(reached))
        await reached
        return self.state

    @property
    def busy(self) -> str | None:
        """The piece of work in flight (``checks`` or a nodeadm step), if any."""
        return self._work_name

    def cancel_work(self) -> bool:
        if self._work is not None and not self._work.done():
            self._work.cancel()
            return True
        return False

    async def wait_until(self, predicate: Callable[[lc.State], bool]) -> lc.State:
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.state))
            return self.state

    # ---- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                try:
                    async with _compat.timeout(1.0):
                        ev: lc.Event | _Barrier = await self._events.get()
                except TimeoutError:
                    ev = lc.Tick()
                if self._heartbeat:
                    self._heartbeat()
                if isinstance(ev, _Barrier):
                    if not ev.reached.done():
                        ev.reached.set_result(None)
                    continue
                await self._apply(ev)
        finally:
            await self._stop_work()

    async def _apply(self, ev: lc.Event) -> None:
        old = self.state
        new, actions = lc.step(old, ev, self._now(), self.policy)
        if new != old:
            self.state = new
            self._persist(new)
            if new.phase != old.phase:
                self._emit(
                    "phase", {"from": str(old.phase), "to": str(new.phase), "reason": new.reason}
                )
                self._log.info(
                    "phase", from_phase=str(old.phase), to=str(new.phase), reason=new.reason
                )
            self._on_change(old, new)
            async with self._changed:
                self._changed.notify_all()
        for action in actions:
            if isinstance(action, lc.Note):
                self._emit(action.type, {"message": action.message, **action.fields})
            else:
                self._pending.append(action)
        self._start_next()

    def _start_next(self) -> None:
        if (self._work is not None and not self._work.done()) or not self._pending:
            return
        action = self._pending.popleft()
        canceled: lc.Event
        if isinstance(action, lc.RunChecks):
            self._work_name = "checks"
            self._work = asyncio.create_task(self._checks(), name="lifecycle-checks")
            canceled = lc.ChecksDone(blocking=(), tracker_present=False, canceled=True)
        elif isinstance(action, lc.RunStep):
            self._work_name = action.step
            self._work = asyncio.create_task(self._step(action), name=f"nodeadm-{action.step}")
            canceled = lc.StepDone(
                action.step, ok=False, canceled=True, message=f"nodeadm {action.step} canceled"
            )
        else:
            return
        self._work.add_done_callback(lambda task: self._work_ended(task, canceled))

    def _work_ended(self, task: asyncio.Task[None], canceled: lc.Event) -> None:
        """A finished piece of work posts its own result; a canceled one is reported here, as
        it may have been canceled before it began (its body, and any handler there, never ran).
        The tick after it starts what is queued."""
        if self._work is task:
            self._work_name = None
        if task.cancelled():
            self.post(canceled)
        self.post(lc.Tick())

    async def _checks(self) -> None:
        try:
            results = await self._run_checks(self.state)
            blocking = tuple(r.id for r in results if r.blocking)
            kubelet = None if blocking else await self._kubelet_version()
            self.post(
                lc.ChecksDone(
                    blocking=blocking,
                    tracker_present=self._tracker_present(),
                    kubelet_version=kubelet,
                )
            )
        except Exception as e:  # noqa: BLE001 - a crashed check run must not stop the agent
            self._log.error("checks.crashed", error=str(e), exc_info=True)
            self.post(lc.ChecksDone(blocking=("checks.crashed",), tracker_present=False))

    async def _step(self, action: lc.RunStep) -> None:
        try:
            done = await self._run_step(action.step, action.args, self.state)
        except Exception as e:  # noqa: BLE001 - report, retry later; never crash the loop
            self._log.error("nodeadm.crashed", step=action.step, error=str(e), exc_info=True)
            done = lc.StepDone(action.step, ok=False, code="nodeadm_failed", message=str(e))
        self.post(done)

    async def _stop_work(self) -> None:
        if self._work is not None and not self._work.done():
            self._work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._work
