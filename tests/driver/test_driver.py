"""The lifecycle driver in this process, with a fake step runner: it runs what `step()` asks,
one piece of work at a time, turns outcomes (and crashes, and cancels) into events, persists
every change and announces phase changes. No subprocess, no fixed sleep: every wait is on the
driver's own state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.core import lifecycle as lc
from agent.core.checks import CheckResult
from agent.core.codes import Step
from agent.driver import LifecycleDriver
from agent.testing import CapturingLog, sample_assignment_obj


class FakeHost:
    """The driver's runners, recording what they were asked; a step can be held open."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.checks = 0
        self.persisted: list[lc.State] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hold: asyncio.Event | None = None
        self.crash: str | None = None  # a step name whose run raises
        # the driver's cancel, called on the loop's next turn after this phase is announced
        self.cancel_when_announced: lc.Phase | None = None
        self.cancel: Callable[[], bool] = lambda: False

    def emit(self, type_: str, fields: dict[str, Any]) -> None:
        self.events.append((type_, fields))
        if type_ == "phase" and fields["to"] == self.cancel_when_announced:
            # The phase is announced just before its work task is created; a callback queued
            # now runs after that and before the task's first instruction (the loop's ready
            # queue is first in, first out).
            asyncio.get_running_loop().call_soon(self.cancel)

    async def run_step(self, step: Step, args: lc.OpArgs, state: lc.State) -> lc.StepDone:
        self.steps.append(str(step))
        if self.hold is not None:
            await self.hold.wait()
        if self.crash == step:
            raise RuntimeError(f"{step} blew up")
        node = "mi-0123456789abcdef0" if step == Step.INIT else None
        return lc.StepDone(step, ok=True, node_name=node)

    async def run_checks(self, state: lc.State) -> list[CheckResult]:
        self.checks += 1
        return []


@pytest.fixture
async def rig() -> AsyncIterator[tuple[LifecycleDriver, FakeHost, CapturingLog]]:
    host, log = FakeHost(), CapturingLog()
    driver = LifecycleDriver(
        state=lc.State(),
        policy=lc.Policy(retry_backoff_s=3600),
        run_step=host.run_step,
        run_checks=host.run_checks,
        tracker_present=lambda: bool(host.steps),
        persist=host.persisted.append,
        emit=host.emit,
        on_change=lambda _o, _n: None,
        now=lambda: 1000.0,
        log=log,
    )
    host.cancel = driver.cancel_work
    task = asyncio.create_task(driver.run())
    yield driver, host, log
    task.cancel()
    await asyncio.wait([task])


def joined(st: lc.State) -> bool:
    return st.phase is lc.Phase.JOINED


async def test_an_assignment_runs_checks_install_and_init_once_each(rig: Any) -> None:
    driver, host, _ = rig
    driver.post(lc.Boot(registering=False))
    driver.post(lc.AssignmentArrived(sample_assignment_obj()))
    st = await asyncio.wait_for(driver.wait_until(joined), 10)
    assert host.checks == 1
    assert host.steps == ["install", "init"]
    assert st.node_name == "mi-0123456789abcdef0"
    assert host.persisted[-1] == st
    phases = [f["to"] for t, f in host.events if t == "phase"]
    assert phases == ["awaiting_assignment", "preflight", "installing", "joining", "joined"]


async def test_a_crashed_step_fails_the_phase_and_is_logged(rig: Any) -> None:
    driver, host, log = rig
    host.crash = "install"
    driver.post(lc.Boot(registering=False))
    driver.post(lc.AssignmentArrived(sample_assignment_obj()))
    st = await asyncio.wait_for(driver.wait_until(lambda s: s.phase is lc.Phase.FAILED), 10)
    assert st.last_error is not None and st.last_error.code == "nodeadm_failed"
    assert "install blew up" in st.last_error.message
    assert host.steps == ["install"]  # no retry before the (long) backoff
    assert log.events("nodeadm.crashed")


async def test_work_in_flight_is_named_and_a_cancel_fails_it_without_retry(rig: Any) -> None:
    driver, host, _ = rig
    host.hold = asyncio.Event()
    driver.post(lc.Boot(registering=False))
    driver.post(lc.AssignmentArrived(sample_assignment_obj()))

    async def started() -> None:
        while host.steps != ["install"]:
            await asyncio.sleep(0)

    await asyncio.wait_for(started(), 10)
    assert driver.busy == "install"
    assert driver.cancel_work()
    st = await asyncio.wait_for(driver.wait_until(lambda s: s.phase is lc.Phase.FAILED), 10)
    assert st.last_error is not None and st.last_error.code == "canceled"
    assert driver.busy is None
    await asyncio.wait_for(driver.settled(), 10)
    assert host.steps == ["install"]  # no retry


async def test_a_cancel_before_the_step_begins_still_fails_it(rig: Any) -> None:
    """A cancel command can land between a step's start and its first instruction (seen on
    Python 3.12): its body never runs, and the phase must still end as canceled, not hang."""
    driver, host, _ = rig
    host.cancel_when_announced = lc.Phase.INSTALLING
    driver.post(lc.Boot(registering=False))
    driver.post(lc.AssignmentArrived(sample_assignment_obj()))
    st = await asyncio.wait_for(driver.wait_until(lambda s: s.phase is lc.Phase.FAILED), 10)
    assert st.last_error is not None and st.last_error.code == "canceled"
    assert driver.busy is None
    await asyncio.wait_for(driver.settled(), 10)
    assert host.steps == []  # it never ran, and is not retried


async def test_settled_returns_once_every_earlier_event_is_applied(rig: Any) -> None:
    driver, _, _ = rig
    driver.post(lc.Boot(registering=True))
    driver.post(lc.Registered())
    driver.post(lc.ErrorSeen("broker_unreachable", "no broker"))
    st = await asyncio.wait_for(driver.settled(), 10)
    assert st.phase is lc.Phase.AWAITING_ASSIGNMENT
    assert st.last_error is not None and st.last_error.code == "broker_unreachable"
