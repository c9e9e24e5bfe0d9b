"""The version of the kubelet installed on the host, read from the binary itself.

nodeadm's tracker holds no version, so what is installed is asked of the kubelet under the
host root (``/usr/bin/kubelet --version``, where nodeadm puts it). In appliance mode this is
what the read-only image carries, and the assignment's version is judged against it.
"""

from __future__ import annotations

import re

from agent.host.hostroot import HostRoot
from agent.host.proc import ProcessError, run

KUBELET = "/usr/bin/kubelet"
# ``Kubernetes v1.31.7`` (upstream) or ``Kubernetes v1.31.7-eks-1234abc`` (EKS builds).
_VERSION = re.compile(r"Kubernetes v(\d+\.\d+\.\d+)")


async def kubelet_version(host: HostRoot, timeout: float = 10.0) -> str | None:
    """``1.31.7``, or None when there is no kubelet or it does not say its version."""
    binary = host.path(KUBELET)
    if not binary.is_file():
        return None
    try:
        res = await run([str(binary), "--version"], timeout=timeout)
    except ProcessError:
        return None
    m = _VERSION.search(res.stdout) if res.ok else None
    return m.group(1) if m else None
