"""agent.host.notify against real AF_UNIX datagram sockets, as systemd's NOTIFY_SOCKET would be.

Each test binds its own listener (a path in tmp_path, or an abstract name unique to the test),
reads the exact bytes the notifier sent, and drives the watchdog loop with a clock it owns.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.host.notify import (
    Heartbeats,
    Notifier,
    stdout_is_journal,
    strip_notify_env,
    syslog_prefix,
    watchdog_interval,
    watchdog_loop,
)

PID = 4242


class NotifyListener:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket we read without blocking."""

    def __init__(self, bind_to: str, env_value: str) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.setblocking(False)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value}

    def drain(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(65536))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths must stay under 108 bytes"
    lst = NotifyListener(path, path)
    yield lst
    lst.close()


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    lst = NotifyListener("\0" + name, "@" + name)
    yield lst
    lst.close()


@pytest.fixture
def errors() -> list[str]:
    return []


def notifier_for(env: dict[str, str], errors: list[str]) -> Notifier:
    return Notifier.from_env(env, PID, on_error=errors.append)


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Yield to the event loop until ``cond()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --- the protocol, byte for byte -------------------------------------------------------


@pytest.mark.parametrize("which", ["listener", "abstract_listener"])
def test_messages_arrive_byte_exact(
    which: str, request: pytest.FixtureRequest, errors: list[str]
) -> None:
    lst: NotifyListener = request.getfixturevalue(which)
    with notifier_for(lst.env, errors) as n:
        assert n.enabled
        assert n.disabled_reason is None
        assert n.ready()
        assert n.ready("awaiting_assignment")
        assert n.status("preflight")
        assert n.watchdog()
        assert n.extend_timeout(5_000_000)
        assert n.stopping()
        assert n.send(STATUS="joined", ERRNO=0)
    assert lst.drain() == [
        b"READY=1",
        b"READY=1\nSTATUS=awaiting_assignment",
        b"STATUS=preflight",
        b"WATCHDOG=1",
        b"EXTEND_TIMEOUT_USEC=5000000",
        b"STOPPING=1",
        b"STATUS=joined\nERRNO=0",
    ]
    assert errors == []


def test_values_cannot_inject_lines(listener: NotifyListener, errors: list[str]) -> None:
    with notifier_for(listener.env, errors) as n:
        assert n.status("failed: nodeadm said\nREADY=1\0")
        assert n.send(STATUS="a\r\nb")
    assert listener.drain() == [b"STATUS=failed: nodeadm said READY=1", b"STATUS=a b"]


def test_long_status_is_clipped_not_dropped(listener: NotifyListener, errors: list[str]) -> None:
    with notifier_for(listener.env, errors) as n:
        assert n.ready("é" * 5000)
    (got,) = listener.drain()
    assert got.startswith("READY=1\nSTATUS=éé".encode())
    assert got.endswith(b"...")
    assert len(got) <= 4096
    got.decode()  # cut on a character boundary


def test_oversized_message_is_refused(listener: NotifyListener, errors: list[str]) -> None:
    with notifier_for(listener.env, errors) as n:
        assert not n.send(X="y" * 5000)
        assert n.last_error is not None
        assert "exceeds" in n.last_error
    assert listener.drain() == []
    assert len(errors) == 1


def test_malformed_lines_are_caller_bugs(errors: list[str]) -> None:
    n = notifier_for({}, errors)
    for bad in ["READY", "ready=1", "=1", "A=1\nB=2", "A=\0"]:
        with pytest.raises(ValueError, match="KEY=VALUE"):
            n.send_lines(bad)
    with pytest.raises(ValueError, match="at least one"):
        n.send_lines()
    with pytest.raises(ValueError, match="positive"):
        n.extend_timeout(0)


def test_one_socket_is_reused(listener: NotifyListener, errors: list[str]) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    received = []
    with notifier_for(listener.env, errors) as n:
        for _ in range(50):
            assert n.watchdog()
            # Drain as PID 1 would: a full receive queue (net.unix.max_dgram_qlen, often
            # 10) makes the sender block, up to the notifier's send timeout.
            received += listener.drain()
        assert len(os.listdir("/proc/self/fd")) <= fds + 1
    assert len(received) == 50
    assert len(os.listdir("/proc/self/fd")) == fds


def test_full_queue_times_out_instead_of_hanging(
    listener: NotifyListener, errors: list[str]
) -> None:
    n = Notifier(listener.env_value, on_error=errors.append, send_timeout_s=0.05)
    with n:
        sent = 0
        while n.watchdog():  # nobody reads: the queue fills, then the send times out
            sent += 1
            assert sent < 10_000
        assert len(errors) == 1
        assert "timed out" in errors[0]
        assert len(listener.drain()) == sent
        assert n.watchdog()  # a fresh socket once PID 1 catches up


# --- no systemd, or systemd gone -----------------------------------------------------------


def test_without_notify_socket_nothing_happens(errors: list[str]) -> None:
    with notifier_for({}, errors) as n:
        assert not n.enabled
        assert n.disabled_reason == "NOTIFY_SOCKET is not set"
        assert not n.ready("starting")
        assert not n.watchdog()
        assert n.watchdog_interval_s is None
    assert errors == []


@pytest.mark.parametrize("address", ["vsock:2:1234", "@", "relative/path", ""])
def test_unsupported_addresses_disable_quietly(address: str, errors: list[str]) -> None:
    with notifier_for({"NOTIFY_SOCKET": address}, errors) as n:
        assert not n.enabled
        assert n.disabled_reason
        assert not n.stopping()
    assert errors == []


