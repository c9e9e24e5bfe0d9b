"""Boot a real Debian with systemd as PID 1 in systemd-nspawn, for tests that need systemd's own view.

The harness owns four things: a cached pristine root filesystem built by debootstrap, a
writable tree over it, a booted container, and cleanup that happens even when a test fails.

API (everything takes and returns plain paths and strings; nothing here knows the agent):

- ``cannot_boot_reason() -> str | None``: why nspawn cannot boot a container on this machine
  (not root, a missing program, cgroups it cannot use), or None. Suites skip with it.
- ``boot_failure(directory, work_dir) -> str | None``: boot a writable overlay of
  ``directory`` once and power it off; why that failed (with the console's tail), or None.
  A suite calls it once and skips with the reason: nspawn refuses to boot in some places
  (an unprivileged CI container, a kernel without the namespaces) that pass the checks above.
- ``rootfs(suite="bookworm", packages=BASE_PACKAGES, mirror=MIRROR, cache=CACHE) -> Path``: the
  pristine tree, built once and kept under ``CACHE`` (``/var/cache/edge-agent-tests``, or
  ``$EDGE_AGENT_TEST_CACHE``) in a directory named by the suite and a hash of the package list.
  It is built in a temporary directory and renamed into place, under a file lock, so a killed
  build never leaves half a tree and two suites never build the same tree at once. Treat it as
  read-only.
- ``Tree(lower, work_dir)``: a writable overlay (overlayfs) of ``lower`` whose changes go to
  ``work_dir/upper``; ``tree.root`` is the merged directory. Changes survive a reboot of the
  container (they live in ``upper``); ``tree.close()`` unmounts. Cheap (no copy), so every
  test module can have its own pristine start.
- ``Machine.boot(directory, work_dir, extra_args=(), name=None, timeout=90) -> Machine``:
  ``systemd-nspawn -b -D directory -M name --register=no --keep-unit --console=passive
  *extra_args`` in the background, waits for ``systemctl is-system-running --wait``. Pass
  ``--read-only``, ``--overlay=…``, ``--bind=…`` and so on in ``extra_args``. The name is
  unique per boot (``ea-<pid>-<random>``) and the container shares the host's network, so a
  broker or HTTP server on the host's 127.0.0.1 is reachable from inside; choose free ports.
  A ``Machine`` is a context manager: leaving it powers the container off (and kills nspawn
  if that does not work), also after a failed assertion.
- ``machine.run(argv, check=True, timeout=60, input=None) -> CompletedProcess[str]``: run a
  command inside (``nsenter -t <PID 1> -a``, a clean environment); ``CommandFailed`` carries
  the output when ``check`` and the status is not 0. ``machine.sh(script)`` runs ``sh -c``.
- ``machine.show(unit, *props) -> dict[str, str]``: ``systemctl show`` as a dict.
- ``machine.journal(*args) -> list[dict[str, str]]``: ``journalctl -o json`` entries
  (``machine.journal("-u", "edge-agent", "-p", "err")``).
- ``machine.wait_for(what, predicate, timeout)``: poll until ``predicate()`` is truthy; the
  error names ``what`` and the last value seen.
- ``machine.reboot()``: ``systemctl reboot`` inside, wait for nspawn to exit, boot the same
  directory again with the same arguments (a new PID 1, the same files).
- ``machine.poweroff()``: ``systemctl poweroff`` inside; waits for nspawn to exit.
- ``machine.console()``: the container's console output so far (for failure messages).

Costs on 2 cores (measured): the rootfs build about 2 minutes, once; a boot to ``running`` about
0.5 s; a poweroff about 0.5 s; the tree about 310 MB.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests"))
# What a minimal systemd host needs to be useful to the tests: systemd as init, a bus for
# systemd-run --wait, python3 for the packaged venv, ip and ps/kill for the unit and checks.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "ca-certificates",
    "iproute2",
    "procps",
)
# Every tree the suites boot: Debian 12, and Debian 13 without python3-venv (and its ensurepip:
# build-venv brings pip as a wheel). `python -m tests.system.nspawn prebuild` builds them all.
TREES: dict[str, tuple[str, ...]] = {
    "bookworm": BASE_PACKAGES,
    "trixie": tuple(p for p in BASE_PACKAGES if p != "python3-venv"),
}
# Raise when `_prepare` (or anything else that shapes the cached tree) changes: a new key.
RECIPE = 2
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NEEDED = ("systemd-nspawn", "nsenter", "debootstrap", "mount", "umount")
T = TypeVar("T")


class CommandFailed(AssertionError):
    """A command inside the container exited non-zero (an assertion: tests fail on it)."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
        self.result = result


