"""The daemon speaks systemd's notify protocol on a real datagram socket (docs/systemd.md):
READY=1 once config and state are loaded (not waiting for an unreachable controller),
STATUS=<phase>, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from agent.testing import sample_assignment
from tests.support import HostEnv


def _collect(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            out.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
    return out


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_status_watchdog_and_stopping(tmp_path: Path, abstract: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"edge-agent-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    # A controller nobody answers: READY must not wait for it.
    token = tmp_path / "token"
    token.write_text("t\n")
    h = HostEnv(
        tmp_path,
        config={"controller": {"url": "http://127.0.0.1:9", "registration_token_file": str(token)}},
        local_assignment=sample_assignment(),
        nodeadm_env={"NODEADM_FAKE_DELAY": "0.2"},
    )
    start = time.monotonic()
    h.start({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    lines = _collect(sock, 3.0)
    assert "READY=1" in lines, lines
    assert any(line.startswith("STATUS=") for line in lines)
    assert lines.count("WATCHDOG=1") >= 3, "pings at half of WATCHDOG_USEC (every 0.5 s)"
    assert time.monotonic() - start < 10
    h.wait_phase("joined", 40)
    more = _collect(sock, 1.0)
    assert "STATUS=joined" in lines + more
    assert h.stop() == 0
    tail = _collect(sock, 1.0)
    assert "STOPPING=1" in more + tail
    sock.close()


def test_children_do_not_inherit_the_notify_socket(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    # Put a spy in front of nodeadm that keeps the environment each run was given.
    spy = tmp_path / "bin" / "nodeadm-spy"
    spy.write_text(
        f'#!/bin/sh\nenv > {tmp_path}/nodeadm-env.$$\nexec {h.programs["nodeadm"]} "$@"\n'
    )
    spy.chmod(0o755)
    h.config["programs"]["nodeadm"] = str(spy)
    h.write_config()
    h.start({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"})
    h.wait_phase("joined", 40)
    h.stop()
    envs = [p.read_text() for p in tmp_path.glob("nodeadm-env.*")]
    assert len(envs) >= 3  # version, install, init at least
    for env in envs:
        assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    # WATCHDOG_PID names another process: the agent must not ping.
    assert "WATCHDOG=1" not in _collect(sock, 0.5)
    sock.close()
