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


def test_the_mqtt_password_is_struck_from_the_log_also_after_rotation(tmp_path: Path) -> None:
    """The broker password is a secret like the tokens: a library's error text or a debug
    line that quotes it must not carry it into the journal."""
    password = tmp_path / "mqtt-password"
    password.write_text("broker-pass-0a1b2c3d4e\n")
    h = HostEnv(
        tmp_path,
        local_assignment=sample_assignment(),
        config={
            "mqtt": {
                "url": "mqtt://127.0.0.1:1",
                "username": "edge",
                "password_file": str(password),
            },
            "commands": {"allow_unsigned": True},
        },
    )
    out = io.StringIO()
    agent = Agent(load_config(h.config_path, {}), stdout=out, env={})
    agent.log.error("link.refused", detail="auth failed for edge:broker-pass-0a1b2c3d4e")
    password.write_text("broker-pass-rotated-9f8e7d\n")
    agent.log.error("link.refused", detail="auth failed for edge:broker-pass-rotated-9f8e7d")
    text = out.getvalue()
    assert text.count("auth failed for edge:") == 2
    assert "broker-pass-0a1b2c3d4e" not in text
    assert "broker-pass-rotated-9f8e7d" not in text
