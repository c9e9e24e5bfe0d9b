"""Ending nodeadm: timeouts, cancellation, a run left behind by a dead agent, systemd-run.

The stand-in's hang mode leaves a child stuck in nodeadm's process group (its pid under the
host root), so these tests prove the whole group ends, not just nodeadm. The orphan test
kills a real agent process (a small Python script running the runner) with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core.assignment import parse_assignment
from agent.host.nodeadm_proc import RunRecord, start_ticks
from devtools.fakehost.layout import calls
from tests.nodeadm.conftest import FakeHost, fake_systemd_run
from tests.nodeadm.samples import SSM

Factory = Callable[..., FakeHost]
A = parse_assignment(SSM)
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie may linger if PID 1 does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def hung_pids(fh: FakeHost, sub: str) -> tuple[int, int]:
    """(nodeadm, its stuck child) of the run in flight, from the stand-in's pid files."""
    run = fh.root / "run/fakehost"
    return (
        int((run / f"nodeadm-{sub}.pid").read_text()),
        int((run / f"nodeadm-{sub}.child.pid").read_text()),
    )


async def test_timeout_ends_the_whole_group(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_HANG": "init"}, installed=True)
    runner = fh.runner(init_timeout_s=1)
    outcome = await runner.init(A, fh.config_path)
    assert (outcome.ok, outcome.timed_out, outcome.code) == (False, True, "nodeadm_timeout")
    assert "did not finish within 1 s" in outcome.message
    nodeadm, child = hung_pids(fh, "init")
    assert not alive(nodeadm)
    assert not alive(child)
    assert not runner.record_path.exists()
    assert runner.running is None


async def test_cancelling_the_task_ends_the_group_and_propagates(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_HANG": "init"}, installed=True)
    runner = fh.runner()
    task = asyncio.create_task(runner.init(A, fh.config_path))
    await wait_for((fh.root / "run/fakehost/nodeadm-init.child.pid").exists)
    record = RunRecord.load(runner.record_path)
    assert record is not None
    assert record.step == "init"
    assert record.start_ticks == start_ticks(record.pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    nodeadm, child = hung_pids(fh, "init")
    assert record.pid == nodeadm
    assert not alive(nodeadm)
    assert not alive(child)
    assert not runner.record_path.exists()
    assert runner.running is None


async def test_cancel_returns_a_canceled_outcome(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_HANG": "uninstall"}, installed=True)
    runner = fh.runner()
    assert not runner.cancel()
    task = asyncio.create_task(runner.uninstall())
    await wait_for((fh.root / "run/fakehost/nodeadm-uninstall.child.pid").exists)
    assert runner.cancel()
    outcome = await task
    assert (outcome.ok, outcome.canceled, outcome.code) == (False, True, "canceled")
    assert not any(alive(pid) for pid in hung_pids(fh, "uninstall"))


AGENT = """
import asyncio, json, sys
from pathlib import Path
from agent.core.assignment import parse_assignment
from agent.core.config import Config, HostConfig, NodeadmConfig, ProgramsConfig
from agent.host.hostroot import HostRoot
from agent.host.nodeadm import NodeadmRunner
from agent.testing import CapturingLog

args = json.loads(sys.argv[1])
config = Config(
    host=HostConfig(root=Path(args["root"])),
    state_dir=Path(args["state_dir"]),
    nodeadm=NodeadmConfig(systemd_run="never"),
    programs=ProgramsConfig(**args["programs"]),
)
runner = NodeadmRunner(config, HostRoot(config.host.root), on_line=lambda s, l: None, log=CapturingLog())
asyncio.run(runner.install(parse_assignment(args["assignment"])))
"""


async def test_a_dead_agents_run_is_ended_and_dpkg_repaired(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_HANG": "install", "NODEADM_FAKE_HANG_TIMES": "1"})
    args = {
        "root": str(fh.root),
        "state_dir": str(fh.state_dir),
        "programs": {k: fh.programs[k] for k in ("nodeadm", "systemctl", "dpkg")},
        "assignment": SSM,
    }
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, json.dumps(args), cwd=REPO
    )
    record_path = fh.state_dir / "nodeadm-run.json"
    await wait_for((fh.root / "run/fakehost/nodeadm-install.child.pid").exists)
    await wait_for(record_path.exists)
    agent.send_signal(signal.SIGKILL)  # no cleanup: the agent process just vanishes
    await agent.wait()
    nodeadm, child = hung_pids(fh, "install")
    assert alive(nodeadm)
    assert alive(child)
    assert any((fh.root / "var/lib/dpkg/updates").iterdir())  # dpkg left half-configured

    runner = fh.runner()
    description = await runner.end_orphan()
    assert description is not None
    assert "install" in description
    assert f"process group {nodeadm}" in description
    await wait_for(lambda: not alive(nodeadm) and not alive(child), 5)
    assert not record_path.exists()
    assert await runner.end_orphan() is None

    outcome = await runner.install(A)
    assert outcome.ok, outcome.message
    assert [c["argv"] for c in calls(fh.root, "dpkg")] == [["--configure", "-a"]]
    assert not any((fh.root / "var/lib/dpkg/updates").iterdir())
    assert fh.log.events("nodeadm.dpkg_repair")


async def test_a_stale_record_is_dropped_without_killing(fake_host: Factory) -> None:
    fh = fake_host()
    runner = fh.runner()
    ticks = start_ticks(os.getpid())
    assert ticks is not None
    # Our own pid with another start time: a recycled pid that must not be touched.
    stale = RunRecord("install", os.getpid(), ticks + 1, None, "x.log", 0.0, ("nodeadm",))
    runner.record_path.parent.mkdir(parents=True, exist_ok=True)
    runner.record_path.write_text(json.dumps(stale.to_json()))
    assert await runner.end_orphan() is None
    assert not runner.record_path.exists()
    runner.record_path.write_text("{not json")
    assert await runner.end_orphan() is None
    assert not runner.record_path.exists()


async def test_systemd_run_always_wraps_the_step_in_a_unit(fake_host: Factory) -> None:
    fh = fake_host()
    record = fake_systemd_run(fh)
    runner = fh.runner(systemd_run="always", env={"EDGE_TEST": "1"})
    outcome = await runner.install(A)
    assert outcome.ok, outcome.message
    (argv,) = [json.loads(x) for x in record.read_text().splitlines()]
    log = fh.state_dir / "logs" / "nodeadm-install.log"
    assert argv[0] == "--unit"
    assert argv[1] == "edge-agent-nodeadm-install.service"
    assert argv[2:] == [
        "--wait", "--quiet",
        "-p", "Type=exec",
        "-p", f"StandardOutput=append:{log}",
        "-p", f"StandardError=append:{log}",
        "--setenv", "EDGE_TEST=1",
        "--", fh.programs["nodeadm"], "install", "1.31", "-p", "ssm",
        "--containerd-source", "distro", "-r", "us-west-2", "-t", "1800s",
    ]  # fmt: skip
    assert "Installing containerd..." in [line.msg for _, line in fh.lines]


async def test_systemd_run_propagates_failure_and_stops_the_unit(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_FAIL": "init:generic"}, installed=True)
    fake_systemd_run(fh)
    runner = fh.runner(systemd_run="always")
    failed = await runner.init(A, fh.config_path)
    assert (failed.code, failed.exit_code) == ("nodeadm_failed", 1)

    fh.knobs(NODEADM_FAKE_HANG="init")
    task = asyncio.create_task(runner.init(A, fh.config_path))
    await wait_for((fh.root / "run/fakehost/nodeadm-init.child.pid").exists)
    record = RunRecord.load(runner.record_path)
    assert record is not None
    assert record.unit is not None
    assert record.unit == "edge-agent-nodeadm-init.service"
    assert runner.cancel()
    outcome = await task
    assert outcome.canceled
    assert ["stop", record.unit] in [c["argv"] for c in calls(fh.root, "systemctl")]
    assert not any(alive(pid) for pid in hung_pids(fh, "init"))
