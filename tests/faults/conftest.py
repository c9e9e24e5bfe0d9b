"""Fault injection: the end-to-end site of tests/e2e, plus what breaking things takes.

`site_factory` is the e2e fixture (Mosquitto, devtools controller, signer, host, agent,
commander), re-exported here; `fault_site` wraps it so each site's secrets reach the
session-wide log scan of tests/conftest.py. `small_disk` mounts a small tmpfs (we are root)
and unmounts it whatever the test did. `NodeadmWatch` samples which nodeadm stand-ins of a
host are alive, so a test can prove there were never two at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.fakehost import layout
from tests.e2e.conftest import Site, SiteFactory, site_factory

__all__ = ["NodeadmWatch", "site_factory"]


@pytest.fixture
def fault_site(
    site_factory: SiteFactory, secret_registry: dict[str, str]
) -> Iterator[Callable[..., Site]]:
    """`site_factory`, registering every site's secrets for the final log scan."""
    made: list[Site] = []

    def build(**kw: Any) -> Site:
        s = site_factory(**kw)
        made.append(s)
        return s

    yield build
    for s in made:
        with contextlib.suppress(Exception):
            for secret in s.secrets():
                secret_registry.setdefault(secret, "site secret (token or activation code)")


# ---- a small disk ----------------------------------------------------------------------------


def _mount_tmpfs(target: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `target`; the reason it could not be, or None."""
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


def _mount_loop(target: Path, image: Path, size_kib: int) -> str | None:
    """The fallback: an ext2 image of `size_kib` on a loop device."""
    with image.open("wb") as f:
        f.truncate(size_kib * 1024)
    for argv in (
        ["mkfs.ext2", "-q", "-F", "-m", "0", str(image)],
        ["mount", "-o", "loop", str(image), str(target)],
    ):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except OSError as e:
            return f"{argv[0]}: {e}"
        if r.returncode != 0:
            return f"{' '.join(argv[:2])}: {r.stderr.strip() or r.returncode}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """`small_disk(dir)` makes `dir` a 512 KiB filesystem (tmpfs, else a loop-mounted ext2
    image); skips, saying why, only when neither can be had. Unmounted at teardown: request
    it before the fixture that runs the agent, so the agent is stopped first."""
    mounted: list[Path] = []

    def make(target: Path) -> Path:
        why = _mount_tmpfs(target, "512k")
        if why is not None:
            why_loop = _mount_loop(target, tmp_path / f"{target.name}.img", 512)
            if why_loop is not None:
                pytest.skip(f"no small filesystem: tmpfs ({why}); loop ({why_loop})")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        for attempt in range(5):
            r = subprocess.run(
                ["umount", str(target)], capture_output=True, timeout=10, check=False
            )
            if r.returncode == 0:
                break
            if attempt == 4:
                # Still busy (a process of the test holds a file there): detach it now, the
                # kernel frees it once the last file is closed. Nothing stays mounted.
                subprocess.run(["umount", "-l", str(target)], timeout=10, check=False)
            time.sleep(0.1)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding `directory` to the last byte, with one file (unbuffered
    writes, ever smaller, until even 1 byte is refused). Refuses a filesystem bigger than
    64 MiB: if the small disk was unmounted under the test (a concurrent run's cleanup), this
    fails the test instead of filling the machine's disk."""
    st = os.statvfs(directory)
    if st.f_blocks * st.f_frsize > 64 * 1024 * 1024:
        raise AssertionError(f"{directory} is not on a small disk (any more); not filling it")
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = 64 * 1024
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)
    return filler


# ---- nodeadm processes -------------------------------------------------------------------------


def _alive(pid: int) -> int | None:
    """The parent pid of a running (not zombie) nodeadm stand-in (not a reused pid), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        if state in ("Z", "X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return int(ppid) if b"nodeadm" in f.read() else None
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class NodeadmWatch:
    """Samples, every few milliseconds, which nodeadm runs of one host are alive.

    A run is known from the stand-in's call log (its pid, at its start) and is alive while
    its process is (a zombie is not). `overlaps` lists every sample that saw two at once;
    `parent` is each run's parent pid when first seen alive (which agent process ran it).
    """

    root: Path
    period: float = 0.003
    seen: dict[int, list[str]] = field(default_factory=dict)  # pid -> argv
    live: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> first, last
    parent: dict[int, int] = field(default_factory=dict)
    overlaps: list[tuple[float, list[list[str]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _offset: int = 0

    def __enter__(self) -> NodeadmWatch:
        self._thread = threading.Thread(target=self._run, name="nodeadm-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def runs_by(self, parent: int, steps: tuple[str, ...]) -> list[str]:
        """The subcommands in `steps` that process `parent` ran, in order of start."""
        pids = sorted((p for p, pp in self.parent.items() if pp == parent), key=self.live.get)
        return [self.seen[p][0] for p in pids if self.seen[p] and self.seen[p][0] in steps]

    def _new_calls(self) -> None:
        path = layout.under(self.root, layout.CALLS_FILE)
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            call = json.loads(line)
            if call["prog"] == "nodeadm":
                self.seen[int(call["pid"])] = list(call["argv"])

    def _run(self) -> None:
        ended: set[int] = set()
        while not self._stop.is_set():
            self._new_calls()
            now = time.time()
            running = []
            for pid in self.seen.keys() - ended:
                ppid = _alive(pid)
                if ppid is not None:
                    running.append(pid)
                    self.parent.setdefault(pid, ppid)
                elif pid in self.live:
                    ended.add(pid)  # once gone, gone: a reused pid is somebody else
            for pid in running:
                first, _ = self.live.get(pid, (now, now))
                self.live[pid] = (first, now)
            if len(running) > 1:
                self.overlaps.append((now, [self.seen[p] for p in running]))
            time.sleep(self.period)
