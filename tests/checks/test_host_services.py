"""``nodeadm.proxy``, ``nodeadm.ssm_agent`` and ``nodeadm.containerd_unit``.

Encodes aws/eks-hybrid v1.0.20: internal/network/proxy_validator.go and proxy.go (which
files init's proxy-validation wants, upper-case variables first), internal/ssm/daemon.go
(setDaemonName: the snap unit on Ubuntu) and internal/containerd/install.go
(ValidateSystemdUnitFile, called from cmd/nodeadm/init/init.go: "containerd daemon not
found").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from agent.core.checks import CheckStatus
from devtools.fakehost import make_host
from tests.checks.helpers import ASSIGNMENT, assignment, config, context, one

ROOT = Path(__file__).resolve().parents[2]
PROXY = "http://proxy.example:3128"


def check_with_env(tmp_path: Path, root: Path, env: dict[str, str]) -> dict:
    (tmp_path / "assignment.json").write_text(json.dumps(ASSIGNMENT))
    cfg = {
        "assignment_file": str(tmp_path / "assignment.json"),
        "state_dir": str(tmp_path / "state"),
        "host": {"root": str(root)},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    r = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(tmp_path / "config.yaml"),
         "--only", "nodeadm.proxy", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False, env={**clean, **env},
    )  # fmt: skip
    [result] = json.loads(r.stdout)["checks"]
    return result


def test_proxy_in_the_environment_needs_every_drop_in(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, os_id="ubuntu", version_id="22.04")
    assert check_with_env(tmp_path, root, {})["status"] == "skip"
    result = check_with_env(tmp_path, root, {"HTTPS_PROXY": PROXY, "https_proxy": PROXY})
    assert result["status"] == "fail"
    for missing in (
        "/etc/apt/apt.conf.d/proxy.conf lacks the proxy setting",
        "the kubelet drop-in /etc/systemd/system/kubelet.service.d/http-proxy.conf",
        "the containerd drop-in /usr/lib/systemd/system/containerd.service.d/http-proxy.conf",
        "the SSM agent drop-in /etc/systemd/system/snap.amazon-ssm-agent.amazon-ssm-agent"
        ".service.d/http-proxy.conf",
    ):
        assert missing in result["message"], missing
    assert f'Environment="HTTPS_PROXY={PROXY}"' in result["remedy"]
    # Writing what the remedy says makes it pass.
    drop_in = f'[Service]\nEnvironment="HTTP_PROXY="\nEnvironment="HTTPS_PROXY={PROXY}"\n'
    for path in (
        "etc/systemd/system/kubelet.service.d/http-proxy.conf",
        "usr/lib/systemd/system/containerd.service.d/http-proxy.conf",
        "etc/systemd/system/snap.amazon-ssm-agent.amazon-ssm-agent.service.d/http-proxy.conf",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(drop_in)
    (root / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/apt.conf.d/proxy.conf").write_text(f'Acquire::https::Proxy "{PROXY}";\n')
    result = check_with_env(tmp_path, root, {"HTTPS_PROXY": PROXY})
    assert result["status"] == "pass", result
    result = check_with_env(tmp_path, root, {"HTTPS_PROXY": PROXY, "https_proxy": "http://other"})
    assert "HTTPS_PROXY and https_proxy differ" in result["message"]


async def test_a_deb_ssm_agent_on_ubuntu_fails(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, os_id="ubuntu", version_id="22.04")
    cfg = config(tmp_path, root)
    assert (await one(context(cfg, assignment()), "nodeadm.ssm_agent")).status is CheckStatus.PASS
    (root / "var/lib/dpkg/info").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/info/amazon-ssm-agent.list").write_text("/usr/bin/amazon-ssm-agent\n")
    r = await one(context(cfg, assignment()), "nodeadm.ssm_agent")
    assert r.status is CheckStatus.FAIL
    assert "snap.amazon-ssm-agent.amazon-ssm-agent" in r.message
    assert "apt-get remove amazon-ssm-agent" in r.remedy
    rhel = tmp_path / "rhel"
    make_host(rhel, os_id="rhel", version_id="9.4")
    r = await one(context(config(tmp_path, rhel), assignment()), "nodeadm.ssm_agent")
    assert r.status is CheckStatus.SKIP


async def test_containerd_source_none_needs_a_containerd_unit(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, os_id="rhel", version_id="9.4")
    cfg = config(tmp_path, root)
    none = assignment(containerd_source="none")
    r = await one(context(cfg, none), "nodeadm.containerd_unit")
    assert r.status is CheckStatus.FAIL
    assert '"containerd daemon not found"' in r.message
    unit = root / "usr/lib/systemd/system/containerd.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/containerd\n")
    r = await one(context(cfg, none), "nodeadm.containerd_unit")
    assert r.status is CheckStatus.PASS
    r = await one(context(cfg, assignment()), "nodeadm.containerd_unit")
    assert r.status is CheckStatus.SKIP
