"""The daemon's pid file in ``state_dir``: written at start, removed at a clean stop.

`edge-agent status` reads it to say whether a daemon runs. A pid alone is not proof: after a
crash or a power cut the file stays behind, and the kernel may have given that pid to another
process since. So the file also records the process's start time in clock ticks since boot
(field 22 of ``/proc/<pid>/stat``) and the boot id; the daemon counts as running only when a
process with that pid exists and started at that tick of that boot. Where ``/proc`` cannot
tell (another kernel, a hidden pid namespace), a live pid is taken at its word.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.state.atomic import write_json

PID_FILE = "agent.pid"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class PidRecord:
    pid: int
    started: float  # epoch seconds, for people
    start_ticks: int | None
    boot_id: str | None


@dataclass(frozen=True)
class Liveness:
    """What the pid file says: ``record`` is None when there is none (or it is unreadable)."""

    record: PidRecord | None
    running: bool


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def write_pid_file(state_dir: Path, started: float) -> None:
    pid = os.getpid()
    record = {
        "pid": pid,
        "started": started,
        "start_ticks": _start_ticks(pid),
        "boot_id": _boot_id(),
    }
    write_json(state_dir / PID_FILE, record, 0o644)


def remove_pid_file(state_dir: Path) -> None:
    """Remove the file if it is this process's (a second daemon's must stay)."""
    path = state_dir / PID_FILE
    record = read_pid_file(state_dir)
    if record is not None and record.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_pid_file(state_dir: Path) -> PidRecord | None:
    try:
        doc = json.loads((state_dir / PID_FILE).read_text())
        pid = doc["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        ticks = doc.get("start_ticks")
        boot = doc.get("boot_id")
        return PidRecord(
            pid=pid,
            started=float(doc.get("started") or 0.0),
            start_ticks=ticks if isinstance(ticks, int) else None,
            boot_id=boot if isinstance(boot, str) else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def liveness(state_dir: Path) -> Liveness:
    record = read_pid_file(state_dir)
    if record is None:
        return Liveness(None, running=False)
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return Liveness(record, running=False)
    except PermissionError:
        pass  # it exists, owned by someone else: the ticks below decide
    if record.boot_id is not None and _boot_id() not in (None, record.boot_id):
        return Liveness(record, running=False)  # a file left from before a reboot
    if record.start_ticks is not None:
        ticks = _start_ticks(record.pid)
        if ticks is not None and ticks != record.start_ticks:
            return Liveness(record, running=False)  # the pid was reused
    return Liveness(record, running=True)