def test_dead_socket_fails_without_raising_and_reports_once(
    tmp_path: Path, errors: list[str]
) -> None:
    with notifier_for({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, errors) as n:
        assert n.enabled
        for _ in range(5):
            assert not n.watchdog()
        assert len(errors) == 1
        assert "gone.sock" in errors[0]
        assert n.last_error == errors[0]


def test_recovers_when_the_socket_returns(tmp_path: Path, errors: list[str]) -> None:
    path = str(tmp_path / "n.sock")
    first = NotifyListener(path, path)
    with notifier_for(first.env, errors) as n:
        assert n.ready()
        first.close()
        os.unlink(path)  # PID 1 re-executing: the socket is briefly gone
        assert not n.watchdog()
        assert not n.watchdog()
        assert len(errors) == 1
        second = NotifyListener(path, path)
        try:
            assert n.watchdog()
            assert second.drain() == [b"WATCHDOG=1"]
            second.close()
            os.unlink(path)
            assert not n.watchdog()
            assert len(errors) == 2  # a new run of failures is reported again
        finally:
            second.close()


# --- watchdog interval -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(PID)}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(PID)}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, PID) == expected


def test_from_env_carries_the_interval(listener: NotifyListener, errors: list[str]) -> None:
    env = listener.env | {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(PID)}
    with notifier_for(env, errors) as n:
        assert n.watchdog_interval_s == 1.0
    with Notifier.from_env(env, PID + 1) as other:
        assert other.watchdog_interval_s is None


# --- heartbeats ------------------------------------------------------------------------


def test_heartbeats_judge_by_max_age() -> None:
    hb = Heartbeats()
    hb.register("mqtt", 10, now=0)
    hb.register("assignment", 60, now=0)
    assert hb.stale(10) == []
    assert hb.stale(10.5) == ["mqtt"]  # never stamped: counted from registration
    hb.stamp("mqtt", 10.5)
    assert hb.stale(20) == []
    assert hb.stale(61) == ["assignment", "mqtt"]
    hb.unregister("assignment")
    hb.unregister("never-there")
    assert hb.stale(61) == ["mqtt"]
    assert "mqtt" in hb
    assert "assignment" not in hb


def test_heartbeats_refuse_unknown_names_and_bad_ages() -> None:
    hb = Heartbeats()
    with pytest.raises(KeyError):
        hb.stamp("typo", 0)
    with pytest.raises(ValueError, match="positive"):
        hb.register("mqtt", 0, now=0)


# --- the watchdog loop -----------------------------------------------------------------


async def test_watchdog_pings_only_while_heartbeats_are_fresh(
    listener: NotifyListener, errors: list[str]
) -> None:
    clock = FakeClock()
    hb = Heartbeats()
    hb.register("mqtt", 10, now=clock())
    episodes: list[list[str]] = []
    pings: list[bytes] = []

    def collect() -> int:
        pings.extend(listener.drain())
        return len(pings)

    with notifier_for(listener.env, errors) as n:
        task = asyncio.create_task(watchdog_loop(n, hb, 0.02, clock, episodes.append))
        try:
            await until(lambda: collect() >= 3)
            assert set(pings) == {b"WATCHDOG=1"}

            clock.now += 11  # mqtt's loop stalls
            await until(lambda: len(episodes) == 1)
            assert episodes == [["mqtt"]]
            listener.drain()  # a ping sent before the stall was seen
            await asyncio.sleep(0.15)  # ~7 intervals
            assert listener.drain() == []
            assert episodes == [["mqtt"]]  # once per episode, not once per interval

            hb.stamp("mqtt", clock())  # it recovers before systemd gives up
            pings.clear()
            await until(lambda: collect() >= 2)

            clock.now += 11  # and stalls again: a new episode
            await until(lambda: len(episodes) == 2)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert errors == []


async def test_watchdog_without_callback_and_bad_interval(
    listener: NotifyListener, errors: list[str]
) -> None:
    clock = FakeClock()
    hb = Heartbeats()
    hb.register("loop", 1, now=clock() - 5)  # already stale
    with notifier_for(listener.env, errors) as n:
        task = asyncio.create_task(watchdog_loop(n, hb, 0.01, clock))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ValueError, match="positive"):
            await watchdog_loop(n, hb, 0, clock)
    assert listener.drain() == []


# --- children and the journal ----------------------------------------------------------


def test_children_do_not_inherit_our_socket(listener: NotifyListener) -> None:
    env = dict(os.environ) | listener.env | {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    env["EDGE_AGENT_PROBE"] = "kept"
    stripped = strip_notify_env(env)
    assert "EDGE_AGENT_PROBE" in stripped
    assert env["NOTIFY_SOCKET"] == listener.env_value  # the input is left alone
    out = subprocess.run(["env"], env=stripped, capture_output=True, text=True, check=True)
    names = {line.partition("=")[0] for line in out.stdout.splitlines()}
    assert "EDGE_AGENT_PROBE" in names
    assert names.isdisjoint({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def test_stdout_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    stream = tmp_path / "stream"
    stream.write_text("")
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(stream)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert stdout_is_journal(env, st)
    assert not stdout_is_journal(env, os.stat(other))
    assert not stdout_is_journal({}, st)
    assert not stdout_is_journal({"JOURNAL_STREAM": "garbage"}, st)
    assert not stdout_is_journal({"JOURNAL_STREAM": "1:x"}, st)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        ("error", "<3>"),
        ("warning", "<4>"),
        ("info", "<6>"),
        ("debug", "<7>"),
        ("ERROR", "<3>"),
        ("critical", "<2>"),
        ("exception", "<3>"),
        ("warn", "<4>"),
        ("whatever", "<6>"),
    ],
)
def test_syslog_prefix(level: str, prefix: str) -> None:
    assert syslog_prefix(level) == prefix
