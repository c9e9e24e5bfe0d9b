"""`edge-agent status` tells whether a daemon runs: before a first run, while it runs, after
a clean stop and after a crash, with the LSB exit codes (0 running, 3 not)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.state.pidfile import PID_FILE, liveness, write_pid_file
from agent.testing import sample_assignment
from tests.support import ROOT, HostEnv


def _status(host: HostEnv, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(host.config_path), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )


def _json(host: HostEnv) -> tuple[int, dict[str, Any]]:
    r = _status(host, "--json")
    return r.returncode, json.loads(r.stdout)


def test_before_any_run_it_is_not_running_and_shows_no_phase(tmp_path: Path) -> None:
    host = HostEnv(tmp_path, local_assignment=sample_assignment())
    r = _status(host)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("edge-agent: not running\n")
    assert "has not run" in r.stdout
    assert "phase" not in r.stdout and "since" not in r.stdout
    code, doc = _json(host)
    assert code == 3
    assert doc["running"] is False and doc["pid"] is None
    assert doc["phase"] is None and doc["phase_since"] is None


def test_running_then_stopped(tmp_path: Path) -> None:
    host = HostEnv(tmp_path, local_assignment=sample_assignment())
    host.start()
    assert host.proc is not None
    st = host.wait_phase("joined")
    code, doc = _json(host)
    assert code == 0
    assert doc["running"] is True and doc["pid"] == host.proc.pid
    assert doc["running_since"] and doc["phase"] == "joined"
    text = _status(host)
    assert text.returncode == 0
    assert text.stdout.startswith(f"edge-agent: running (pid {host.proc.pid}) since ")
    assert "phase:      joined since" in text.stdout

    assert host.stop() == 0
    assert not (host.state / PID_FILE).exists()
    code, doc = _json(host)
    assert code == 3
    assert doc["running"] is False and doc["pid"] is None
    assert doc["phase"] == "joined" and doc["phase_since"] == st["phase_since"]
    text = _status(host)
    assert text.returncode == 3
    assert text.stdout.startswith("edge-agent: not running\n")
    assert f"last phase: joined since {st['phase_since']}" in text.stdout


def test_a_crashed_daemon_is_not_running(tmp_path: Path) -> None:
    host = HostEnv(tmp_path, local_assignment=sample_assignment())
    host.start()
    assert host.proc is not None
    host.wait_phase("joined")
    pid = host.proc.pid
    os.killpg(pid, signal.SIGKILL)
    host.proc.wait(10)
    assert (host.state / PID_FILE).exists()  # a crash leaves it behind
    r = _status(host)
    assert r.returncode == 3
    assert f"not running (pid {pid} in its pid file is gone" in r.stdout
    assert "last phase: joined" in r.stdout


def test_a_reused_pid_is_not_the_daemon(tmp_path: Path) -> None:
    # The file names a live process (this test), but one started at another time.
    write_pid_file(tmp_path, started=0.0)
    assert liveness(tmp_path).running
    path = tmp_path / PID_FILE
    doc = json.loads(path.read_text())
    assert isinstance(doc["start_ticks"], int)
    doc["start_ticks"] += 1
    path.write_text(json.dumps(doc))
    live = liveness(tmp_path)
    assert live.record is not None and live.record.pid == os.getpid()
    assert not live.running
