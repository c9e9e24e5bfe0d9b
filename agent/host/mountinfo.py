"""``/proc/<pid>/mountinfo``: parsed, and asked which mount holds a path and whether what is
written there survives a reboot.

Mount points in PID 1's mountinfo are host paths, so the preflight mount checks and the
sysctl restore read the host's own view here, whatever the agent's sandbox looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MOUNTINFO = "/proc/1/mountinfo"
# Filesystems that live in memory: what is written there is gone at the next boot.
_MEMORY_FS = frozenset({"tmpfs", "ramfs"})
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def super_read_only(self) -> bool:
        return "ro" in self.super_options


def unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as ``\\040`` and so on."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in ``/proc/<pid>/mountinfo`` order (a later mount shadows an earlier one)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split(" ")
        if "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if len(parts) < sep + 3:
            continue
        mounts.append(
            Mount(
                mount_point=unescape(parts[4]),
                root=unescape(parts[3]),
                options=tuple(parts[5].split(",")),
                fstype=parts[sep + 1],
                source=unescape(parts[sep + 2]),
                super_options=tuple(parts[sep + 3].split(",")) if len(parts) > sep + 3 else (),
            )
        )
    return mounts


def _under(path: str, mount_point: str) -> bool:
    return mount_point in ("/", path) or path.startswith(mount_point + "/")


def mount_of(mounts: list[Mount], host_path: str) -> Mount | None:
    """The mount holding ``host_path``: the longest mount point above it, the last one wins."""
    best: Mount | None = None
    for m in mounts:
        if _under(host_path, m.mount_point) and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    return best


def _overlay_upper(m: Mount) -> str | None:
    for opt in m.super_options:
        if opt.startswith("upperdir="):
            return unescape(opt.removeprefix("upperdir="))
    return None


def not_persistent(mounts: list[Mount], host_path: str) -> str | None:
    """Why what is written at ``host_path`` would not survive a reboot, or None when it would.

    Persistent means on a disk filesystem mounted read-write: a bind mount from the
    persistent partition, or an overlay whose upper layer is itself on such a disk. Kairos's
    ``/etc``, ``/var`` and ``/srv`` overlays keep their upper layer in memory (``/run``), and
    an upper layer this namespace cannot see is not counted as persistent either.
    """
    m = mount_of(mounts, host_path)
    if m is None:
        return f"{host_path} is on no mount listed in {MOUNTINFO}"
    where = f"{host_path} is on {m.mount_point}"
    if m.fstype in _MEMORY_FS:
        return f"{where}, a {m.fstype} (kept in memory)"
    if m.read_only or m.super_read_only:
        return f"{where}, mounted read-only"
    if m.fstype == "overlay":
        upper = _overlay_upper(m)
        # Writes land in the upper layer, so it is judged the same way, without this overlay.
        # An upper layer this namespace cannot see resolves to some other mount: under a
        # read-only root, or under another overlay (systemd-nspawn's --overlay puts its
        # temporary upper layers in /var/tmp), and is then not counted as persistent.
        others = [x for x in mounts if x is not m]
        if upper is None or not_persistent(others, upper) is not None:
            return (
                f"{where}, an overlay whose upper layer ({upper or 'none'}) is not on a "
                "persistent disk"
            )
    return None
