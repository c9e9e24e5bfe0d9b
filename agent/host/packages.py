"""The host's package index: how fresh it is, and refreshing it (``apt-get update``/``dnf``).

nodeadm install pulls containerd, iptables and the SSM agent from the OS repositories and
no longer refreshes their metadata itself: with a stale index it loops
until its timeout. So the agent judges freshness from the latest of three sources — its
own record of its last successful refresh (kept in ``state_dir``), apt's
``update-success-stamp``, and the newest file under the apt lists or the dnf cache — and
can refresh. Its own record comes first because apt stamps list files with the mirror's
Last-Modified time: on a frozen mirror they stay old forever, however often we refresh.

A refresh waits politely for a dpkg/rpm lock held by someone else (boot-time unattended
upgrades, cloud-init) with bounded backoff, and records its success. The once-per-hour
limit on automatic refreshes lives in the preflight check; a forced refresh (the
``refresh-package-index`` command) calls `refresh_package_index` directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.config import Config
from agent.host.hostroot import HostRoot
from agent.host.proc import ProcessError, ProcessResult, run, transient, use_transient_units
from agent.state.atomic import write_json

RECORD = "package-index.json"
SCHEMA = 1
APT_STAMP = "/var/lib/apt/periodic/update-success-stamp"
APT_LISTS = "/var/lib/apt/lists"
DNF_CACHE = "/var/cache/dnf"
# What a package manager prints when another process holds its lock (apt exits 100).
_LOCK_MARKERS = (
    "could not get lock",
    "unable to lock",
    "unable to acquire the dpkg frontend lock",
    "waiting for process",
    "is locked",
)


class PackageIndexError(Exception):
    """The refresh failed; ``tail`` is the package manager's own words."""

    def __init__(self, message: str, *, manager: str, tail: str = "", lock_held: bool = False):
        super().__init__(f"{message}: {tail}" if tail else message)
        self.manager = manager
        self.tail = tail
        self.lock_held = lock_held


@dataclass(frozen=True)
class RefreshResult:
    manager: str
    duration_s: float


@dataclass(frozen=True)
class IndexRecord:
    """The agent's own memory of refreshes, in ``state_dir/package-index.json``."""

    refreshed_at: float | None = None
    manager: str | None = None
    auto_attempt_at: float | None = None
    auto_attempt_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "refreshed_at": self.refreshed_at,
            "manager": self.manager,
            "auto_attempt_at": self.auto_attempt_at,
            "auto_attempt_error": self.auto_attempt_error,
        }


@dataclass(frozen=True)
class IndexAge:
    """When the index was last refreshed, by the latest of its sources."""

    newest: float | None
    source: str | None
    sources: Mapping[str, float | None] = field(default_factory=dict)


def manager_for(host: HostRoot) -> str:
    """``apt`` or ``dnf``: by ``/etc/os-release``, else by which cache exists."""
    osr = host.os_release()
    if osr is not None and osr.id:
        return osr.family
    return "dnf" if host.exists(DNF_CACHE) and not host.exists(APT_LISTS) else "apt"


def read_record(state_dir: Path) -> IndexRecord:
    try:
        data = json.loads((state_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return IndexRecord()
    if not isinstance(data, dict):
        return IndexRecord()

    def num(key: str) -> float | None:
        v = data.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def text(key: str) -> str | None:
        v = data.get(key)
        return v if isinstance(v, str) else None

    return IndexRecord(
        num("refreshed_at"), text("manager"), num("auto_attempt_at"), text("auto_attempt_error")
    )


def write_record(state_dir: Path, record: IndexRecord) -> None:
    write_json(state_dir / RECORD, record.to_json(), 0o644)


def _newest_file(top: Path, skip_dirs: frozenset[str], skip_files: frozenset[str]) -> float | None:
    newest: float | None = None
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in filenames:
            if name in skip_files:
                continue
            try:
                mtime = os.stat(os.path.join(dirpath, name), follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed while we walked (apt rotates lists)
            newest = mtime if newest is None else max(newest, mtime)
    return newest


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def index_age(host: HostRoot, state_dir: Path, manager: str) -> IndexAge:
    """The latest refresh time over the agent's record and the package manager's files."""
    record = read_record(state_dir)
    sources: dict[str, float | None] = {f"state_dir/{RECORD}": record.refreshed_at}
    if manager == "apt":
        sources[APT_STAMP] = _mtime(host.path(APT_STAMP))
        sources[APT_LISTS] = _newest_file(
            host.path(APT_LISTS), frozenset({"partial"}), frozenset({"lock"})
        )
    else:
        # Skip downloaded packages (keepcache): they say nothing about the metadata.
        sources[DNF_CACHE] = _newest_file(
            host.path(DNF_CACHE), frozenset({"packages"}), frozenset({"lock", "metadata_lock.pid"})
        )
    known = {k: v for k, v in sources.items() if v is not None}
    if not known:
        return IndexAge(None, None, sources)
    source = max(known, key=lambda k: known[k])
    return IndexAge(known[source], source, sources)


def refresh_argv(config: Config, manager: str) -> list[str]:
    if manager == "dnf":
        return [config.programs.dnf, "makecache", "--refresh"]
    return [config.programs.apt_get, "update"]


def _lock_held(result: ProcessResult) -> bool:
    text = f"{result.stdout}\n{result.stderr}".lower()
    return any(marker in text for marker in _LOCK_MARKERS)


async def refresh_package_index(
    config: Config,
    host: HostRoot,
    state_dir: Path,
    *,
    lock_wait_s: float = 300.0,
    timeout_s: float = 300.0,
    retry_delay_s: float = 2.0,
    clock: Callable[[], float] = time.time,
) -> RefreshResult:
    """Refresh now (forced), waiting up to ``lock_wait_s`` for a lock held by another process.

    Records the success in ``state_dir``; raises `PackageIndexError` on failure.
    """
    manager = manager_for(host)
    argv = refresh_argv(config, manager)
    name = " ".join(argv)
    env = {"DEBIAN_FRONTEND": "noninteractive"} if manager == "apt" else None
    if use_transient_units(config.nodeadm.systemd_run):
        # The package lists are read-only inside the agent's sandbox (docs/systemd.md).
        argv = transient(config.programs.systemd_run, f"{manager}-refresh", argv, env)
    start = time.monotonic()
    deadline = start + lock_wait_s
    delay = retry_delay_s
    while True:
        try:
            result = await run(argv, timeout=timeout_s, env=env)
        except ProcessError as e:
            raise PackageIndexError(f"{name} failed", manager=manager, tail=e.reason) from e
        if result.ok:
            break
        if not _lock_held(result):
            raise PackageIndexError(
                f"{name} exited {result.returncode}", manager=manager, tail=result.tail()
            )
        if time.monotonic() + delay > deadline:
            raise PackageIndexError(
                f"the package lock was still held after waiting {lock_wait_s:g} s",
                manager=manager,
                tail=result.tail(),
                lock_held=True,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    record = read_record(state_dir)
    write_record(
        state_dir,
        IndexRecord(clock(), manager, record.auto_attempt_at, record.auto_attempt_error),
    )
    return RefreshResult(manager=manager, duration_s=round(time.monotonic() - start, 3))
