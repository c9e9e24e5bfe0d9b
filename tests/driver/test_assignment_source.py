"""The assignment source in this process against the devtools controller (a real HTTP server
on loopback), feeding a real lifecycle driver whose work is faked: registration, polling,
``sync-assignment`` answering with the revision the lifecycle has taken, and the controller
loop's heartbeat kept fresh while it backs off."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.assignments import AssignmentSource
from agent.core import lifecycle as lc
from agent.core.config import Config, parse_config
from agent.driver import LifecycleDriver
from agent.host.hostroot import HostRoot
from agent.host.notify import Notifier
from agent.link.messages import Kind
from agent.outbound import Outbound
from agent.state.record import Record
from agent.state.storage import StorageHealth
from agent.testing import CapturingLog, sample_assignment
from devtools.controller import Controller

UID = "edge-source-1"


class Sent:
    """The broker link's place: what `Outbound` would publish."""

    def __init__(self) -> None:
        self.messages: list[tuple[Kind, str, dict[str, Any]]] = []

    def send(self, kind: Kind, subtopic: str, payload: dict[str, Any]) -> None:
        self.messages.append((kind, subtopic, payload))

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [p for k, _, p in self.messages if k is Kind.EVENT and p["type"] == type_]


@pytest.fixture
def controller() -> Iterator[Controller]:
    c = Controller(registration_token="regtoken-source").start()
    yield c
    c.stop()


def config_for(tmp: Path, controller: Controller, token: str) -> Config:
    (tmp / "token").write_text(token)
    (tmp / "host").mkdir(exist_ok=True)
    doc = {
        "host": {"uid": UID, "root": str(tmp / "host")},
        "state_dir": str(tmp / "state"),
        "controller": {
            "url": controller.url,
            "registration_token_file": str(tmp / "token"),
            "assignment_poll_s": 60,  # only sync_assignment polls in these tests
            "max_backoff_s": 1,
            "timeout_s": 3,
        },
    }
    return parse_config(doc)


class Rig:
    def __init__(self, cfg: Config) -> None:
        log = CapturingLog()
        self.sent = Sent()
        self.beats: list[float] = []
        storage = StorageHealth(cfg.state_dir, now=time.time, log=log)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.driver = LifecycleDriver(
            state=lc.State(),
            policy=lc.Policy(auto_join=False),
            run_step=self._never,
            run_checks=self._never,
            tracker_present=lambda: False,
            persist=lambda _s: None,
            emit=lambda t, f: None,
            on_change=lambda _o, _n: None,
            now=time.time,
            log=log,
        )
        self.out = Outbound(
            uid=UID,
            seq=iter(range(1, 10**6)).__next__,
            now=time.time,
            status_path=cfg.state_dir / "status.json",
            build_status=lambda seq, ts: {"seq": seq, "ts": ts},
            phase=lambda: str(self.driver.state.phase),
            storage=storage,
            notifier=Notifier.from_env({}, 0),
            log=log,
        )
        self.out.attach(self.sent)
        self.source = AssignmentSource(
            cfg,
            uid=UID,
            host=HostRoot(cfg.host.root),
            driver=self.driver,
            out=self.out,
            record=Record(),
            services=self._services,
            rng=random.Random(7),
            now=time.time,
            heartbeat=lambda: self.beats.append(time.monotonic()),
            log=log,
        )

    async def _never(self, *_a: Any) -> Any:
        raise AssertionError("auto_join is off: nothing runs")

    async def _services(self, units: tuple[str, ...]) -> dict[str, str]:
        return dict.fromkeys(units, "inactive")


@pytest.fixture
async def running(tmp_path: Path, controller: Controller) -> AsyncIterator[Rig]:
    controller.set_assignment(UID, sample_assignment(revision=3))
    rig = Rig(config_for(tmp_path, controller, controller.registration_token))
    tasks = [
        asyncio.create_task(rig.driver.run()),
        asyncio.create_task(rig.source.controller_loop()),
    ]
    rig.driver.post(lc.Boot(registering=True))
    yield rig
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks)
    assert rig.source.controller is not None
    await rig.source.controller.aclose()


async def test_registration_delivers_the_assignment(running: Rig) -> None:
    st = await asyncio.wait_for(running.driver.wait_until(lambda s: s.assignment is not None), 15)
    assert st.assignment is not None and st.assignment.revision == 3
    assert st.phase is lc.Phase.AWAITING_ASSIGNMENT  # auto_join is off: it waits for `join`
    assert running.sent.events("registration")[0]["state"] == "registered"


async def test_sync_answers_with_the_revision_the_lifecycle_took(
    running: Rig, controller: Controller
) -> None:
    await asyncio.wait_for(running.driver.wait_until(lambda s: s.assignment is not None), 15)
    controller.set_assignment(UID, sample_assignment(revision=4))
    # No sleep between the fetch and the answer: the driver has applied the offer by then.
    assert await asyncio.wait_for(running.source.sync(), 15) == {"revision": 4}
    assert running.driver.state.assignment is not None
    assert running.driver.state.assignment.revision == 4


async def test_a_refused_registration_is_an_error_and_the_loop_stays_alive(
    tmp_path: Path, controller: Controller
) -> None:
    rig = Rig(config_for(tmp_path, controller, "wrong-token"))
    tasks = [
        asyncio.create_task(rig.driver.run()),
        asyncio.create_task(rig.source.controller_loop()),
    ]
    rig.driver.post(lc.Boot(registering=True))
    try:
        st = await asyncio.wait_for(rig.driver.wait_until(lambda s: s.last_error is not None), 15)
        assert st.last_error is not None and st.last_error.code == "registration_refused"
        assert rig.sent.events("registration")[0]["code"] == "registration_refused"
        # Backing off stamps the heartbeat: a refused host is waiting, not stuck.
        start = len(rig.beats)

        async def beats_go_on() -> None:
            while len(rig.beats) < start + 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(beats_go_on(), 15)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        assert rig.source.controller is not None
        await rig.source.controller.aclose()
