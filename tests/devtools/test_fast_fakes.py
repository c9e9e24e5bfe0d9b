"""The benchmarks' /bin/sh stand-ins (benchmarks/common.install_fast_fakes) answer what the
Python fakes of devtools/fakehost answer on the same made-up host: a fleet measured with them
must take the same paths through the checks (a firewall the fast fake calls stopped while the
host says it runs would skip the check the real agent would fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.fakehost.firewall import set_firewalld, set_ufw
from devtools.fakehost.hosttree import install_fake_programs, make_host, set_ntp_synced, set_unit

# benchmarks/common.py: the benchmarks are scripts, not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import common

CALLS = [
    ("firewall_cmd", ["--state"]),
    ("firewall_cmd", ["--permanent", "--query-port=8472/udp"]),
    ("firewall_cmd", ["--query-port=8472/udp"]),
    ("ufw", ["status"]),
    ("systemctl", ["is-active", "kubelet"]),
    ("timedatectl", ["show", "-p", "NTPSynchronized"]),
    ("nodeadm", ["version"]),
]


def answer(program: str, args: list[str]) -> tuple[int, str]:
    done = subprocess.run(
        [program, *args], check=False, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout.strip()


def both(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    root = tmp_path / "host"
    make_host(root)
    slow = install_fake_programs(tmp_path / "bin", root)
    fast = common.install_fast_fakes(tmp_path / "bin", root, slow)
    return root, slow, fast


@pytest.mark.parametrize("host", ["bare", "firewalld-open", "firewalld-stopped", "ufw-active",
                                  "kubelet-active-ntp-unsynced"])
def test_the_fast_fakes_answer_as_the_python_fakes(tmp_path: Path, host: str) -> None:
    root, slow, fast = both(tmp_path)
    if host == "firewalld-open":
        set_firewalld(root, running=True, permanent=("8472/udp",))
    elif host == "firewalld-stopped":
        set_firewalld(root, running=False)
    elif host == "ufw-active":
        set_ufw(root, active=True, rules=("8472/udp ALLOW Anywhere",))
    elif host == "kubelet-active-ntp-unsynced":
        set_unit(root, "kubelet", "active")
        set_ntp_synced(root, False)
    for key, args in CALLS:
        assert fast[key] != slow[key], f"{key} has no fast stand-in"
        assert answer(fast[key], args) == answer(slow[key], args), (key, args, host)


def test_on_a_host_without_firewall_state_the_fast_fakes_say_stopped(tmp_path: Path) -> None:
    _, _, fast = both(tmp_path)
    assert answer(fast["firewall_cmd"], ["--state"]) == (252, "not running")
    assert answer(fast["firewall_cmd"], ["--reload"]) == (252, "FirewallD is not running")
    assert answer(fast["ufw"], ["status"]) == (0, "Status: inactive")


def test_importing_the_benchmarks_common_module_leaves_the_environment_alone() -> None:
    # The tests import it; a PYTHONPYCACHEPREFIX it set on import once sent the compileall of
    # every later install.sh run in the suite to the benchmarks' cache, leaving venvs unbuilt.
    probe = (
        "import os, sys; sys.path.insert(0, 'benchmarks'); before = dict(os.environ); "
        "import common; print(sorted(set(before.items()) ^ set(os.environ.items())))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    cwd = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout
