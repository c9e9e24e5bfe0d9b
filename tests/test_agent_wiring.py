"""The agent assembled in this process (as the fleet benchmark runs it), for wiring that no
outside observer can see quickly: which loops the watchdog watches, and that a nodeadm step
the lifecycle does not know fails rather than running something else."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest

from agent.app import Agent
from agent.configfile import load_config
from agent.testing import sample_assignment
from devtools.controller import Controller
from tests.support import HostEnv


async def test_an_unknown_step_fails_and_runs_no_nodeadm(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    agent = Agent(load_config(h.config_path, {}), stdout=io.StringIO(), env={})
    with pytest.raises(AssertionError):
        await agent.effects.run_step("reboot", None, agent.driver.state)  # type: ignore[arg-type]
    assert h.nodeadm_calls() == []  # it once fell through to `nodeadm uninstall`


async def test_the_watchdog_watches_the_controller_loop(tmp_path: Path) -> None:
    controller = Controller(registration_token="regtoken-wiring").start()
    try:
        token = tmp_path / "token"
        token.write_text(controller.registration_token)
        controller.set_assignment("edge-test-1", sample_assignment())
        h = HostEnv(
            tmp_path,
            config={
                "controller": {
                    "url": controller.url,
                    "registration_token_file": str(token),
                    "assignment_poll_s": 1,
                }
            },
        )
        agent = Agent(load_config(h.config_path, {}), stdout=io.StringIO(), env={})
        run = asyncio.create_task(agent.run())
        await agent.driver.wait_until(lambda st: st.assignment is not None)
        assert "controller" in agent.heartbeats
        assert agent.heartbeats.stale(time.monotonic()) == []
        agent.request_stop()
        assert await run == 0
    finally:
        controller.stop()
