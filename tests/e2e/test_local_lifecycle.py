"""`edge-agent run` as a real subprocess on a made-up host with the nodeadm stand-in, no
controller and no broker (an air-gapped site): it must join, survive SIGKILL mid-install,
and say exactly what is wrong when it cannot.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agent.checks import CHECK_IDS
from agent.testing import ACTIVATION_CODE, sample_assignment
from devtools.fakehost import layout
from devtools.fakehost.hosttree import make_host
from tests.support import ROOT, HostEnv, process_alive


def test_joins_from_a_local_assignment_and_stops_cleanly(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    h.start()
    st = h.wait_phase("joined", 40)
    assert h.phases[-1] == "joined"
    assert st["kubernetes_version"] == "1.31" and st["node_name"].startswith("mi-")
    assert st["checks"]["failed"] == 0 and st["last_error"] is None
    assert [c[0] for c in h.nodeadm_calls() if c[0] in ("install", "init")] == ["install", "init"]
    install = h.nodeadm_calls("install")[0]
    assert install[:6] == ["install", "1.31", "-p", "ssm", "--containerd-source", "distro"]
    assert install[install.index("-t") + 1] == "1800s"
    cfg = Path(h.config["nodeadm"]["config_path"])
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    doc = yaml.safe_load(cfg.read_text())
    assert doc["kind"] == "NodeConfig" and doc["spec"]["cluster"]["name"] == "eks-hybrid-demo"
    assert "--node-ip=10.200.1.5" in doc["spec"]["kubelet"]["flags"]
    assert h.stop() == 0
    out = h.output()
    assert ACTIVATION_CODE not in out
    assert "agent.stopped" in out
    # nodeadm's raw output is kept per step
    assert (h.state / "logs" / "nodeadm-install.log").stat().st_size > 0


def test_restart_after_joined_runs_nodeadm_no_more(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    h.start()
    h.wait_phase("joined", 40)
    h.stop()
    before = len(h.nodeadm_calls())
    h.start()
    time.sleep(2.0)
    assert h.status()["phase"] == "joined"
    assert len(h.nodeadm_calls()) == before
    h.stop()


def test_sigkill_while_install_hangs_ends_the_orphan_and_rejoins(tmp_path: Path) -> None:
    h = HostEnv(
        tmp_path,
        local_assignment=sample_assignment(),
        nodeadm_env={"NODEADM_FAKE_HANG": "install", "NODEADM_FAKE_HANG_TIMES": "1"},
    )
    h.start()
    h.wait_phase("installing", 30)
    orphan = h.running_nodeadm_pid("install")
    h.kill()
    os.kill(orphan, 0)  # the hanging nodeadm outlived the agent
    assert layout.under(h.root, layout.DPKG_UPDATES).is_dir()
    h.start()
    st = h.wait_phase("joined", 40)
    assert st["phase"] == "joined"
    assert not process_alive(orphan), "the orphaned nodeadm was not ended"
    installs = h.nodeadm_calls("install")
    assert len(installs) == 2  # the hung one, and exactly one re-run
    dpkg = [c["argv"] for c in layout.calls(h.root, "dpkg")]
    assert ["--configure", "-a"] in dpkg, (
        "an interrupted dpkg must be repaired before re-running install"
    )
    assert h.stop() == 0


def test_nodeadm_failure_is_classified_and_retried(tmp_path: Path) -> None:
    h = HostEnv(
        tmp_path,
        local_assignment=sample_assignment(),
        nodeadm_env={
            "NODEADM_FAKE_FAIL": "init:ssm_activation_expired",
            "NODEADM_FAKE_FAIL_TIMES": "1",
        },
    )
    h.start()
    st = h.wait_phase("failed", 40)
    assert st["last_error"]["code"] == "ssm_activation_expired"
    assert ACTIVATION_CODE not in st["last_error"]["message"]
    st = h.wait_phase("joined", 40)
    assert st["last_error"] is None
    assert len(h.nodeadm_calls("install")) == 1, "a finished install must not run again"
    h.stop()


def test_blocking_check_holds_the_join_and_names_the_check(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment(), host={"swap": "partition"})
    h.start()
    st = h.wait_phase("preflight_failed", 30)
    assert st["last_error"]["code"] == "preflight_failed"
    assert "system.swap" in st["last_error"]["message"]
    assert "system.swap" in st["checks"]["failing"]
    assert h.nodeadm_calls("install") == []
    h.stop()


def test_unquoted_version_is_refused_with_advice(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    (tmp_path / "assignment.yaml").write_text(
        (tmp_path / "assignment.yaml")
        .read_text()
        .replace("kubernetes_version: '1.31'\n", "kubernetes_version: 1.30\n", 1)
    )
    h.start()
    st = h.wait_for(lambda: (s := h.status()).get("last_error") and s, 20)
    assert st["last_error"]["code"] == "bad_assignment"
    assert "quote it" in st["last_error"]["message"]
    assert h.nodeadm_calls() == []
    h.stop()


def test_sighup_reload_refuses_a_bad_config_and_keeps_running(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment())
    h.start()
    h.wait_phase("joined", 40)
    good = h.config_path.read_text()
    h.config_path.write_text(good + "bogus_key: 1\n")
    assert h.proc is not None
    h.proc.send_signal(signal.SIGHUP)
    h.wait_for(lambda: "config.reload_refused" in h.output(), 10)
    assert "bogus_key: unknown key" in h.output()
    assert h.proc.poll() is None
    assert h.stop() == 0


def test_sigterm_during_install_ends_it_and_the_next_start_resumes(tmp_path: Path) -> None:
    h = HostEnv(
        tmp_path,
        local_assignment=sample_assignment(),
        nodeadm_env={"NODEADM_FAKE_HANG": "install", "NODEADM_FAKE_HANG_TIMES": "1"},
    )
    h.start()
    h.wait_phase("installing", 30)
    hung = h.running_nodeadm_pid("install")
    assert h.stop(signal.SIGTERM) == 0
    assert not process_alive(hung), "SIGTERM must end the running nodeadm step's process group"
    assert h.status()["phase"] == "installing"  # recorded, so the next start resumes it
    h.start()
    h.wait_phase("joined", 40)
    assert len(h.nodeadm_calls("install")) == 2
    h.stop()


def _cli(h: HostEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "-c", str(h.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_check_json_nodeconfig_and_status_from_the_command_line(tmp_path: Path) -> None:
    h = HostEnv(tmp_path, local_assignment=sample_assignment(), host={"swap": "file"})
    r = _cli(h, "check", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["checks"]) == len(CHECK_IDS) and doc["summary"]["warned"] >= 1
    swap = next(c for c in doc["checks"] if c["id"] == "system.swap")
    assert swap["status"] == "warn" and swap["remedy"]
    r = _cli(h, "check", "--only", "system.swap", "network.cidrs")
    assert r.returncode == 0 and "system.swap" in r.stdout and "os.supported" not in r.stdout
    assert _cli(h, "check", "--only", "no.such.check").returncode == 2
    r = _cli(h, "nodeconfig")
    assert r.returncode == 0 and ACTIVATION_CODE not in r.stdout and "<redacted>" in r.stdout
    r = _cli(h, "nodeconfig", "--show-secrets")
    assert ACTIVATION_CODE in r.stdout
    r = _cli(h, "status", "--json")
    st = json.loads(r.stdout)
    # Never run: no daemon, and no phase made up for it.
    assert r.returncode == 3 and st["running"] is False
    assert st["phase"] is None and st["uid"] == h.uid
    make_host(h.root, swap="partition")
    r = _cli(h, "check")
    assert r.returncode == 1 and "FAIL" in r.stdout and "system.swap" in r.stdout
