"""SIGKILL at random points of the join (docs/architecture.md): the agent dies, its nodeadm stand-in
(in a session of its own) lives on, and the restarted agent must end that orphan before it
resumes, never run nodeadm again for a step the state says is done, and join.

Seeded trials on fresh air-gapped hosts (local assignment, no broker): once `nodeadm
install` has started, the agent is SIGKILLed after `random.Random(seed)` picks a delay in
the install/init window, then restarted. Throughout, a watcher samples every nodeadm of the
host every few milliseconds (never two alive at once) and state.json is read over and over
(it always parses: writes are atomic).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.testing import sample_assignment
from devtools.fakehost import layout
from tests.faults.conftest import NodeadmWatch
from tests.support import HostEnv

SEEDS = range(12)
# Install then init with the stand-in's 0.04 s per step take ~0.7 s here; the window runs a
# little past it so some kills land after `joined`, where nothing may run again.
WINDOW_S = 0.9
PHASES = {"starting", "awaiting_assignment", "preflight", "installing", "joining", "joined"}


def _state(h: HostEnv) -> dict[str, Any]:
    """state.json, which must parse whenever it is read."""
    raw = (h.state / "state.json").read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise AssertionError(f"state.json does not parse ({e}): {raw[:200]!r}") from e
    assert doc["schema_version"] == 1 and doc["lifecycle"]["phase"] in PHASES, doc
    return dict(doc)


def _steps_since(h: HostEnv, since: float) -> list[str]:
    return [
        c["argv"][0]
        for c in layout.calls(h.root, "nodeadm")
        if c["ts"] >= since and c["argv"] and c["argv"][0] in ("install", "init")
    ]


def _wait(h: HostEnv, pred: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"{what} within {timeout}s; output tail:\n{h.output()[-2500:]}")


def _trial(tmp: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    tmp.mkdir()
    h = HostEnv(tmp, local_assignment=sample_assignment(), nodeadm_env={"NODEADM_FAKE_DELAY": "0.04"})
    try:
        with NodeadmWatch(h.root) as watch:
            h.start()
            _wait(h, lambda: _steps_since(h, 0), 30, "nodeadm install did not start")
            delay = rng.uniform(0.0, WINDOW_S)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:  # state.json parses at every moment
                if (h.state / "state.json").exists():
                    _state(h)
                time.sleep(0.01)
            h.kill()
            at_kill = _state(h)["lifecycle"]
            h.start()

            def joined() -> bool:
                # The new process has started (not merely the old state saying joined).
                started = h.output().count('"agent.started"') == 2
                return started and _state(h)["lifecycle"]["phase"] == "joined"

            _wait(
                h, joined, 30, f"seed {seed}: not joined again after a kill in {at_kill['phase']}"
            )
            time.sleep(0.2)  # a step wrongly started after `joined` would show by now
            assert h.stop() == 0
        assert not watch.overlaps, f"seed {seed}: two nodeadm at once: {watch.overlaps[:3]}"
        alive = [pid for pid, argv in watch.seen.items() if _running(pid)]
        assert not alive, f"seed {seed}: nodeadm left running: {alive}"
        assert h.proc is not None
        again = watch.runs_by(h.proc.pid, ("install", "init"))
        phase = at_kill["phase"]
        # What a restart may run, by the phase the state recorded at the kill.
        expected = {
            "preflight": (["install", "init"],),
            "installing": (["install", "init"],),
            "joining": (["init"],),
            "joined": ([],),
        }[phase]
        assert again in expected, (
            f"seed {seed}: killed in {phase} after {delay:.2f}s, the restart ran {again}"
        )
        return {"seed": seed, "delay": round(delay, 2), "phase": phase, "rerun": again}
    finally:
        h.stop(timeout=5)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_sigkill_at_random_points_of_the_join_always_resumes_and_joins(tmp_path: Path) -> None:
    results = [_trial(tmp_path / f"seed-{seed}", seed) for seed in SEEDS]
    phases = {r["phase"] for r in results}
    # The trials did land in different places, or the test proves little.
    assert {"installing", "joining"} <= phases, results


def test_the_watcher_sees_two_nodeadm_at_once(tmp_path: Path) -> None:
    """The watcher is not blind: two stand-ins run side by side are seen overlapping, and
    each is attributed to the process that started it."""
    h = HostEnv(tmp_path, nodeadm_env={"NODEADM_FAKE_DELAY": "0.1"})
    argv = [h.programs["nodeadm"], "install", "1.31", "-p", "ssm", "-t", "60s"]
    with NodeadmWatch(h.root) as watch:
        procs = [subprocess.Popen(argv, stderr=subprocess.DEVNULL) for _ in range(2)]
        for p in procs:
            assert p.wait(30) == 0
    assert watch.overlaps, "the watcher missed two nodeadm at once"
    assert watch.runs_by(os.getpid(), ("install",)) == ["install", "install"]
