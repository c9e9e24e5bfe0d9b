"""The one path by which the agent runs programs on the host.

No shell: an argument list, a timeout, and a `ProcessResult` (or `ProcessError`) carrying the
command, exit code, output tail and duration (the shape of cloud-init's
ProcessExecutionError). The child gets its own session so a timeout or a cancellation ends
its whole process group, not just the direct child, and it never inherits our systemd
notify socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import _compat

_STRIP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
TAIL = 4000


@dataclass(frozen=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, n: int = 400) -> str:
        text = (self.stderr or self.stdout).strip()
        return text[-n:]


class ProcessError(Exception):
    """The program could not be run, or did not finish in time."""

    def __init__(
        self,
        argv: Sequence[str],
        reason: str,
        *,
        timed_out: bool = False,
        result: ProcessResult | None = None,
    ) -> None:
        super().__init__(f"{argv[0] if argv else '?'}: {reason}")
        self.argv = tuple(argv)
        self.reason = reason
        self.timed_out = timed_out
        self.result = result


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """End a whole process group; tolerates a group that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion within ``timeout`` seconds."""
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE
            if input_bytes is not None
            else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(env),
            start_new_session=True,
        )
    except OSError as e:
        raise ProcessError(argv, f"cannot run: {e.strerror or e}") from e
    try:
        async with _compat.timeout(timeout):
            out, err = await proc.communicate(input_bytes)
    except TimeoutError:
        kill_group(proc.pid)
        await proc.wait()
        raise ProcessError(argv, f"did not finish within {timeout:g} s", timed_out=True) from None
    except asyncio.CancelledError:
        kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    return ProcessResult(
        argv=tuple(argv),
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode("utf-8", "replace")[-TAIL * 4 :],
        stderr=err.decode("utf-8", "replace")[-TAIL * 4 :],
        duration_s=time.monotonic() - start,
    )


def systemd_is_pid1() -> bool:
    """Whether the agent itself runs under systemd (its own filesystem, not the host root)."""
    try:
        comm = Path("/proc/1/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return Path("/run/systemd/system").is_dir() and comm == "systemd"


def use_transient_units(mode: str) -> bool:
    """``nodeadm.systemd_run``: ``always``, ``never``, or ``auto`` (when systemd is PID 1)."""
    return mode == "always" or (mode == "auto" and systemd_is_pid1())


def transient(
    systemd_run: str, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """``argv`` as the short transient unit ``edge-agent-<name>.service``, its output coming
    back through ``--pipe``.

    The agent's own unit is sandboxed (ProtectSystem=strict) and children inherit that, so a
    command that changes the host (apt-get update, dpkg --configure -a, removing old kubelet
    certificates) runs as a unit of its own, spawned by PID 1 outside the sandbox. The name
    is fixed, as for nodeadm's steps: a second run while one is loaded is refused by PID 1.
    ``Type=exec`` so that ``systemd-run --wait`` returns the command's own exit status
    (with ``oneshot``, systemd 252 fails the start job and returns 1 for every failure).
    """
    out = [
        systemd_run, "--unit", f"edge-agent-{name}.service",
        "--collect", "--wait", "--quiet", "--pipe",
        "-p", "Type=exec",
    ]  # fmt: skip
    for key, value in (env or {}).items():
        out += ["--setenv", f"{key}={value}"]
    return [*out, "--", *argv]
