"""``os.supported``: the host runs an OS and architecture nodeadm supports.

nodeadm has no list of supported systems: it branches on the exact ``ID`` of
``/etc/os-release`` (``ubuntu``, ``rhel``, ``amzn``) wherever the OS matters (package
manager, firewall, SSM unit name, proxy files) and falls through to a RHEL-like default or an
"unsupported operating system" error elsewhere, so a look-alike (Rocky, Debian) gets halfway
through a join before something breaks. The list here is the one AWS documents for hybrid
nodes. nodeadm does refuse ``--containerd-source distro`` on RHEL and ``docker`` on Amazon
Linux 2023 outright.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from agent.checks.base import Check, CheckContext, CheckVerdict, failed, passed
from agent.host.hostroot import OsRelease

# The table "Supported hosts" in packaging/README.md, row for row (a test keeps them in step):
# what nodeadm supports. Ubuntu 20.04 is a supported host, but its python3 (3.8) is too old for
# the agent's package: there the agent runs in a container with the host at `host.root`.
SUPPORTED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ubuntu": ("20.04", "22.04", "24.04"),
        "rhel": ("8", "9"),
        "amzn": ("2023",),
    }
)
ARCHES = ("x86_64", "aarch64")
# containerd_source values nodeadm refuses per OS, with what to use instead.
REFUSED_SOURCES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        (
            "rhel",
            "distro",
        ): "RHEL has no containerd package: use docker (Docker's repository) or none",
        ("amzn", "docker"): "Amazon Linux 2023 has no Docker repository: use distro or none",
    }
)


def os_version(osr: OsRelease) -> str:
    """The version as nodeadm matches it: RHEL by major only (``9.4`` counts as ``9``)."""
    if osr.id == "rhel":
        return osr.version_id.split(".")[0]
    return osr.version_id


def supported_list() -> str:
    return ", ".join(f"{name} {'/'.join(versions)}" for name, versions in SUPPORTED.items())


async def check_os(ctx: CheckContext) -> CheckVerdict:
    osr = ctx.host.os_release()
    if osr is None:
        return failed(
            f"no /etc/os-release under the host root {ctx.host.root}: the OS cannot be identified",
            "check host.root (the host's / must be mounted there)",
        )
    name = osr.pretty_name or f"{osr.id} {osr.version_id}"
    details = {"id": osr.id, "version_id": osr.version_id, "arch": ctx.arch}
    if osr.id not in SUPPORTED:
        return failed(
            f"{name} (ID={osr.id or '?'}) is not an OS nodeadm supports ({supported_list()})",
            details=details,
        )
    if os_version(osr) not in SUPPORTED[osr.id]:
        return failed(
            f"{name} (VERSION_ID={osr.version_id or '?'}) is not a supported {osr.id} release "
            f"({'/'.join(SUPPORTED[osr.id])})",
            details=details,
        )
    if ctx.arch not in ARCHES:
        return failed(
            f"architecture {ctx.arch} is not supported by EKS Hybrid Nodes (x86_64 or aarch64)",
            "run on an x86_64 or aarch64 host",
            details,
        )
    source = ctx.assignment.containerd_source if ctx.assignment else None
    if source is not None:
        details["containerd_source"] = source
        why = REFUSED_SOURCES.get((osr.id, source))
        if why is not None:
            return failed(
                f"nodeadm refuses containerd_source {source} on {name}",
                f"change the assignment's containerd_source: {why}",
                details,
            )
    with_source = f", containerd_source {source}" if source else ""
    return passed(f"{name} on {ctx.arch}{with_source}", details)


CHECK = Check(
    id="os.supported",
    title="Operating system is supported",
    remedy=f"use a supported OS: {supported_list()}, on x86_64 or aarch64",
    timeout_s=5.0,
    needs_assignment=False,
    run=check_os,
)
