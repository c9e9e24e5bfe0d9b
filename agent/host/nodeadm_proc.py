"""One nodeadm child at a time: spawned detached, logged to a file, ended as a group or adopted.

nodeadm runs for minutes and must survive the agent: its stdout and stderr go to a log file
the agent opens and hands over (`agent.host.nodeadm_log`), which the agent follows with a
small poll loop. Without systemd the child gets its own session, so a timeout, a
cancellation or a shutdown ends its whole process group (SIGTERM, then SIGKILL after a
grace). Before waiting, the child's pid and kernel start time (field 22 of
``/proc/<pid>/stat``; a recycled pid has another) are written to a run record in
``state_dir``; a later agent reads it to end a group left behind by an earlier process
(`end_recorded`), so there is never more than one nodeadm on the host. Under systemd the step
is a transient unit with a fixed name (`agent.host.nodeadm_unit`) that outlives the agent: a
later agent does not end it but adopts it, waiting for it and reading its result from systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import _compat
from agent.host.nodeadm_log import LogFollower, rotate
from agent.host.nodeadm_unit import forget_unit, stop_unit, unit_active, unit_state
from agent.host.proc import ProcessError, child_env, kill_group
from agent.host.proc import run as run_program
from agent.logs import Log
from agent.state.atomic import write_json

POLL_S = 0.05
# How often an adopted unit's state is asked of systemd (a systemctl process each time).
UNIT_POLL_S = 1.0
KILL_GRACE_S = 5.0
PROC = Path("/proc")


@dataclass(frozen=True)
class RunRecord:
    """What a later agent process needs to find (and end) this run."""

    step: str
    pid: int
    start_ticks: int | None
    unit: str | None
    log_path: str
    started_at: float
    argv: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["argv"] = list(self.argv)
        out["schema"] = 1
        return out

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        """The record at ``path``; None when missing or unreadable (it is then stale)."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                step=str(doc["step"]),
                pid=int(doc["pid"]),
                start_ticks=None if doc.get("start_ticks") is None else int(doc["start_ticks"]),
                unit=doc.get("unit") or None,
                log_path=str(doc.get("log_path", "")),
                started_at=float(doc.get("started_at", 0.0)),
                argv=tuple(str(a) for a in doc.get("argv", ())),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    timed_out: bool
    canceled: bool
    duration_s: float
    log_path: Path
    spawn_error: str | None = None


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat``; the command name (field 2) may hold spaces and
    parentheses, so the split starts after its last ``)``."""
    try:
        text = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    return fields if len(fields) >= 20 else None


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot (stat field 22)."""
    fields = _stat_fields(pid, proc)
    return int(fields[19]) if fields else None


def group_alive(pgid: int, proc: Path = PROC) -> bool:
    """Whether any live (non-zombie) process is in group ``pgid``.

    ``os.killpg(pgid, 0)`` is not enough: it succeeds for zombies, and an orphan reparented
    to a PID 1 that does not reap (common in containers) stays a zombie forever.
    """
    try:
        entries = os.listdir(proc)
    except OSError:
        return False
    for name in entries:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name), proc)
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            return True
    return False


