"""One nodeadm child at a time: spawned detached, logged to a file, ended as a group.

nodeadm runs for minutes and must survive the agent: its stdout and stderr go to a log file
the agent opens and hands over (never a pipe, so a restarted agent cannot SIGPIPE a running
install), the agent follows that file with a small poll loop, and the child gets its own
session so a timeout or a cancellation ends its whole process group (SIGTERM, then SIGKILL
after a grace). Before waiting, the child's pid and kernel start time (field 22 of
``/proc/<pid>/stat``; a recycled pid has another) or its transient systemd unit are written
to a run record in ``state_dir``. A later agent reads that record to end a run left behind by
an earlier process (`end_orphan`), so there is never more than one nodeadm on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from agent import _compat
from agent.host.proc import ProcessError, child_env, kill_group
from agent.host.proc import run as run_program
from agent.state.atomic import write_json

KEEP_LOGS = 5
POLL_S = 0.05
KILL_GRACE_S = 5.0
# A line longer than this without a newline is passed on in pieces rather than held.
MAX_LINE = 64 * 1024
PROC = Path("/proc")
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class Log(Protocol):
    """The structured logger the nodeadm modules need (a structlog BoundLogger fits)."""

    def debug(self, event: str, /, **kw: Any) -> Any: ...
    def info(self, event: str, /, **kw: Any) -> Any: ...
    def warning(self, event: str, /, **kw: Any) -> Any: ...
    def error(self, event: str, /, **kw: Any) -> Any: ...


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


def rotate(log_path: Path, keep: int = KEEP_LOGS) -> None:
    """Shift ``x.log`` → ``x.log.1`` → … → ``x.log.<keep>``; the oldest falls off."""
    for i in range(keep - 1, 0, -1):
        older = log_path.with_name(f"{log_path.name}.{i}")
        if older.exists():
            os.replace(older, log_path.with_name(f"{log_path.name}.{i + 1}"))
    if log_path.exists():
        os.replace(log_path, log_path.with_name(f"{log_path.name}.1"))


class LogFollower:
    """Reads a growing file from the start and hands on each complete line."""

    def __init__(self, path: Path, on_text: Callable[[str], None]) -> None:
        self._path = path
        self._on_text = on_text
        self._pos = 0
        self._buf = b""

    def poll(self) -> None:
        try:
            with self._path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        self._pos += len(data)
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        for raw in complete:
            self._on_text(raw.decode("utf-8", "replace"))
        while len(self._buf) > MAX_LINE:
            head, self._buf = self._buf[:MAX_LINE], self._buf[MAX_LINE:]
            self._on_text(head.decode("utf-8", "replace"))

    def finish(self) -> None:
        self.poll()
        if self._buf:
            self._on_text(self._buf.decode("utf-8", "replace"))
            self._buf = b""


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


async def stop_unit(systemctl: str, unit: str, env: Mapping[str, str] | None = None) -> None:
    """``systemctl stop``: systemd ends the unit's whole cgroup (SIGTERM, then SIGKILL)."""
    with contextlib.suppress(ProcessError):
        await run_program([systemctl, "stop", unit], timeout=120, env=env)


async def unit_active(systemctl: str, unit: str, env: Mapping[str, str] | None = None) -> bool:
    try:
        result = await run_program([systemctl, "is-active", unit], timeout=30, env=env)
    except ProcessError:
        return False
    return result.stdout.strip() in ("active", "activating", "deactivating", "reloading")


async def end_recorded(
    record: RunRecord, systemctl: str, env: Mapping[str, str] | None = None
) -> str | None:
    """End the run ``record`` describes if it is still going; a description, or None."""
    ended: list[str] = []
    if record.unit and await unit_active(systemctl, record.unit, env):
        await stop_unit(systemctl, record.unit, env)
        ended.append(f"unit {record.unit}")
    ticks = start_ticks(record.pid)
    # Another start time means the pid was recycled: not ours, and (since Linux does not
    # hand out a pid that still names a live process group) our group is gone. No leader
    # at all with members alive is still our group. A zombie leader has nothing to end.
    ours = ticks is None or ticks == record.start_ticks
    if ours and group_alive(record.pid):
        await end_group(record.pid)
        ended.append(f"process group {record.pid}")
    if not ended:
        return None
    return f"ended a nodeadm {record.step} left running by an earlier agent ({', '.join(ended)})"


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
) -> RunResult:
    """Run ``argv`` with its output in ``log_path``, following it line by line.

    Ends the process group (and ``unit``, when the child is a ``systemd-run --wait``
    client) on timeout, when ``stop`` is set (then ``canceled``), or when the awaiting task
    is cancelled (then `asyncio.CancelledError` propagates once the group is gone).
    """
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
        await _end(proc, unit, systemctl, env, grace)
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


def systemd_run_argv(
    systemd_run: str, unit: str, log_path: Path, argv: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """``argv`` as a transient oneshot unit whose output is appended to ``log_path``.

    ``--wait`` makes systemd-run exit with the service's status; the unit outlives us, and
    ``systemctl stop <unit>`` ends its whole cgroup.
    """
    out = [
        systemd_run, "--unit", unit, "--collect", "--wait", "--quiet",
        "-p", "Type=oneshot",
        "-p", f"StandardOutput=append:{log_path}",
        "-p", f"StandardError=append:{log_path}",
    ]  # fmt: skip
    # A transient unit starts from systemd's environment, not ours: pass on the proxy
    # settings nodeadm's proxy validation expects, and any extra environment we were given.
    extra = {k: os.environ[k] for k in _PROXY_ENV if os.environ.get(k)} | dict(env)
    for key, value in sorted(extra.items()):
        out += ["--setenv", f"{key}={value}"]
    return [*out, "--", *argv]


async def repair_dpkg(
    updates: Path,
    dpkg: str,
    env: Mapping[str, str],
    log: Log,
    wrap: Callable[[list[str]], list[str]] = list,
) -> bool:
    """``dpkg --configure -a`` when an earlier install was interrupted mid-package.

    Otherwise every apt call nodeadm makes fails with "dpkg was interrupted" and the
    install burns its whole timeout retrying. True when a repair was run and succeeded.
    """
    if not _non_empty_dir(updates):
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
