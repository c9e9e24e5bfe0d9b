"""Host files read under the host root (the host-root rule).

Every host path the agent inspects (`/etc/os-release`, `/proc/1/mountinfo`, apt lists, the
nodeadm tracker, ...) goes through `HostRoot`, so the agent can run in a container with the
host at `/host`, and tests hand it a made-up host tree. The agent's own files (`state_dir`,
the NodeConfig, every `*_file`) are ordinary paths and never pass through here.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

TRACKER = "/opt/nodeadm/tracker"
SSM_REGISTRATION = "/var/lib/amazon/ssm/registration"
MAX_LINKS = 40


@dataclass(frozen=True)
class OsRelease:
    id: str
    version_id: str
    pretty_name: str
    id_like: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """``apt`` or ``dnf``: which package manager this OS uses."""
        ids = (self.id, *self.id_like)
        if any(i in ("rhel", "amzn", "fedora", "centos") for i in ids):
            return "dnf"
        return "apt"


class HostRoot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, host_path: str) -> Path:
        """The agent-side path of ``host_path`` (an absolute path on the host).

        Resolved as if the host root were `/` (a chroot): ``..`` stops at the root, and a
        symbolic link on the way, absolute or relative, is followed inside the root. Some
        paths come from the controller (the IAM Roles Anywhere certificate and key), and
        none may name a file of the agent's own system outside ``host.root``. OSError
        (ELOOP) after 40 links, as the kernel does.
        """
        parts = [p for p in host_path.split("/") if p and p != "."]
        resolved: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            try:
                target = os.readlink(candidate)
            except OSError:  # not a link, or not there: the rest is taken as written
                resolved.append(part)
                continue
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", host_path)
            if target.startswith("/"):
                resolved = []
            parts[:0] = [p for p in target.split("/") if p and p != "."]
        return self.root.joinpath(*resolved)

    def read_text(self, host_path: str) -> str | None:
        try:
            return self.path(host_path).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def exists(self, host_path: str) -> bool:
        return self.path(host_path).exists()

    def os_release(self) -> OsRelease | None:
        text = self.read_text("/etc/os-release")
        if text is None:
            text = self.read_text("/usr/lib/os-release")
        if text is None:
            return None
        fields: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value.strip("\"'")]
            fields[key.strip()] = parts[0] if parts else ""
        return OsRelease(
            id=fields.get("ID", "").lower(),
            version_id=fields.get("VERSION_ID", ""),
            pretty_name=fields.get("PRETTY_NAME", ""),
            id_like=tuple(fields.get("ID_LIKE", "").lower().split()),
        )

    def tracker_present(self) -> bool:
        return self.path(TRACKER).is_file()

    def ssm_node_name(self) -> str | None:
        """The SSM managed instance id nodeadm registered this host as (``mi-…``)."""
        import json

        text = self.read_text(SSM_REGISTRATION)
        if not text:
            return None
        try:
            value = json.loads(text).get("ManagedInstanceID")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def hostname(self) -> str:
        text = self.read_text("/etc/hostname")
        name = (text or "").strip() or platform.node()
        return name.split(".")[0] or "unknown"


def arch() -> str:
    """``x86_64`` or ``aarch64`` (the kernel's names, as nodeadm's docs use them)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


_UID_BAD = re.compile(r"[^a-z0-9._-]")
# Firmware placeholders that many boards ship instead of a real product UUID.
_PLACEHOLDER_UUIDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",
        "00020003-0004-0005-0006-000700080009",
        "12345678-1234-5678-90ab-cddeefaabbcc",
        "4c4c4544-0000-2010-8020-80c04f202020",
    }
)


def sanitize_uid(raw: str) -> str:
    return _UID_BAD.sub("-", raw.strip().lower())[:128]


def is_placeholder_uuid(value: str) -> bool:
    v = value.strip().lower()
    hexes = v.replace("-", "")
    return v in _PLACEHOLDER_UUIDS or len(set(hexes)) <= 1 or not hexes


def derive_uid(configured: str | None, host: HostRoot, state_dir: Path) -> str:
    """The host UID in the contract's order, persisted once chosen so it never drifts."""
    kept = state_dir / "uid"
    if configured:
        uid = sanitize_uid(configured)
    else:
        try:
            stored = kept.read_text(encoding="utf-8").strip()
        except OSError:
            stored = ""
        if stored:
            return stored
        uid = ""
        product = (host.read_text("/sys/class/dmi/id/product_uuid") or "").strip()
        if product and not is_placeholder_uuid(product):
            uid = sanitize_uid("edge-" + product)
        if not uid:
            machine = (host.read_text("/etc/machine-id") or "").strip()
            if machine and set(machine) != {"0"}:
                uid = sanitize_uid("edge-" + machine)
        if not uid:
            import uuid

            uid = sanitize_uid("edge-" + str(uuid.uuid4()))
    if not uid:
        raise ValueError("host.uid: sanitises to an empty string")
    from agent.state.atomic import write_bytes

    try:
        if not kept.exists() or kept.read_text(encoding="utf-8").strip() != uid:
            write_bytes(kept, uid.encode() + b"\n", 0o644)
    except OSError:
        pass  # a read-only state dir must not stop identification; `run` reports the dir
    return uid


def free_bytes(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding ``path`` (nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
