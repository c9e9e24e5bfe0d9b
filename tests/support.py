"""Test support: a made-up host with the fake programs, a config, and `edge-agent run` as a
real subprocess. Shared by the end-to-end and fault-injection tests; the assignment they give
the host is `agent.testing.sample_assignment`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from devtools.fakehost import layout
from devtools.fakehost.hosttree import install_fake_programs, make_host

ROOT = Path(__file__).resolve().parents[1]
# Every HostEnv made in this test process, so a fixture can stop the agents a failed test left.
STARTED: list[HostEnv] = []


class HostEnv:
    """One host: tree under ``tmp/host``, fake programs, state dir, config; the agent process."""

    def __init__(
        self,
        tmp: Path,
        *,
        uid: str = "edge-test-1",
        nodeadm_env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        host: dict[str, Any] | None = None,
        local_assignment: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = tmp
        self.uid = uid
        self.root = tmp / "host"
        self.state = tmp / "state"
        make_host(self.root, **(host or {}))
        env = {"NODEADM_FAKE_DELAY": "0.02", "NODEADM_FAKE_LOG": str(tmp / "nodeadm-calls.jsonl")}
        env.update(nodeadm_env or {})
        self.programs = install_fake_programs(tmp / "bin", self.root, env=env)
        self.config_path = tmp / "config.yaml"
        self.config: dict[str, Any] = {
            "host": {"uid": uid, "root": str(self.root), "labels": {"site": "test"}},
            "state_dir": str(self.state),
            "log": {"level": "info", "format": "json"},
            "checks": {"min_free_disk_gb": 0},
            "join": {"retry_backoff_s": 1},
            "nodeadm": {
                "config_path": str(tmp / "etc" / "nodeconfig.yaml"),
                "systemd_run": "never",
            },
            "health": {
                "kubelet_healthz_url": "http://127.0.0.1:9/healthz",
                "degraded_after_s": 3600,
            },
            "programs": self.programs,
        }
        if local_assignment is not None:
            self.write_assignment(local_assignment)
            self.config["assignment_file"] = str(tmp / "assignment.yaml")
        for k, v in (config or {}).items():
            if isinstance(v, dict) and isinstance(self.config.get(k), dict):
                self.config[k].update(v)
            else:
                self.config[k] = v
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_path = tmp / "agent.out"

    def write_assignment(self, a: dict[str, Any]) -> None:
        (self.tmp / "assignment.yaml").write_text(yaml.safe_dump(a))

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    # ---- the agent process ------------------------------------------------------------------
    def start(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
        out = self.out_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=ROOT,
        )
        out.close()
        STARTED.append(self)
        return self.proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the agent alone (its nodeadm child, in its own session, survives)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    # ---- observations -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "agent", "status", "-c", str(self.config_path), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            check=False,
        )
        try:
            return dict(json.loads(r.stdout))
        except ValueError:
            return {}

    def wait_phase(self, phase: str, timeout: float = 30) -> dict[str, Any]:
        """Poll `edge-agent status --json`; the phases seen are kept in ``self.phases``."""
        self.phases: list[str] = getattr(self, "phases", [])
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            st = self.status()
            p = st.get("phase")
            if p and (not self.phases or self.phases[-1] != p):
                self.phases.append(p)
            if p == phase:
                return st
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(
            f"phase {phase!r} not reached; last status {st}; output tail:\n{self.output()[-3000:]}"
        )

    def running_nodeadm_pid(self, step: str, timeout: float = 15) -> int:
        """The pid of the stand-in while it runs ``step`` (it keeps a pid file meanwhile)."""
        pid_file = layout.under(self.root, f"{layout.RUN_DIR}/nodeadm-{step}.pid")
        text = self.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout)
        assert text, f"nodeadm {step} is not running"
        return int(text)

    def nodeadm_calls(self, sub: str | None = None) -> list[list[str]]:
        calls = [c["argv"] for c in layout.calls(self.root, "nodeadm")]
        return [c for c in calls if sub is None or (c and c[0] == sub)]

    def wait_for(self, pred: Callable[[], Any], timeout: float = 20) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        return pred()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_all_started() -> None:
    """Kill what tests left running: the agents, and any nodeadm stand-in they started."""
    while STARTED:
        env = STARTED.pop()
        if env.proc is not None and env.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(env.proc.pid, signal.SIGKILL)
            env.proc.wait(5)
        for pid_file in layout.under(env.root, layout.RUN_DIR).glob("nodeadm-*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().strip())
                # A stale pid file may name a reused pid: only ever kill our stand-in.
                if b"fakehost" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.killpg(pid, signal.SIGKILL)