async def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def end_group(pgid: int, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the group, give it ``grace`` seconds, then SIGKILL whatever is left."""
    kill_group(pgid, signal.SIGTERM)
    if not await _wait_group_gone(pgid, grace):
        kill_group(pgid, signal.SIGKILL)
        await _wait_group_gone(pgid, 2.0)


async def end_recorded(
    record: RunRecord, systemctl: str, env: Mapping[str, str] | None = None
) -> str | None:
    """End the run ``record`` describes if it is still going; a description, or None.

    A run in a transient unit is not ended: the next run of its step adopts the unit
    (`run_step`). Only the earlier agent's ``systemd-run`` client, if it is somehow still
    alive, is killed; that does not touch the unit. ``systemctl`` and ``env`` are kept for
    callers written before adoption.
    """
    del systemctl, env
    ticks = start_ticks(record.pid)
    # Another start time means the pid was recycled: not ours, and (since Linux does not
    # hand out a pid that still names a live process group) our group is gone. No leader
    # at all with members alive is still our group. A zombie leader has nothing to end.
    ours = ticks is None or ticks == record.start_ticks
    if record.unit:
        if ours and group_alive(record.pid):
            kill_group(record.pid, signal.SIGKILL)
        return None
    if not (ours and group_alive(record.pid)):
        return None
    await end_group(record.pid)
    return (
        f"ended a nodeadm {record.step} left running by an earlier agent "
        f"(process group {record.pid})"
    )


async def run_step(
    argv: Sequence[str],
    *,
    step: str,
    log_path: Path,
    record_path: Path | None,
    timeout: float,
    on_text: Callable[[str], None],
    stop: asyncio.Event,
    env: Mapping[str, str] | None = None,
    unit: str | None = None,
    systemctl: str = "systemctl",
    grace: float = KILL_GRACE_S,
    log: Log | None = None,
) -> RunResult:
    """Run ``argv`` with its output in ``log_path``, following it line by line.

    Without ``unit`` the child is nodeadm itself, in its own process group, which is ended
    on timeout, when ``stop`` is set (then ``canceled``), or when the awaiting task is
    cancelled (then `asyncio.CancelledError` propagates once the group is gone).

    With ``unit`` the child is the ``systemd-run --wait`` client of that transient unit. If
    the unit is already running (an earlier agent started it and was stopped, restarted or
    killed), nothing is started: the run is adopted (`_adopt`). A timeout or ``stop`` stops
    the unit. A cancelled task (the agent is shutting down) leaves the unit running for the
    next agent to adopt and only ends the client.
    """
    if unit is not None:
        adopted = await _adopt(unit, log_path, on_text, stop, timeout, systemctl, env, log)
        if adopted is not None:
            return adopted
        await forget_unit(systemctl, unit, env)  # a failed earlier run would hold the name
    result = await _run_child(
        argv, step, log_path, record_path, timeout, on_text, stop, env, unit, systemctl, grace
    )
    if unit is None:
        return result
    # systemd-run's own status is not nodeadm's when a step fails fast: the start job fails
    # too and systemd-run returns 1. The unit (not collected) still holds the real result.
    state = await unit_state(systemctl, unit, env)
    await forget_unit(systemctl, unit, env)
    if result.exit_code is not None and state is not None and state.loaded and not state.running:
        result = dataclasses.replace(result, exit_code=state.exit_code())
    return result


async def _adopt(
    unit: str,
    log_path: Path,
    on_text: Callable[[str], None],
    stop: asyncio.Event,
    timeout: float,
    systemctl: str,
    env: Mapping[str, str] | None,
    log: Log | None,
) -> RunResult | None:
    """Wait for a still-running ``unit`` and take its result from systemd; None if it is
    not running. Its log is followed from the start: the lines the earlier agent already
    handed on are handed on again, since the outcome is judged on them."""
    state = await unit_state(systemctl, unit, env)
    if state is None or not state.running:
        return None
    if log is not None:
        log.warning("nodeadm.adopted", unit=unit, log_path=str(log_path))
    started = time.monotonic()
    follower = LogFollower(log_path, on_text)
    timed_out = canceled = False
    checked = started
    try:
        while state is not None and state.running:
            follower.poll()
            canceled = stop.is_set()
            timed_out = not canceled and time.monotonic() >= started + timeout
            if canceled or timed_out:
                await stop_unit(systemctl, unit, env)
                break
            await asyncio.sleep(POLL_S)
            if time.monotonic() - checked >= UNIT_POLL_S:
                checked = time.monotonic()
                state = await unit_state(systemctl, unit, env)
    finally:
        follower.finish()
    final = await unit_state(systemctl, unit, env)
    await forget_unit(systemctl, unit, env)
    ended_itself = not (canceled or timed_out) and final is not None
    return RunResult(
        exit_code=final.exit_code() if ended_itself and final is not None else None,
        timed_out=timed_out,
        canceled=canceled,
        duration_s=time.monotonic() - started,
        log_path=log_path,
    )


async def _run_child(
    argv: Sequence[str],
    step: str,
    log_path: Path,
    record_path: Path | None,
    timeout: float,
    on_text: Callable[[str], None],
    stop: asyncio.Event,
    env: Mapping[str, str] | None,
    unit: str | None,
    systemctl: str,
    grace: float,
) -> RunResult:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate(log_path)
    started = time.monotonic()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=child_env(env),
            start_new_session=True,
        )
    except OSError as e:
        return RunResult(None, False, False, 0.0, log_path, f"cannot run {argv[0]}: {e}")
    finally:
        os.close(fd)
    record = RunRecord(
        step=step,
        pid=proc.pid,
        start_ticks=start_ticks(proc.pid),
        unit=unit,
        log_path=str(log_path),
        started_at=time.time(),
        argv=tuple(argv),
    )
    follower = LogFollower(log_path, on_text)
    timed_out = canceled = finished = False
    try:
        if record_path is not None:
            write_json(record_path, record.to_json())
        deadline = started + timeout
        while proc.returncode is None:
            follower.poll()
            if stop.is_set():
                canceled = True
            elif time.monotonic() >= deadline:
                timed_out = True
            if canceled or timed_out:
                await _end(proc, unit, systemctl, env, grace)
                break
            await asyncio.sleep(POLL_S)
        exit_code = proc.returncode
        finished = not (timed_out or canceled)
    except asyncio.CancelledError:
        if unit is None:
            await _end(proc, unit, systemctl, env, grace)
        # else: the agent is going away; nodeadm runs on in its unit (the finally below
        # kills only our systemd-run client) and the next agent adopts it.
        raise
    finally:
        # Whatever interrupted the run (a second cancellation mid-cleanup included), nothing
        # of it may outlive it: kill stragglers synchronously, then forget the record. A run
        # that ended by itself is left alone: what it started is its business.
        if not finished and group_alive(proc.pid):
            kill_group(proc.pid, signal.SIGKILL)
        follower.finish()
        if record_path is not None:
            _forget(record_path)
    return RunResult(
        exit_code=exit_code,
        timed_out=timed_out,
        canceled=canceled,
        duration_s=time.monotonic() - started,
        log_path=log_path,
    )


async def _end(
    proc: asyncio.subprocess.Process,
    unit: str | None,
    systemctl: str,
    env: Mapping[str, str] | None,
    grace: float,
) -> None:
    if unit:
        # The real nodeadm lives in the unit's cgroup, not in our process group.
        await stop_unit(systemctl, unit, env)
    await end_group(proc.pid, grace)
    with contextlib.suppress(TimeoutError):
        async with _compat.timeout(grace):
            await proc.wait()


def _forget(record_path: Path) -> None:
    with contextlib.suppress(OSError):
        record_path.unlink()


def _non_empty_dir(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError:
        return False


async def repair_dpkg(
    updates: Path,
    dpkg: str,
    env: Mapping[str, str],
    log: Log,
    wrap: Callable[[list[str]], list[str]] = list,
    *,
    install_unit: str | None = None,
    systemctl: str = "systemctl",
) -> bool:
    """``dpkg --configure -a`` when an earlier install was interrupted mid-package.

    Otherwise every apt call nodeadm makes fails with "dpkg was interrupted" and the
    install burns its whole timeout retrying. True when a repair was run and succeeded.
    """
    if not _non_empty_dir(updates):
        return False
    if install_unit is not None and await unit_active(systemctl, install_unit, env):
        # An adopted install is still running: the files in updates/ are its dpkg at work.
        return False
    argv = [dpkg, "--configure", "-a"]
    log.warning("nodeadm.dpkg_repair", argv=argv, reason=f"{updates} is not empty")
    try:
        result = await run_program(
            wrap(argv), timeout=900, env={"DEBIAN_FRONTEND": "noninteractive", **env}
        )
    except ProcessError as e:
        log.warning("nodeadm.dpkg_repair_failed", error=e.reason)
        return False
    log.info("nodeadm.dpkg_repaired", exit_code=result.returncode, duration_s=result.duration_s)
    return result.ok
