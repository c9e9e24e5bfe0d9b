"""Reading the installed kubelet's version for recovery, as nodeadm itself reads it.

Encodes aws/eks-hybrid v1.0.20: internal/kubelet/version.go (``kubelet --version``, the
first ``vX.Y.Z``), internal/kubelet/install.go (BinPath /usr/bin/kubelet) and
internal/node/hybrid/versionskew_validator.go (init compares kubelet with the control plane,
never with the version one wants installed).
"""

from __future__ import annotations

from pathlib import Path

from agent.host.hostroot import HostRoot
from agent.host.kubelet import installed_kubelet_version, parse_kubelet_version
from devtools.fakehost import make_host


def test_parse_the_real_output() -> None:
    v = parse_kubelet_version("Kubernetes v1.31.7-eks-1234abc\n")
    assert v is not None and (str(v), v.minor_version) == ("1.31.7", "1.31")
    assert parse_kubelet_version("kubelet: command not found") is None


async def test_the_installed_kubelet_not_the_assignment_decides(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    host = HostRoot(root)
    assert await installed_kubelet_version(host) is None
    # A host installed for 1.30 while the assignment already says 1.31.
    make_host(root, installed=True, kubernetes_version="1.30.11")
    v = await installed_kubelet_version(host)
    assert v is not None and v.minor_version == "1.30" and str(v) == "1.30.11"
    broken = root / "usr/bin/kubelet"
    broken.write_text("#!/bin/sh\nexit 1\n")
    assert await installed_kubelet_version(host) is None
