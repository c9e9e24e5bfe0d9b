"""nodeadm's sysctls after a reboot, on a made-up host: kept, compared, re-applied, reported."""

from __future__ import annotations

import json
from pathlib import Path

from agent.host.hostroot import HostRoot
from agent.host.sysctl import COPY_NAME, NODEADM_CONF, keep_copy, parse_conf, restore
from devtools.fakehost import make_host

# What nodeadm init writes (the stand-in writes the same four).
CONF = "vm.overcommit_memory=1\nkernel.panic=10\nkernel.panic_on_oops=1\nnet.ipv4.ip_forward=1\n"
KEYS = ["vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward"]


def host(tmp_path: Path, live: dict[str, str], conf: str | None = CONF) -> HostRoot:
    root = tmp_path / "host"
    make_host(root, mode="appliance")
    for key, value in live.items():
        path = root / "proc/sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    if conf is not None:
        (root / "etc/sysctl.d").mkdir(parents=True, exist_ok=True)
        (root / NODEADM_CONF.lstrip("/")).write_text(conf)
    return HostRoot(root)


def value(h: HostRoot, key: str) -> str:
    return h.path("/proc/sys/" + key.replace(".", "/")).read_text().strip()


def test_sysctl_d_syntax() -> None:
    text = "# c\n; c\n-net.a.b = 1\nk/x/y=2\nvm.z =  4   8 \nvm.z=5\nnot a setting\n"
    assert parse_conf(text) == {"net.a.b": "1", "k/x/y": "2", "vm.z": "5"}


async def test_in_force_after_boot_changes_nothing_and_keeps_a_copy(tmp_path: Path) -> None:
    h = host(tmp_path, dict.fromkeys(KEYS, "1") | {"kernel.panic": "10"})
    state = tmp_path / "state"
    r = await restore(h, state, systemd_run=None)
    assert r.ok and r.source == NODEADM_CONF
    assert list(r.in_force) == KEYS and r.reapplied == ()
    assert (state / COPY_NAME).read_text() == CONF


async def test_a_lost_file_is_reapplied_from_the_agents_copy(tmp_path: Path) -> None:
    h = host(tmp_path, dict.fromkeys(KEYS, "0"))
    state = tmp_path / "state"
    assert keep_copy(h, state)  # after init
    h.path(NODEADM_CONF).unlink()  # the reboot: /etc was in memory
    r = await restore(h, state, systemd_run=None)
    assert r.ok, r
    assert r.source == str(state / COPY_NAME)
    assert list(r.reapplied) == KEYS
    assert [value(h, k) for k in KEYS] == ["1", "10", "1", "1"]


async def test_read_only_proc_sys_is_reported_not_written(tmp_path: Path) -> None:
    # As in a container: /proc/sys read-only, its net/ subtree writable (own network namespace).
    h = host(tmp_path, dict.fromkeys(KEYS, "0"))
    with h.path("/proc/1/mountinfo").open("a") as f:
        f.write("300 22 0:22 /sys /proc/sys ro,nosuid,nodev,noexec - proc proc rw\n")
        f.write("301 300 0:22 /sys/net /proc/sys/net rw,nosuid,nodev,noexec - proc proc rw\n")
    r = await restore(h, tmp_path / "state", systemd_run=None)
    assert not r.ok
    assert list(r.reapplied) == ["net.ipv4.ip_forward"] and value(h, "net.ipv4.ip_forward") == "1"
    assert set(r.missing) == {"vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops"}
    assert r.missing["kernel.panic"] == (
        "is '0', wanted '10', and /proc/sys/kernel/panic is read-only here (mounted read-only "
        "on /proc/sys: a container shares the host's settings)"
    )
    assert value(h, "kernel.panic") == "0"
    assert "kernel.panic: is '0', wanted '10'" in r.problem()


async def test_nothing_to_restore_from_is_a_loss(tmp_path: Path) -> None:
    h = host(tmp_path, dict.fromkeys(KEYS, "0"), conf=None)
    r = await restore(h, tmp_path / "state", systemd_run=None)
    assert not r.ok and r.source is None
    assert "neither /etc/sysctl.d/99-nodeadm.conf nor the agent's copy exists" in r.problem()


async def test_under_systemd_sysctl_runs_in_a_transient_unit(tmp_path: Path) -> None:
    h = host(tmp_path, dict.fromkeys(KEYS, "1") | {"kernel.panic": "0"})
    calls = tmp_path / "calls.json"
    fake = tmp_path / "systemd-run"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(calls)!r}, 'w'))\nsys.exit(3)\n"
    )
    fake.chmod(0o755)
    r = await restore(h, tmp_path / "state", systemd_run=str(fake))
    argv = json.loads(calls.read_text())
    assert argv[argv.index("--") + 1 :] == ["sysctl", "-w", "kernel.panic=10"]
    assert "Type=exec" in argv
    assert r.missing == {"kernel.panic": "still '0' after setting it (sysctl -w exited 3)"}