def cannot_boot_reason() -> str | None:
    """Why a container cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    missing = [p for p in _NEEDED if shutil.which(p) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install systemd-container debootstrap)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup: nspawn cannot give systemd its cgroups"
    if "overlay" not in Path("/proc/filesystems").read_text(encoding="utf-8"):
        return "the kernel has no overlayfs (modprobe overlay)"
    return None


def rootfs_key(suite: str, packages: Sequence[str]) -> str:
    recipe = [f"recipe {RECIPE}", suite, *sorted(packages)]
    digest = hashlib.sha256("\n".join(recipe).encode()).hexdigest()
    return f"debian-{suite}-{digest[:12]}"


def rootfs(
    suite: str = "bookworm",
    packages: Sequence[str] = BASE_PACKAGES,
    mirror: str = MIRROR,
    cache: Path = CACHE,
) -> Path:
    """The pristine tree for ``suite`` with ``packages``, built on first use (see above)."""
    final = cache / rootfs_key(suite, packages)
    if (final / "usr/lib/systemd/systemd").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{final.name}.lock"):
        if (final / "usr/lib/systemd/systemd").exists():
            return final  # another suite built it while we waited
        build = Path(tempfile.mkdtemp(prefix=f".build-{final.name}.", dir=cache))
        try:
            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                suite,
                str(build / "root"),
                mirror,
            ]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"debootstrap {suite} failed ({done.returncode}): {done.stdout[-3000:]}"
                )
            _prepare(build / "root")
            if final.exists():  # a tree without systemd: an older, broken attempt
                shutil.rmtree(final)
            os.rename(build / "root", final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return final


def _prepare(root: Path) -> None:
    """Make the tree boot quietly: no root password prompt, no getty, a fixed machine-id."""
    (root / "etc/machine-id").write_text("")  # systemd makes a fresh one per boot
    for unit in ("getty.target", "console-getty.service", "systemd-resolved.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tree:
    """A writable overlay of a read-only tree; changes go to ``work_dir/upper``."""

    def __init__(self, lower: Path, work_dir: Path) -> None:
        self.lower = lower
        self.upper = work_dir / "upper"
        self.root = work_dir / "merged"
        ovl_work = work_dir / "ovl-work"
        for d in (self.upper, self.root, ovl_work):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={ovl_work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            check=True,
            capture_output=True,
            text=True,
        )
        self._mounted = True

    def close(self) -> None:
        if self._mounted:
            # Lazy: a process that still has a cwd inside must not keep the test from ending.
            subprocess.run(["umount", "-l", str(self.root)], check=False, capture_output=True)
            self._mounted = False

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Machine:
    """One booted container; use ``Machine.boot`` and ``with``."""

    def __init__(
        self, directory: Path, work_dir: Path, extra_args: Sequence[str], name: str
    ) -> None:
        self.directory = directory
        self.work_dir = work_dir
        self.extra_args = tuple(extra_args)
        self.name = name
        self.boots = 0
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    @classmethod
    def boot(
        cls,
        directory: Path,
        work_dir: Path,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        timeout: float = 90,
    ) -> Machine:
        work_dir.mkdir(parents=True, exist_ok=True)
        m = cls(directory, work_dir, extra_args, name or f"ea-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            m._start(timeout)
        except BaseException:
            m.kill()
            raise
        return m

    # ---- lifecycle ---------------------------------------------------------------------
    def _start(self, timeout: float) -> None:
        self.boots += 1
        console = (self.work_dir / "console.log").open("ab")
        argv = [
            "systemd-nspawn",
            "-b",
            "-D",
            str(self.directory),
            "-M",
            self.name,
            "--register=no",
            "--keep-unit",
            "--console=passive",
            *self.extra_args,
        ]
        console.write(f"\n=== boot {self.boots}: {' '.join(argv)}\n".encode())
        console.flush()
        self._nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # nspawn reads $SYSTEMD_* and passes $container_*; give it a plain environment.
            env={"PATH": PATH, "LANG": "C.UTF-8"},
        )
        console.close()
        deadline = time.monotonic() + timeout
        self.pid1 = self._wait_pid1(deadline)
        state = self.run(
            ["systemctl", "is-system-running", "--wait"],
            check=False,
            timeout=max(1.0, deadline - time.monotonic()),
        ).stdout.strip()
        if state not in ("running", "degraded"):
            raise AssertionError(f"{self.name} booted to {state!r}\n{self.console()[-3000:]}")

    def _wait_pid1(self, deadline: float) -> int:
        assert self._nspawn is not None
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise AssertionError(
                    f"systemd-nspawn exited {self._nspawn.returncode} while booting\n"
                    f"{self.console()[-3000:]}"
                )
            pid = _init_below(self._nspawn.pid)
            if pid and _manager_listening(pid):
                return pid
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no systemd PID 1 in time\n{self.console()[-3000:]}")

    def poweroff(self, timeout: float = 60) -> int | None:
        """``systemctl poweroff`` inside; nspawn's exit status (None if it had to be killed)."""
        if self._nspawn is None or self._nspawn.poll() is not None:
            return None if self._nspawn is None else self._nspawn.returncode
        self.run(["systemctl", "--no-block", "poweroff"], check=False, timeout=15)
        return self._wait_exit(timeout)

    def reboot(self, timeout: float = 90) -> None:
        """Reboot the container: the same files and arguments, a new PID 1."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self.run(["systemctl", "--no-block", "reboot"], check=False, timeout=15)
            self._wait_exit(60)
        self._start(timeout)

    def _wait_exit(self, timeout: float) -> int | None:
        assert self._nspawn is not None
        try:
            return self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """End nspawn and its container at once (SIGKILL to nspawn's process group)."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._nspawn.pid, signal.SIGKILL)
            # nspawn's children are in the container's own pid namespace: PID 1 dying ends it.
            if self.pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            self._nspawn.wait(30)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.poweroff() is None:
            self.kill()

    # ---- inside ------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = [
            "nsenter", "-t", str(self.pid1), "-a",
            "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
            *argv,
        ]  # fmt: skip
        result = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise CommandFailed(argv, result)
        return result

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kw)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        argv = ["systemctl", "show", unit]
        if props:
            argv.append("--property=" + ",".join(props))
        out: dict[str, str] = {}
        for line in self.run(argv).stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def journal(self, *args: str) -> list[dict[str, str]]:
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], check=False).stdout
        entries = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc.get("MESSAGE"), list):  # non-UTF-8 messages are byte arrays
                    doc["MESSAGE"] = bytes(doc["MESSAGE"]).decode("utf-8", "replace")
                entries.append(doc)
        return entries

    def wait_for(
        self, what: str, predicate: Callable[[], T], timeout: float, interval: float = 0.5
    ) -> T:
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: timed out after {timeout:g} s waiting for "
                                     f"{what}; last value: {value!r}")  # fmt: skip
            time.sleep(interval)
            value = predicate()
        return value

    def console(self) -> str:
        try:
            return (self.work_dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""


def boot_failure(directory: Path, work_dir: Path) -> str | None:
    """Why a container of ``directory`` cannot be booted here, or None when it boots."""
    try:
        with (
            Tree(directory, work_dir / "tree") as tree,
            Machine.boot(tree.root, work_dir / "machine", timeout=60),
        ):
            pass
    except (AssertionError, OSError, subprocess.SubprocessError) as e:
        return str(e)[-1500:]
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _init_below(pid: int) -> int | None:
    """The container's PID 1: the ``systemd`` process below nspawn (breadth first)."""
    queue = _children(pid)
    while queue:
        child = queue.pop(0)
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text(encoding="utf-8").strip() == "systemd":
                return child
        queue.extend(_children(child))
    return None


def _manager_listening(pid1: int) -> bool:
    # PID 1's private socket: before it exists, systemctl inside fails rather than waits.
    return Path(f"/proc/{pid1}/root/run/systemd/private").exists()


def prebuild() -> int:
    """Build every tree in `TREES` and the packages (amd64 and arm64) not cached yet, one
    after the other.

    `scripts/test` starts this in the background before lint and the other Pythons, so the
    downloads (network- and disk-bound) overlap their CPU-bound work instead of holding up
    the system and packaging suites; the file locks make a suite that gets there first wait
    for the build. A failed package build is reported and left to the suites to retry.
    """
    from tests.support import ROOT
    from tests.system.package import deb  # package imports this module

    reason = cannot_boot_reason()
    if reason:
        print(f"prebuild: no trees built: {reason}")
    else:
        for suite, packages in TREES.items():
            started = time.monotonic()
            path = rootfs(suite, packages)
            print(f"prebuild: {suite} ready in {time.monotonic() - started:.0f} s: {path}")
    for arch in (None, "arm64"):
        started = time.monotonic()
        try:
            built = deb(ROOT, arch=arch)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"prebuild: the {arch or 'native'} package failed: {e}")
            continue
        print(f"prebuild: {built.name} ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["prebuild"]:
        sys.exit("usage: python -m tests.system.nspawn prebuild")
    sys.exit(prebuild())
