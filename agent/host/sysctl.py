"""nodeadm's kernel settings after a reboot: verified in force, re-applied, or reported.

``nodeadm init`` writes ``/etc/sysctl.d/99-nodeadm.conf`` and applies it once; kubelet then
runs with ``ProtectKernelDefaults`` and will not start when a value differs. On an appliance
whose ``/etc`` lives in memory the file is gone at the next boot, and nothing re-runs init.
So in appliance mode the agent keeps a copy of the file in its ``state_dir`` (which must
persist) after every successful init, and at every start of a joined node compares the live
values under ``/proc/sys`` with it. What differs is re-applied, key by key: written directly
when the agent runs without systemd, or with ``sysctl -w`` in a transient unit (the agent's
own unit has read-only kernel tunables). A key whose ``/proc/sys`` file is on a read-only
mount (a container shares the host's kernel settings) is not tried: it is reported, with
why, like any key still wrong afterwards. Never a silent loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.host.hostroot import HostRoot
from agent.host.mountinfo import MOUNTINFO, mount_of, parse_mountinfo
from agent.host.proc import ProcessError, run, transient
from agent.state.atomic import write_bytes

NODEADM_CONF = "/etc/sysctl.d/99-nodeadm.conf"
COPY_NAME = "nodeadm-sysctl.conf"


@dataclass(frozen=True)
class SysctlReport:
    """What a start found: ``source`` is where the settings came from (None: nowhere)."""

    source: str | None
    in_force: tuple[str, ...] = ()
    reapplied: tuple[str, ...] = ()
    missing: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.source is not None and not self.missing

    def problem(self) -> str:
        """What is lost, for an operator (only meaningful when not ``ok``)."""
        if self.source is None:
            return (
                f"nodeadm's kernel settings are lost: neither {NODEADM_CONF} nor the agent's "
                "copy exists; kubelet (ProtectKernelDefaults) may refuse to start"
            )
        lost = "; ".join(f"{k}: {why}" for k, why in self.missing.items())
        return f"nodeadm's kernel settings are not in force ({self.source}): {lost}"

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "in_force": list(self.in_force),
            "reapplied": list(self.reapplied),
            "missing": dict(self.missing),
        }


def parse_conf(text: str) -> dict[str, str]:
    """``key = value`` lines as sysctl.d(5) reads them; a leading ``-`` (ignore errors) is
    dropped, ``#`` and ``;`` start comments, and a later line wins."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip().lstrip("-").strip()] = _norm(value)
    return out


def _norm(value: str) -> str:
    return " ".join(value.split())


def proc_path(key: str) -> str:
    """``net.ipv4.ip_forward`` → ``/proc/sys/net/ipv4/ip_forward`` (slashes kept as they are)."""
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def live_value(host: HostRoot, key: str) -> str | None:
    text = host.read_text(proc_path(key))
    return None if text is None else _norm(text)


def keep_copy(host: HostRoot, state_dir: Path) -> bool:
    """After a successful init: copy nodeadm's file into the state dir. False: no file."""
    text = host.read_text(NODEADM_CONF)
    if text is None:
        return False
    copy = state_dir / COPY_NAME
    try:
        if copy.read_text(encoding="utf-8") == text:
            return True
    except OSError:
        pass
    write_bytes(copy, text.encode(), 0o644)
    return True


async def restore(
    host: HostRoot, state_dir: Path, *, systemd_run: str | None, timeout: float = 30.0
) -> SysctlReport:
    """Compare the live values with nodeadm's settings; re-apply what differs.

    ``systemd_run``: the program to wrap ``sysctl -w`` in a transient unit, or None to write
    ``/proc/sys`` under the host root directly.
    """
    text = host.read_text(NODEADM_CONF)
    source = NODEADM_CONF
    if text is None:
        source = str(state_dir / COPY_NAME)
        try:
            text = (state_dir / COPY_NAME).read_text(encoding="utf-8")
        except OSError:
            return SysctlReport(source=None)
    else:
        keep_copy(host, state_dir)
    wanted = parse_conf(text)
    off = {k: v for k, v in wanted.items() if live_value(host, k) != v}
    in_force = tuple(k for k in wanted if k not in off)
    if not off:
        return SysctlReport(source, in_force=in_force)
    missing, writable = _judge(host, off)
    failure = await _apply(host, writable, systemd_run, timeout) if writable else None
    reapplied = []
    for key, value in writable.items():
        now = live_value(host, key)
        if now == value:
            reapplied.append(key)
        else:
            missing[key] = f"still {now!r} after setting it{f' ({failure})' if failure else ''}"
    return SysctlReport(source, in_force, tuple(reapplied), missing)


def _judge(host: HostRoot, off: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split the keys that differ into (why each cannot be set, the ones to set)."""
    mounts = parse_mountinfo(host.read_text(MOUNTINFO) or "")
    missing: dict[str, str] = {}
    writable: dict[str, str] = {}
    for key, value in off.items():
        path = proc_path(key)
        m = mount_of(mounts, path)
        if not host.exists(path):
            missing[key] = f"no {path} in this kernel"
        elif m is not None and m.read_only:
            missing[key] = (
                f"is {live_value(host, key)!r}, wanted {value!r}, and {path} is read-only here "
                f"(mounted read-only on {m.mount_point}: a container shares the host's settings)"
            )
        else:
            writable[key] = value
    return missing, writable


async def _apply(
    host: HostRoot, settings: dict[str, str], systemd_run: str | None, timeout: float
) -> str | None:
    """Set each key; the reason it failed, or None (the caller re-reads every value anyway)."""
    if systemd_run is None:
        errors = []
        for key, value in settings.items():
            try:
                host.path(proc_path(key)).write_text(value + "\n", encoding="utf-8")
            except OSError as e:
                errors.append(f"{proc_path(key)}: {e.strerror or e}")
        return "; ".join(errors) or None
    argv = ["sysctl", "-w", *(f"{k}={v}" for k, v in settings.items())]
    try:
        res = await run(transient(systemd_run, "sysctl", argv), timeout=timeout)
    except ProcessError as e:
        return e.reason
    if res.ok:
        return None
    tail = res.tail(200)
    return f"sysctl -w exited {res.returncode}" + (f": {tail}" if tail else "")
