"""The kubelet nodeadm installed on this host, asked for its version.

nodeadm's tracker records which artifacts are installed but not their version, and ``init``
does not compare the installed kubelet with the one the assignment wants (its version-skew
validation compares kubelet with the control plane only). So recovery must not assume the
assignment's version is the one on disk: it asks ``/usr/bin/kubelet --version`` (nodeadm's
install path) under the host root, and reads the first ``vX.Y.Z`` as nodeadm itself does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.host.hostroot import HostRoot
from agent.host.proc import ProcessError, run

KUBELET_PATH = "/usr/bin/kubelet"
_SEMVER = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class KubeletVersion:
    """``1.31.7`` from ``Kubernetes v1.31.7-eks-1234abc``."""

    major: int
    minor: int
    patch: int

    @property
    def minor_version(self) -> str:
        """``1.31``: what an assignment's ``kubernetes_version`` is compared with."""
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def parse_kubelet_version(text: str) -> KubeletVersion | None:
    match = _SEMVER.search(text)
    if match is None:
        return None
    major, minor, patch = (int(x) for x in match.groups())
    return KubeletVersion(major, minor, patch)


async def installed_kubelet_version(
    host: HostRoot, *, timeout: float = 15.0
) -> KubeletVersion | None:
    """The installed kubelet's version; None when there is none or it does not say."""
    binary = host.path(KUBELET_PATH)
    if not binary.is_file():
        return None
    try:
        result = await run([str(binary), "--version"], timeout=timeout)
    except ProcessError:
        return None
    if not result.ok:
        return None
    return parse_kubelet_version(result.stdout)


async def kubelet_version(host: HostRoot, timeout: float = 10.0) -> str | None:
    """``1.31.7``, or None: the installed kubelet's version as the lifecycle compares it."""
    version = await installed_kubelet_version(host, timeout=timeout)
    return None if version is None else str(version)
