"""The installed kubelet's version, asked of the binary under a made-up host root."""

from __future__ import annotations

from pathlib import Path

from agent.host.hostroot import HostRoot
from agent.host.kubelet import kubelet_version
from devtools.fakehost import make_host
from devtools.fakehost.layout import write_kubernetes_binaries


def _kubelet(root: Path, script: str) -> None:
    path = root / "usr/bin/kubelet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


async def test_the_version_the_kubelet_prints(tmp_path: Path) -> None:
    make_host(tmp_path)
    assert await kubelet_version(HostRoot(tmp_path)) is None  # nothing installed
    write_kubernetes_binaries(tmp_path, "1.31.7")
    assert await kubelet_version(HostRoot(tmp_path)) == "1.31.7"


async def test_an_eks_build_suffix_is_dropped(tmp_path: Path) -> None:
    _kubelet(tmp_path, 'echo "Kubernetes v1.32.3-eks-473151a"')
    assert await kubelet_version(HostRoot(tmp_path)) == "1.32.3"


async def test_a_kubelet_that_fails_or_babbles_has_no_version(tmp_path: Path) -> None:
    _kubelet(tmp_path, 'echo "Kubernetes v1.31.7"; exit 2')
    assert await kubelet_version(HostRoot(tmp_path)) is None
    _kubelet(tmp_path, "echo something else")
    assert await kubelet_version(HostRoot(tmp_path)) is None
    _kubelet(tmp_path, "sleep 5")
    assert await kubelet_version(HostRoot(tmp_path), timeout=0.2) is None
