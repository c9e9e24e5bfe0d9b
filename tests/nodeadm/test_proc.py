"""The process mechanics under the runner, with tiny scripts where the stand-in has no knob.

A group whose members ignore SIGTERM is SIGKILLed after the grace; output is followed from
the file (a last line without a newline included); the kernel start time tells our pid from
a recycled one.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agent.host.nodeadm_proc import group_alive, run_step, start_ticks

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(f"pids {os.getpid()} {child.pid}", flush=True)
sys.stdout.write("no newline at the end")
sys.stdout.flush()
time.sleep(60)
"""


async def test_a_group_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    seen: list[str] = []
    result = await run_step(
        [sys.executable, "-c", STUBBORN],
        step="install",
        log_path=tmp_path / "logs" / "x.log",
        record_path=tmp_path / "run.json",
        timeout=1.0,
        on_text=seen.append,
        stop=asyncio.Event(),
        grace=0.3,
    )
    assert (result.timed_out, result.canceled) == (True, False)
    assert result.exit_code == -9
    leader, child = (int(x) for x in seen[0].split()[1:])
    assert child != leader
    assert not group_alive(leader)  # the child, in the same group, went with it
    assert seen[1:] == ["no newline at the end"]
    assert not (tmp_path / "run.json").exists()


async def test_a_missing_program_is_a_spawn_error(tmp_path: Path) -> None:
    result = await run_step(
        [str(tmp_path / "nope")],
        step="init",
        log_path=tmp_path / "x.log",
        record_path=tmp_path / "run.json",
        timeout=5,
        on_text=lambda _: None,
        stop=asyncio.Event(),
    )
    assert result.exit_code is None
    assert result.spawn_error is not None
    assert "cannot run" in result.spawn_error
    assert not (tmp_path / "run.json").exists()


def test_start_ticks_identify_a_process() -> None:
    ours = start_ticks(os.getpid())
    assert ours is not None
    assert ours == start_ticks(os.getpid())
    assert start_ticks(2**22 + 12345) is None
