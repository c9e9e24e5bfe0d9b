"""``mounts.bind`` and ``mounts.writable``: nodeadm's directories persist and can be written.

Both read ``/proc/1/mountinfo`` under the host root: PID 1's mount namespace is the host's,
so its mount points are host paths, and the agent's own sandbox (a container, systemd's
``ProtectSystem``) does not colour the verdict. On Kairos ``/etc`` and ``/var`` are tmpfs
overlays, so in appliance mode the EKS paths must be bind mounts from persistent storage or
nodeadm's files vanish at reboot. Two more paths matter there: the agent's own ``state_dir``
(not persistent: every boot would join again, so ``fail``) and ``/etc/sysctl.d``, where
``nodeadm init`` writes ``99-nodeadm.conf`` (not persistent: kubelet, which runs with
``ProtectKernelDefaults``, fails after the first reboot unless the agent re-applies the
settings, so ``warn``). In appliance mode the agent runs on the host itself, so its
``state_dir`` is a host path and is looked up in the same mountinfo.
"""

from __future__ import annotations

import posixpath

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    failed,
    passed,
    skipped,
    warned,
)
from agent.host.mountinfo import (
    MOUNTINFO,
    Mount,
    mount_of,
    not_persistent,
    parse_mountinfo,
)

SYSCTL_D = "/etc/sysctl.d"


def _read_mounts(ctx: CheckContext) -> list[Mount] | CheckVerdict:
    text = ctx.host.read_text(MOUNTINFO)
    if text is None:
        return failed(
            f"cannot read {MOUNTINFO} under the host root {ctx.host.root}: the host's mounts "
            "cannot be judged",
            "run the agent where it sees the host's /proc (in a container: pid: host and "
            "the host mounted at host.root)",
        )
    return parse_mountinfo(text)


async def check_bind(ctx: CheckContext) -> CheckVerdict:
    if ctx.config.host.mode != "appliance":
        return skipped("agent mode: the EKS paths live on the host's own filesystems")
    mounts = _read_mounts(ctx)
    if isinstance(mounts, CheckVerdict):
        return mounts
    points = {m.mount_point for m in mounts}
    wanted = [posixpath.normpath(p) for p in ctx.config.checks.bind_mounts]
    missing = [p for p in wanted if p not in points]
    state_dir = posixpath.normpath(str(ctx.config.state_dir))
    state_why = not_persistent(mounts, state_dir)
    sysctl_why = not_persistent(mounts, SYSCTL_D)
    details = {
        "missing": missing,
        "mounted": [p for p in wanted if p not in missing],
        "state_dir": {"path": state_dir, "persistent": state_why is None},
        "sysctl_d": {"path": SYSCTL_D, "persistent": sysctl_why is None},
    }
    problems = []
    if missing:
        problems.append(
            f"not mount points in the host's mount namespace: {', '.join(missing)}; what "
            "nodeadm writes there is lost at reboot (Kairos keeps /etc and /var in memory)"
        )
    if state_why is not None:
        problems.append(
            f"the agent's state_dir does not persist ({state_why}): every reboot would "
            "forget the join and run nodeadm again"
        )
    if problems:
        remedy = None
        if state_why is not None:
            remedy = f"add {state_dir} (the agent's state_dir) and any path named above to " + (
                "install.bind_mounts in the Kairos user-data, and reboot"
            )
        return failed("; ".join(problems), remedy, details)
    if sysctl_why is not None:
        return warned(
            f"{sysctl_why}: nodeadm init writes 99-nodeadm.conf there and kubelet runs with "
            "ProtectKernelDefaults, so the settings are lost at reboot and the agent has to "
            "re-apply them at every boot",
            f"add {SYSCTL_D} to install.bind_mounts in the Kairos user-data, and reboot",
            details,
        )
    return passed(
        f"all {len(wanted)} EKS paths are bind mounts; the state_dir and {SYSCTL_D} persist",
        details,
    )


def _nearest_existing(ctx: CheckContext, host_path: str) -> str:
    path = host_path
    while path != "/" and not ctx.host.path(path).exists():
        path = posixpath.dirname(path)
    return path


def _judge_writable(ctx: CheckContext, mounts: list[Mount], host_path: str) -> str | None:
    """Why ``host_path`` cannot be written, or None when it can."""
    if ctx.host.path(host_path).exists() and not ctx.host.path(host_path).is_dir():
        return f"{host_path} exists but is not a directory"
    existing = _nearest_existing(ctx, host_path)
    mount = mount_of(mounts, existing)
    where = host_path if existing == host_path else f"{host_path} (nearest existing: {existing})"
    if mount is None:
        return f"{where} is on no mount listed in {MOUNTINFO}"
    if mount.read_only:
        return f"{where} is on {mount.mount_point}, mounted read-only"
    # The per-mount flag says rw, but a read-only superblock (errors=remount-ro after a disk
    # error, a squashfs image) still refuses writes.
    if mount.super_read_only:
        return (
            f"{where} is on {mount.mount_point}, whose {mount.fstype} filesystem is read-only "
            "(super options ro)"
        )
    return None


async def check_writable(ctx: CheckContext) -> CheckVerdict:
    mounts = _read_mounts(ctx)
    if isinstance(mounts, CheckVerdict):
        return mounts
    wanted = [posixpath.normpath(p) for p in ctx.config.checks.bind_mounts]
    problems = {p: why for p in wanted if (why := _judge_writable(ctx, mounts, p)) is not None}
    details = {"problems": problems, "writable": [p for p in wanted if p not in problems]}
    if problems:
        return failed("; ".join(problems.values()), details=details)
    return passed(f"all {len(wanted)} EKS paths are on writable mounts", details)


BIND = Check(
    id="mounts.bind",
    title="EKS paths are bind mounts",
    remedy="add the missing paths to the install block's bind_mounts (Kairos: install."
    "bind_mounts, or CUSTOM_BIND_MOUNTS in an /oem rootfs stage; /eks-hybrid also needs "
    "extra-dirs-rootfs) and reboot",
    timeout_s=10.0,
    needs_assignment=False,
    run=check_bind,
)

WRITABLE = Check(
    id="mounts.writable",
    title="EKS paths are writable",
    remedy="mount the listed paths read-write (a bind mount from persistent storage in "
    "appliance mode) or point checks.bind_mounts at where nodeadm may write",
    timeout_s=10.0,
    needs_assignment=False,
    run=check_writable,
)
