"""``network.firewall``: nodeadm init's cni-validation, judged before init runs.

Encodes aws/eks-hybrid v1.0.20: cmd/nodeadm/init/init.go (validateFirewallOpenPorts, the
cni-validation phase), internal/system/ports.go (ufw on Ubuntu, firewalld elsewhere),
internal/firewall/firewalld.go (``--state`` exit codes 251/252, ``--reload`` before
``--query-port``) and internal/firewall/ufw.go (``Status: active``, rules from Anywhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.core.checks import CheckStatus
from agent.core.config import ConfigError, parse_config
from devtools.fakehost import calls, make_host
from devtools.fakehost.firewall import set_firewalld, set_ufw
from tests.checks.helpers import ASSIGNMENT, config, context, fake_programs, one

ROOT = Path(__file__).resolve().parents[2]


def host(
    tmp_path: Path, os_id: str = "rhel", version_id: str = "9.4"
) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "host"
    make_host(root, os_id=os_id, version_id=version_id)
    return root, fake_programs(tmp_path, root)


def edge_agent_check(tmp_path: Path, root: Path, programs: dict[str, str]) -> tuple[int, dict]:
    (tmp_path / "assignment.json").write_text(json.dumps(ASSIGNMENT))
    cfg = {
        "assignment_file": str(tmp_path / "assignment.json"),
        "state_dir": str(tmp_path / "state"),
        "host": {"root": str(root)},
        "programs": programs,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "agent", "check", "-c", str(tmp_path / "config.yaml"),
         "--only", "network.firewall", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    [result] = json.loads(r.stdout)["checks"]
    return r.returncode, result


def test_rhel_with_firewalld_and_8472_closed_fails_check_until_the_port_is_opened(
    tmp_path: Path,
) -> None:
    root, programs = host(tmp_path)
    set_firewalld(root, running=True, permanent=("22/tcp",))
    code, result = edge_agent_check(tmp_path, root, programs)
    assert code == 1
    assert result["status"] == "fail"
    assert (
        "firewalld is running and 8472/udp (Cilium's VXLAN port) is not open" in result["message"]
    )
    assert result["remedy"] == (
        "open it: firewall-cmd --permanent --add-port=8472/udp && firewall-cmd --reload"
    )
    # The remedy, run as printed, is what makes the check pass.
    fw = programs["firewall_cmd"]
    subprocess.run([fw, "--permanent", "--add-port=8472/udp"], check=True, capture_output=True)
    subprocess.run([fw, "--reload"], check=True, capture_output=True)
    code, result = edge_agent_check(tmp_path, root, programs)
    assert (code, result["status"]) == (0, "pass"), result
    assert "firewalld open(s) 8472/udp" in result["message"]


async def test_a_port_open_only_at_runtime_fails_because_init_reloads_firewalld(
    tmp_path: Path,
) -> None:
    root, programs = host(tmp_path)
    set_firewalld(root, running=True, permanent=(), runtime=("8472/udp",))
    r = await one(context(config(tmp_path, root, programs=programs)), "network.firewall")
    assert r.status is CheckStatus.FAIL
    assert "only at runtime, and nodeadm init reloads firewalld first" in r.message


async def test_the_configured_vxlan_port_is_the_one_wanted(tmp_path: Path) -> None:
    root, programs = host(tmp_path)
    set_firewalld(root, running=True, permanent=("8472/udp",))
    cfg = config(tmp_path, root, programs=programs, checks={"vxlan_port": 4789})
    r = await one(context(cfg), "network.firewall")
    assert r.status is CheckStatus.FAIL
    assert "4789/udp (Calico's VXLAN port) is not open" in r.message
    assert "--add-port=4789/udp" in r.remedy
    # A port no known CNI uses by default is named bare, and asked for all the same.
    cfg = config(tmp_path, root, programs=programs, checks={"vxlan_port": 9999})
    r = await one(context(cfg), "network.firewall")
    assert r.status is CheckStatus.FAIL
    assert "firewalld is running and 9999/udp is not open" in r.message
    assert [c for c in calls(root, "firewall-cmd") if "--query-port=9999/udp" in c["argv"]]
    set_firewalld(root, running=True, permanent=("9999/udp",))
    r = await one(context(cfg), "network.firewall")
    assert (r.status, r.message) == (CheckStatus.PASS, "firewalld open(s) 9999/udp")


@pytest.mark.parametrize(
    ("value", "words"),
    [("flannel", "must be a number, got a string"), (70000, "must be a port of 1-65535, got 70000"),
     (0, "must be a port of 1-65535, got 0"), (8472.5, "must be a whole number")],
)  # fmt: skip
def test_a_wrong_vxlan_port_is_a_config_error_naming_the_key(value: object, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(
            {"assignment_file": "/etc/hostname", "checks": {"vxlan_port": value}},
            readable=lambda _: True,
        )
    assert str(e.value).startswith(f"checks.vxlan_port: {words}")


async def test_ubuntu_asks_ufw_and_counts_only_rules_from_anywhere(tmp_path: Path) -> None:
    root, programs = host(tmp_path, "ubuntu", "22.04")
    set_ufw(root, active=True, rules=("22/tcp ALLOW Anywhere", "8472/udp ALLOW 10.0.0.0/8"))
    cfg = config(tmp_path, root, programs=programs)
    r = await one(context(cfg), "network.firewall")
    assert r.status is CheckStatus.FAIL, r
    assert r.message.startswith("ufw is running and 8472/udp")
    assert r.remedy == "open it: ufw allow 8472/udp"
    subprocess.run([programs["ufw"], "allow", "8472/udp"], check=True, capture_output=True)
    assert (await one(context(cfg), "network.firewall")).status is CheckStatus.PASS
    # firewalld is not what nodeadm asks on Ubuntu: it was never queried for a port.
    assert not [c for c in calls(root, "firewall-cmd") if "--query-port=8472/udp" in c["argv"]]


async def test_no_firewall_running_or_installed_skips(tmp_path: Path) -> None:
    root, programs = host(tmp_path)
    r = await one(context(config(tmp_path, root, programs=programs)), "network.firewall")
    assert r.status is CheckStatus.SKIP
    missing = {
        "firewall_cmd": str(tmp_path / "nope" / "firewall-cmd"),
        "ufw": str(tmp_path / "nope" / "ufw"),
    }
    r = await one(context(config(tmp_path, root, programs=missing)), "network.firewall")
    assert r.status is CheckStatus.SKIP and r.message == "neither firewalld nor ufw is running"
