"""``os.supported``, ``kubernetes.version`` and ``nodeadm.binary``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.checks.nodeadm_binary import parse_version
from agent.core.assignment import Assignment
from agent.core.checks import CheckResult, CheckStatus
from agent.core.config import Config
from devtools.fakehost import make_host
from tests.checks.helpers import (
    assignment,
    config,
    context,
    fake_programs,
    ira_assignment,
    one,
    script,
)


@pytest.mark.parametrize(
    ("os_id", "version_id"),
    [
        ("ubuntu", "22.04"),
        ("ubuntu", "24.04"),
        ("ubuntu", "20.04"),
        ("rhel", "8.10"),
        ("rhel", "9.4"),
        ("rhel", "9"),
        ("amzn", "2023"),
    ],
)
async def test_supported_oses_pass(tmp_path: Path, os_id: str, version_id: str) -> None:
    root = tmp_path / "host"
    make_host(root, os_id=os_id, version_id=version_id)
    r = await one(context(config(tmp_path, root)), "os.supported")
    assert r.status is CheckStatus.PASS, r
    assert r.details["id"] == os_id
    assert r.details["arch"] == "x86_64"


@pytest.mark.parametrize(
    ("os_id", "version_id", "expected"),
    [
        ("ubuntu", "18.04", "is not a supported ubuntu release (20.04/22.04/24.04)"),
        ("rhel", "7.9", "is not a supported rhel release (8/9)"),
        ("amzn", "2", "is not a supported amzn release (2023)"),
        ("debian", "12", "(ID=debian) is not an OS nodeadm supports"),
    ],
)
async def test_unsupported_oses_fail(
    tmp_path: Path, os_id: str, version_id: str, expected: str
) -> None:
    root = tmp_path / "host"
    make_host(root, os_id=os_id, version_id=version_id)
    r = await one(context(config(tmp_path, root)), "os.supported")
    assert r.status is CheckStatus.FAIL
    assert expected in r.message


async def test_architecture_and_missing_os_release(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(tmp_path, root)
    assert (await one(context(cfg, arch="aarch64"), "os.supported")).status is CheckStatus.PASS
    r = await one(context(cfg, arch="riscv64"), "os.supported")
    assert r.status is CheckStatus.FAIL
    assert "riscv64" in r.message
    (root / "etc/os-release").unlink()
    r = await one(context(cfg), "os.supported")
    assert r.status is CheckStatus.FAIL
    assert "no /etc/os-release" in r.message


@pytest.mark.parametrize(
    ("os_id", "version_id", "source", "refused"),
    [
        ("rhel", "9.4", "distro", True),
        ("rhel", "9.4", "docker", False),
        ("amzn", "2023", "docker", True),
        ("amzn", "2023", "distro", False),
        ("ubuntu", "22.04", "docker", False),
        ("ubuntu", "22.04", "none", False),
    ],
)
async def test_containerd_source_per_os(
    tmp_path: Path, os_id: str, version_id: str, source: str, refused: bool
) -> None:
    root = tmp_path / "host"
    make_host(root, os_id=os_id, version_id=version_id)
    r = await one(
        context(config(tmp_path, root), assignment(containerd_source=source)), "os.supported"
    )
    assert r.status is (CheckStatus.FAIL if refused else CheckStatus.PASS), r
    if refused:
        assert f"nodeadm refuses containerd_source {source}" in r.message
        assert "change the assignment's containerd_source" in r.remedy


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    root = tmp_path / "host"
    make_host(root)
    return config(tmp_path, root)


@pytest.mark.parametrize(
    ("target", "plane", "status", "expected"),
    [
        ("1.31", "1.31", CheckStatus.PASS, "Kubernetes 1.31 is supported, control plane 1.31"),
        ("1.31.2", None, CheckStatus.PASS, "Kubernetes 1.31.2 is supported"),
        ("1.30", "1.33", CheckStatus.PASS, ""),
        ("1.29", None, CheckStatus.FAIL, "is not in kubernetes.supported_versions (1.30, 1.31"),
        ("2.1", None, CheckStatus.FAIL, "is not a version like"),
        ("1.32", "1.31", CheckStatus.FAIL, "newer than the control plane (1.31)"),
        ("1.30", "1.34", CheckStatus.FAIL, "4 minor versions older than the control plane (1.34)"),
    ],
)
async def test_kubernetes_version(
    cfg: Config, target: str, plane: str | None, status: CheckStatus, expected: str
) -> None:
    a = assignment(kubernetes_version=target, cluster__kubernetes_version=plane)
    r = await one(context(cfg, a), "kubernetes.version")
    assert r.status is status, r
    assert expected in r.message


async def test_kubernetes_version_list_can_be_widened(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(tmp_path, root, kubernetes={"supported_versions": ["1.28", "1.29"]})
    a = assignment(kubernetes_version="1.28", cluster__kubernetes_version="1.29")
    assert (await one(context(cfg, a), "kubernetes.version")).status is CheckStatus.PASS


def test_parse_version() -> None:
    assert parse_version("Version: v1.0.20\n") == (1, 0, 20)
    assert parse_version("Version: v1.0.21-dirty") == (1, 0, 21)
    assert parse_version("nodeadm 1.0") is None


async def nodeadm_result(tmp_path: Path, version: str | None, a: Assignment | None) -> CheckResult:
    root = tmp_path / "host"
    make_host(root)
    env = {"NODEADM_FAKE_VERSION": version} if version else {}
    cfg = config(tmp_path, root, programs=fake_programs(tmp_path, root, env))
    return await one(context(cfg, a), "nodeadm.binary")


async def test_nodeadm_current_passes(tmp_path: Path) -> None:
    r = await nodeadm_result(tmp_path, None, assignment())
    assert r.status is CheckStatus.PASS
    assert r.message == "nodeadm v1.0.20"


async def test_old_nodeadm_fails_for_ssm_only(tmp_path: Path) -> None:
    r = await nodeadm_result(tmp_path, "v1.0.18", assignment())
    assert r.status is CheckStatus.FAIL
    assert "nodeadm v1.0.18 is too old for SSM" in r.message
    assert "2026-07-15" in r.message
    assert "hybrid-assets.eks.amazonaws.com" in r.remedy
    (tmp_path / "host").rename(tmp_path / "old-host")
    r = await nodeadm_result(tmp_path, "v1.0.18", ira_assignment())
    assert r.status is CheckStatus.PASS


async def test_without_assignment_nodeadm_only_has_to_run(tmp_path: Path) -> None:
    r = await nodeadm_result(tmp_path, "v1.0.5", None)
    assert r.status is CheckStatus.PASS
    assert r.details["version"] == "1.0.5"


async def test_missing_nodeadm_fails_with_how_to_install(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(tmp_path, root, programs={"nodeadm": str(tmp_path / "nowhere/nodeadm")})
    r = await one(context(cfg, assignment(), arch="aarch64"), "nodeadm.binary")
    assert r.status is CheckStatus.FAIL
    assert "cannot run nodeadm" in r.message
    assert "/linux/arm64/nodeadm" in r.remedy
    assert "programs.nodeadm" in r.remedy
    appliance = config(
        tmp_path, root, host={"mode": "appliance"}, programs={"nodeadm": str(tmp_path / "x")}
    )
    r = await one(context(appliance), "nodeadm.binary")
    assert "build a new appliance image" in r.remedy


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('echo "panic: runtime error" >&2; exit 2', "exited 2: panic: runtime error"),
        ('echo "nodeadm development build"', "printed no 'Version: vX.Y.Z'"),
    ],
)
async def test_nodeadm_that_runs_badly_fails(tmp_path: Path, body: str, expected: str) -> None:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(tmp_path, root, programs={"nodeadm": script(tmp_path / "bin/nodeadm", body)})
    r = await one(context(cfg), "nodeadm.binary")
    assert r.status is CheckStatus.FAIL
    assert expected in r.message
