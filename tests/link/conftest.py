"""Fixtures for the broker link: a real Mosquitto on loopback and links wired for tests.

Each `make_link` call gets a unique UID and topic prefix (unless told to reuse them, as a
restarted agent does), its own state directory, a short keepalive and a 1 s backoff cap, and
records what the link hands back: commands, link-error reports and log calls. Links still
running at the end of a test are stopped and their outboxes closed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.core.config import MqttConfig
from agent.link.mqtt import MqttLink
from agent.testing import CapturingLog
from devtools.broker import Mosquitto
from devtools.commander import Commander

T = TypeVar("T")


@dataclass
class Agent:
    """One link under test and everything it reported."""

    link: MqttLink
    uid: str
    prefix: str
    state_dir: Path
    log: CapturingLog
    commands: list[bytes] = field(default_factory=list)
    errors: list[tuple[str | None, str | None]] = field(default_factory=list)
    beats: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.link.run())

    async def stop(self, publish_offline: bool = True) -> None:
        await self.link.stop(publish_offline)
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)

    def error_codes(self) -> list[str | None]:
        return [code for code, _ in self.errors]


async def until(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll a condition of the link's side (it runs on our loop, so we must not block)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        await asyncio.sleep(0.01)


async def seen(commander: Commander, predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """Wait for the commander's thread to record something, without blocking our loop."""
    value = await asyncio.to_thread(commander.wait_for, predicate, timeout)
    assert value, "commander did not see it in time"
    return value


def mqtt_config(port: int, **overrides: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "url": f"mqtt://127.0.0.1:{port}",
        "host": "127.0.0.1",
        "port": port,
        "tls": False,
        "keepalive_s": 2,
        "max_backoff_s": 1.0,
    }
    return MqttConfig(**(base | overrides))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    directory = tmp_path / "broker"
    directory.mkdir()
    with Mosquitto(directory) as broker:
        yield broker


MakeLink = Callable[..., Agent]


@pytest.fixture
async def make_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[MakeLink]:
    agents: list[Agent] = []
    serial = itertools.count()

    def make(
        port: int,
        *,
        uid: str | None = None,
        prefix: str | None = None,
        state_dir: Path | None = None,
        on_command: Callable[[bytes], Awaitable[None]] | None = None,
        first_seq: int = 1,
        **overrides: Any,
    ) -> Agent:
        uid = uid or f"edge-{uuid.uuid4().hex[:12]}"
        prefix = prefix or f"t{uuid.uuid4().hex[:8]}/v1"
        state_dir = state_dir or tmp_path / f"state-{next(serial)}"
        seq = itertools.count(first_seq)
        log = CapturingLog()
        agent: Agent

        async def record(payload: bytes) -> None:
            agent.commands.append(payload)

        def beat() -> None:
            agent.beats += 1

        link = MqttLink(
            mqtt_config(port, topic_prefix=prefix, **overrides),
            uid,
            state_dir,
            on_command=on_command or record,
            next_seq=lambda: next(seq),
            now=time.time,
            log=log,
            rng=random.Random(7),
            heartbeat=beat,
            on_link_error=lambda code, message: agent.errors.append((code, message)),
        )
        agent = Agent(link, uid, prefix, state_dir, log)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.task is not None and not agent.task.done():
            await agent.stop()
        agent.link.close()
    await asyncio.sleep(0.05)  # let closed sockets' callbacks run
    # A callback that raised inside aiomqtt or paho shows only as an asyncio log record.
    crashes = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not crashes, crashes[0].getMessage()
