"""nodeadm steps as transient systemd units: their fixed names, how they are started, and what
systemd says about them afterwards.

When systemd is PID 1 each step runs as ``edge-agent-nodeadm-<step>.service``, started by PID 1
through ``systemd-run --wait`` (docs/systemd.md). The fixed name is the lock: while a run of a
step is loaded, PID 1 refuses to start a second one under that name. The unit is not in the
agent's cgroup, so stopping or restarting edge-agent.service leaves it running, and the next
agent adopts it by its name (`agent.host.nodeadm_proc.run_step`). ``Type=exec``, not
``oneshot``: on systemd 252 a failing oneshot fails its start job and ``systemd-run --wait``
then returns 1 whatever nodeadm's status was. Units are not ``--collect``ed: a failed run stays
loaded with its result until the agent has read it (`UnitState`), then ``reset-failed``
unloads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.host.proc import ProcessError
from agent.host.proc import run as run_program

UNIT_PREFIX = "edge-agent-nodeadm-"
_RUNNING = frozenset({"active", "activating", "deactivating", "reloading"})
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
_SHOW = "LoadState,ActiveState,Result,ExecMainCode,ExecMainStatus"


def step_unit(step: str) -> str:
    """The one name a step's unit ever has: ``edge-agent-nodeadm-<step>.service``."""
    return f"{UNIT_PREFIX}{step}.service"


@dataclass(frozen=True)
class UnitState:
    """A unit as ``systemctl show`` reports it."""

    loaded: bool
    active: str
    result: str
    main_code: int
    main_status: int

    @property
    def running(self) -> bool:
        return self.active in _RUNNING

    def exit_code(self) -> int:
        """What ``systemd-run --wait`` returns for this result (systemd 252, src/run/run.c):
        the main process's status for ``exit-code``, 255 for a signal, 1 for anything else."""
        if self.result == "success":
            return 0
        if self.result == "exit-code" and self.main_status > 0:
            return self.main_status
        if self.result in ("signal", "core-dump"):
            return 255
        return 1


async def unit_state(
    systemctl: str, unit: str, env: Mapping[str, str] | None = None
) -> UnitState | None:
    """The unit's state; None when systemctl cannot say (then nothing is assumed)."""
    try:
        result = await run_program(
            [systemctl, "show", unit, f"--property={_SHOW}"], timeout=30, env=env
        )
    except ProcessError:
        return None
    props: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    if not result.ok or "ActiveState" not in props:
        return None
    return UnitState(
        loaded=props.get("LoadState") == "loaded",
        active=props["ActiveState"],
        result=props.get("Result", ""),
        main_code=_int(props.get("ExecMainCode")),
        main_status=_int(props.get("ExecMainStatus")),
    )


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


async def stop_unit(systemctl: str, unit: str, env: Mapping[str, str] | None = None) -> None:
    """``systemctl stop``: systemd ends the unit's whole cgroup (SIGTERM, then SIGKILL)."""
    with contextlib.suppress(ProcessError):
        await run_program([systemctl, "stop", unit], timeout=120, env=env)


async def forget_unit(systemctl: str, unit: str, env: Mapping[str, str] | None = None) -> None:
    """``systemctl reset-failed``: unload a failed run whose result has been read, so the
    name is free for the next run. A unit that is not failed is left as it is."""
    with contextlib.suppress(ProcessError):
        await run_program([systemctl, "reset-failed", unit], timeout=30, env=env)


async def unit_active(systemctl: str, unit: str, env: Mapping[str, str] | None = None) -> bool:
    state = await unit_state(systemctl, unit, env)
    return state is not None and state.running


def systemd_run_argv(
    systemd_run: str, unit: str, log_path: Path, argv: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """``argv`` as the transient unit ``unit`` whose output is appended to ``log_path``.

    ``--wait`` makes systemd-run exit with the service's status; the unit outlives us, and
    ``systemctl stop <unit>`` ends its whole cgroup.
    """
    out = [
        systemd_run, "--unit", unit, "--wait", "--quiet",
        "-p", "Type=exec",
        "-p", f"StandardOutput=append:{log_path}",
        "-p", f"StandardError=append:{log_path}",
    ]  # fmt: skip
    # A transient unit starts from systemd's environment, not ours: pass on the proxy
    # settings nodeadm's proxy validation expects, and any extra environment we were given.
    extra = {k: os.environ[k] for k in _PROXY_ENV if os.environ.get(k)} | dict(env)
    for key, value in sorted(extra.items()):
        out += ["--setenv", f"{key}={value}"]
    return [*out, "--", *argv]
