"""NodeadmRunner against the nodeadm stand-in: real processes on a made-up host tree.

Joins and the exit-0 quirks, failure classification from the stand-in's failure modes,
logging (file, rotation, on_line, secrets), the one-run-at-a-time lock, and the argument
lists of upgrade, uninstall and debug. Timeouts, cancellation, orphans and systemd-run are
in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from agent.core.assignment import parse_assignment
from devtools.fakehost.layout import calls, set_unit
from tests.nodeadm.conftest import FakeHost
from tests.nodeadm.samples import ACTIVATION_CODE, IRA, SSM, doc

Factory = Callable[..., FakeHost]
A = parse_assignment(SSM)


async def test_install_then_init_joins(fake_host: Factory) -> None:
    fh = fake_host()
    runner = fh.runner()
    installed = await runner.install(A)
    assert installed.ok, installed.message
    assert (installed.code, installed.exit_code, installed.step) == (None, 0, "install")
    assert (fh.root / "opt/nodeadm/tracker").is_file()
    joined = await runner.init(A, fh.config_path)
    assert joined.ok, joined.message
    assert joined.node_name is not None
    assert joined.node_name.startswith("mi-")
    assert stat.S_IMODE(fh.config_path.stat().st_mode) == 0o600
    argv = [c["argv"] for c in fh.calls()]
    assert argv == [
        ["install", "1.31", "-p", "ssm", "--containerd-source", "distro", "-r", "us-west-2",
         "-t", "1800s"],
        ["init", "-c", f"file://{fh.config_path.resolve()}"],
    ]  # fmt: skip
    assert [c["argv"] for c in calls(fh.root, "systemctl")] == [["is-active", "kubelet"]]
    assert runner.running is None
    assert not runner.record_path.exists()


async def test_iam_roles_anywhere_join_names_the_node(fake_host: Factory) -> None:
    fh = fake_host(installed=True, credential_provider="iam-ra")
    # The node name comes from the subject's CN, not the SAN; cryptography 51 refuses a
    # certificate with an empty SAN list, so the certificate carries one too.
    cert = trustme.CA().issue_cert("node.store-42.example", common_name="store-42-node-1")
    pki = fh.root / "etc/iam/pki"
    pki.mkdir(parents=True)
    (pki / "server.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (pki / "server.key").write_bytes(cert.private_key_pem.bytes())
    outcome = await fh.runner().init(parse_assignment(IRA), fh.config_path)
    assert outcome.ok, outcome.message
    assert outcome.node_name == "store-42-node-1"
    assert (fh.root / "etc/aws/hybrid/config").is_file()


async def test_init_without_install_is_not_installed(fake_host: Factory) -> None:
    fh = fake_host()
    outcome = await fh.runner().init(A, fh.config_path)
    assert (outcome.ok, outcome.exit_code, outcome.code) == (False, 0, "not_installed")
    assert "not installed" in outcome.message


async def test_init_with_kubelet_not_staying_up(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_FAIL": "init:kubelet_inactive"}, installed=True)
    outcome = await fh.runner().init(A, fh.config_path)
    assert (outcome.ok, outcome.exit_code, outcome.code) == (False, 0, "kubelet_inactive")


@pytest.mark.parametrize(
    ("knobs", "host", "code", "says"),
    [
        ({"NODEADM_FAKE_FAIL": "init:ssm_activation_expired"}, {}, "ssm_activation_expired",
         "SSM activation expired"),
        ({"NODEADM_FAKE_FAIL": "init:ssm_activation_invalid"}, {}, "ssm_activation_invalid",
         "invalid SSM activation"),
        ({}, {"swap": "partition"}, "partition_swap", "partition type swap"),
        ({"NODEADM_FAKE_REMOTE_NODE_CIDRS": "10.99.0.0/16"}, {}, "node_ip_out_of_range",
         "node IP 10.200.1.5 is not in any of the remote network CIDR blocks"),
        ({"NODEADM_FAKE_FAIL": "init:generic"}, {}, "nodeadm_failed", "sandbox image"),
    ],
)  # fmt: skip
async def test_init_failures_are_classified(
    fake_host: Factory, knobs: dict[str, str], host: dict[str, Any], code: str, says: str
) -> None:
    fh = fake_host(knobs, installed=True, **host)
    outcome = await fh.runner().init(A, fh.config_path)
    assert (outcome.ok, outcome.exit_code, outcome.code) == (False, 1, code)
    assert says in outcome.message
    assert outcome.message.startswith("nodeadm init failed: ")


async def test_stale_index_burns_the_install_timeout(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_FAIL": "install:stale_index"})
    outcome = await fh.runner(install_timeout_s=1).install(A)
    assert (outcome.code, outcome.exit_code, outcome.timed_out) == (
        "package_install_timeout",
        1,
        False,
    )
    assert "context deadline exceeded" in outcome.message
    assert "apt-get update" in outcome.message  # our remediation
    assert fh.calls()[0]["argv"][-2:] == ["-t", "1s"]


async def test_generic_install_failure(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_FAIL": "install:generic"})
    outcome = await fh.runner().install(A)
    assert (outcome.code, outcome.exit_code) == ("nodeadm_failed", 1)
    assert "failed to install iptables" in outcome.message


async def test_every_line_reaches_on_line_and_the_log(fake_host: Factory) -> None:
    fh = fake_host()
    runner = fh.runner()
    outcome = await runner.install(A)
    assert outcome.log_path == fh.state_dir / "logs" / "nodeadm-install.log"
    written = [json.loads(x) for x in outcome.log_path.read_text().splitlines() if x]
    seen = [line for step, line in fh.lines if step == "install"]
    assert [line.msg for line in seen] == [w["msg"] for w in written]
    assert all(not line.raw and line.ts and line.caller for line in seen)
    assert "Installing containerd..." in [line.msg for line in seen]
    logged = fh.log.events("nodeadm.line")
    assert [e["text"] for e in logged] == [w["msg"] for w in written]
    assert {e["step"] for e in logged} == {"install"}


async def test_the_activation_code_never_leaves(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_FAIL": "init:ssm_activation_invalid"}, installed=True)
    runner = fh.runner()
    outcome = await runner.init(A, fh.config_path)
    assert outcome.code == "ssm_activation_invalid"
    assert ACTIVATION_CODE in fh.config_path.read_text()  # nodeadm needs it ...
    leaks = [
        outcome.message,
        fh.log.dump(),
        json.dumps([(s, line.as_event()) for s, line in fh.lines]),
        (fh.state_dir / "logs" / "nodeadm-init.log").read_text(),
    ]
    assert not [text for text in leaks if ACTIVATION_CODE in text]  # ... nothing else does


async def test_logs_rotate_keeping_five(fake_host: Factory) -> None:
    fh = fake_host()
    runner = fh.runner()
    for _ in range(7):
        outcome = await runner.uninstall()
        assert outcome.ok, outcome.message
    logs = sorted(p.name for p in (fh.state_dir / "logs").iterdir())
    assert logs == ["nodeadm-uninstall.log"] + [f"nodeadm-uninstall.log.{i}" for i in range(1, 6)]
    assert "already uninstalled" in (fh.state_dir / "logs" / "nodeadm-uninstall.log").read_text()


async def test_one_run_at_a_time(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_DELAY": "0.05"})
    runner = fh.runner()
    first = asyncio.create_task(runner.install(A))
    await asyncio.sleep(0.1)
    assert runner.running == "install"
    second = asyncio.create_task(runner.uninstall())
    installed, uninstalled = await asyncio.gather(first, second)
    assert installed.ok
    assert uninstalled.ok
    steps = [step for step, _ in fh.lines]
    assert steps == sorted(steps, key=lambda s: s != "install")  # no interleaving
    assert runner.running is None


async def test_upgrade_and_uninstall_argv_when_drained(fake_host: Factory) -> None:
    fh = fake_host(installed=True, ssm_registration="mi-0123456789abcdef0")
    runner = fh.runner(upgrade_timeout_s=600)
    upgraded = await runner.upgrade(
        parse_assignment(doc(SSM, kubernetes_version="1.32")), fh.config_path, drained=True
    )
    assert upgraded.ok, upgraded.message
    assert upgraded.node_name == "mi-0123456789abcdef0"
    (fh.root / "var/lib/kubelet/pki").mkdir(parents=True, exist_ok=True)
    (fh.root / "var/lib/kubelet/pki/kubelet-server-current.pem").write_text("old cert")
    removed = await runner.uninstall(force=True, drained=True, remove_kubelet_certs=True)
    assert removed.ok, removed.message
    assert not (fh.root / "opt/nodeadm/tracker").exists()
    assert not (fh.root / "var/lib/kubelet/pki").exists()
    assert [c["argv"] for c in fh.calls()] == [
        ["upgrade", "1.32", "-c", f"file://{fh.config_path.resolve()}", "-t", "600s",
         "--skip", "pod-validation,node-validation"],
        ["uninstall", "--skip", "pod-validation,node-validation", "--force"],
    ]  # fmt: skip


async def test_a_refused_nodeconfig_runs_nothing(fake_host: Factory) -> None:
    fh = fake_host(installed=True)
    bad = parse_assignment(doc(SSM, kubelet={"flags": ["--hostname-override=x"]}))
    outcome = await fh.runner().init(bad, fh.config_path)
    assert (outcome.ok, outcome.code, outcome.exit_code) == (False, "bad_assignment", None)
    assert "--hostname-override" in outcome.message
    assert fh.calls() == []


async def test_debug_report(fake_host: Factory) -> None:
    fh = fake_host(installed=True)
    runner = fh.runner()
    assert (await runner.init(A, fh.config_path)).ok
    report = await runner.debug(fh.config_path)
    assert report.ok, report
    # aws/eks-hybrid v1.0.20: cmd/nodeadm/debug/debug.go, internal/validation/printer.go,
    # internal/network/utils.go (ValidateIPInRemoteNodeNetwork) and interface.go.
    assert report.items[0].description == "Validating access to AWS SSM API endpoint"
    assert all(i.ok and i.error is None for i in report.items)
    fh.knobs(NODEADM_FAKE_REMOTE_NODE_CIDRS="10.99.0.0/16")
    failed = await runner.debug(fh.config_path)
    assert not failed.ok
    bad = [i.as_dict() for i in failed.items if not i.ok]
    docs = "https://docs.aws.amazon.com/eks/latest/userguide/hybrid-nodes-troubleshooting.html"
    assert bad == [
        {
            "description": "Validating hybrid node network interface",
            "ok": False,
            "error": "node IP 10.200.1.5 is not in any of the remote network CIDR blocks: "
            f"[10.99.0.0/16]. See {docs} or use --skip node-ip-validation",
            "remediation": "Ensure the node IP is within the configured remote network CIDR "
            "blocks. Update the remote network configuration in the EKS cluster or adjust the "
            f"node's network configuration. See {docs}",
        }
    ]
    assert failed.as_dict()["ok"] is False
    assert fh.calls()[-1]["argv"] == [
        "debug", "-c", f"file://{fh.config_path.resolve()}", "--no-color"
    ]  # fmt: skip


async def test_version(fake_host: Factory) -> None:
    fh = fake_host({"NODEADM_FAKE_VERSION": "v1.0.19"})
    assert await fh.runner().version() == "v1.0.19"
    fh.programs["nodeadm"] = str(fh.tmp / "missing-nodeadm")
    assert await fh.runner().version() is None


async def test_missing_nodeadm_is_a_failed_outcome(fake_host: Factory) -> None:
    fh = fake_host()
    fh.programs["nodeadm"] = str(fh.tmp / "missing-nodeadm")
    outcome = await fh.runner().install(A)
    assert (outcome.ok, outcome.code, outcome.exit_code) == (False, "nodeadm_failed", None)
    assert "cannot run" in outcome.message


async def test_debug_stopped_at_its_limit_reports_what_it_printed(fake_host: Factory) -> None:
    # aws/eks-hybrid v1.0.20: internal/nodevalidator/active_node_validator.go waits up to
    # 5 minutes for a registered, Ready node; kubelet is not running here, so it would wait.
    fh = fake_host(installed=True)
    assert (await fh.runner().init(A, fh.config_path)).ok
    set_unit(fh.root, "kubelet", "inactive")
    fh.knobs(NODEADM_FAKE_ACTIVE_NODE_WAIT_S="60")
    report = await fh.runner(debug_timeout_s=3.0).debug(fh.config_path)
    assert not report.ok
    assert report.items[0].description == "Validating access to AWS SSM API endpoint"
    last = report.items[-1]
    assert last.description == "Validating active node status in Kubernetes cluster"
    assert (last.ok, last.error) == (
        False,
        "still running when nodeadm debug was stopped after 3 s",
    )
    assert all(i.ok for i in report.items[:-1])
    assert report.message is not None and "did not finish within 3 s" in report.message
