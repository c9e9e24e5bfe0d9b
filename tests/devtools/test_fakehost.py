"""Fidelity of the host stand-ins: each fake runs as a real process against a made-up host tree.

The assertions are the behaviours nodeadm.md and contract.md promise the agent: exit codes,
stderr JSON lines, the files under the root, the quirks (init exits 0 without a tracker), and
the failure modes the agent must classify. Nothing is patched; every check runs the wrapper
`install_fake_programs` wrote, as the agent would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools.fakehost import (
    calls,
    hold_dpkg_lock,
    install_fake_programs,
    make_host,
    set_ntp_synced,
    set_unit,
)
from devtools.fakehost import layout as fakelayout
from devtools.fakehost.firewall import set_firewalld, set_ufw

FAKEHOST = Path(__file__).resolve().parents[2] / "devtools" / "fakehost"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ACTIVATION_ID = "0a1b2c3d-1111-2222-3333-444455556666"


@dataclass
class Host:
    """A made-up host plus a way to run its fakes with per-call knobs."""

    root: Path
    bin: Path
    tmp: Path

    def run(
        self, prog: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        knobs = {"NODEADM_FAKE_DELAY": "0.005", **(env or {})}
        paths = install_fake_programs(self.bin, self.root, env=knobs)
        return subprocess.run(
            [paths[prog], *args], capture_output=True, text=True, cwd=cwd, timeout=30, check=False
        )

    def nodeconfig(self, spec: dict[str, Any] | None = None, **extra: Any) -> str:
        """Write a NodeConfig (SSM by default) and return its file:/// URI."""
        doc = {
            "apiVersion": "node.eks.aws/v1alpha1",
            "kind": "NodeConfig",
            "spec": spec
            or {
                "cluster": {"name": "edge-cluster", "region": "eu-west-1"},
                "hybrid": {
                    "ssm": {
                        "activationId": ACTIVATION_ID,
                        "activationCode": "EXAMPLEactivationCode01",
                    }
                },
                "kubelet": {"flags": ["--node-labels=site=store-42"]},
            },
            **extra,
        }
        path = self.tmp / "nodeconfig.yaml"
        path.write_text(yaml.safe_dump(doc))
        return f"file://{path}"


def logs(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def fatal(result: subprocess.CompletedProcess[str]) -> str:
    """The error of the final fatal line, asserting the run failed the way nodeadm does."""
    assert result.returncode == 1, result.stderr
    last = logs(result.stderr)[-1]
    assert last["level"] == "fatal"
    assert last["msg"] == "Command failed"
    return str(last["error"])


def tree(root: Path) -> set[str]:
    skip = root / "run" / "fakehost"
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip not in (p, *p.parents)}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    root = tmp_path / "root"
    make_host(root)
    return Host(root, tmp_path / "bin", tmp_path)


@pytest.fixture
def installed(tmp_path: Path) -> Host:
    root = tmp_path / "installed"
    make_host(root, installed=True, swap="file")
    return Host(root, tmp_path / "installed-bin", tmp_path)


# --- nodeadm: command line ---------------------------------------------------------------


def test_version_subcommand_and_flag_print_the_tag_on_stdout(host: Host) -> None:
    for args in (["version"], ["--version"]):
        result = host.run("nodeadm", *args)
        assert (result.returncode, result.stdout) == (0, "Version: v1.0.20\n")
    older = host.run("nodeadm", "version", env={"NODEADM_FAKE_VERSION": "v1.0.18"})
    assert older.stdout == "Version: v1.0.18\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["install", "1.31"], "--credential-provider is a required flag"),
        (["install", "-p", "ssm"], "Required positional variable KUBERNETES_VERSION"),
        (["install", "1.31", "-p", "ssm", "--bogus"], "Unknown arguments supplied: --bogus"),
        (["install", "1.31", "-p", "ssm", "-t", "20 minutes"], "invalid duration"),
        (["install", "1.31", "-p"], "Expected a following arg for flag -p"),
        (["init"], "--config-source is a required flag"),
        (["upgrade", "1.32"], "--config-source is a required flag"),
        (["debug"], "--config-source is a required flag"),
        (["frobnicate"], "Unexpected argument: frobnicate"),
    ],
)
def test_usage_errors_print_help_on_stderr_and_exit_2(
    host: Host, args: list[str], message: str
) -> None:
    result = host.run("nodeadm", *args)
    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert message in result.stderr
    assert not logs(result.stderr)


def test_help_exits_0_and_development_mode_logs_console_lines(host: Host) -> None:
    result = host.run("nodeadm", "install", "-h")
    assert result.returncode == 0
    assert "--credential-provider" in result.stderr
    console = host.run("nodeadm", "-d", "uninstall")
    assert console.returncode == 0
    assert "\tINFO\t" in console.stderr
    assert not logs(console.stderr)


def test_refuses_to_run_without_a_root(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NODEADM_FAKE_ROOT", "FAKEHOST_ROOT")}
    for script in ("nodeadm.py", "apt_get.py"):
        result = subprocess.run(
            [sys.executable, str(FAKEHOST / script), "version"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert result.returncode == 70
        assert "refusing to touch the real host" in result.stderr


def _python_for(user: dict[str, int]) -> str | None:
    """An interpreter with PyYAML that `user` may run (the venv may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import yaml"], capture_output=True, check=False, **user
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def test_root_check_only_when_required() -> None:
    user = {"user": 65534} if os.geteuid() == 0 else {}
    python = _python_for(user)
    if python is None:
        pytest.skip("no python with PyYAML runs as the unprivileged user")
    # A root the unprivileged user can write to, outside pytest's 0700 tmp tree.
    root = Path(tempfile.mkdtemp(prefix="fakehost-nobody-"))
    try:
        root.chmod(0o777)
        env = {**os.environ, "NODEADM_FAKE_ROOT": str(root), "NODEADM_FAKE_REQUIRE_ROOT": "1"}
        result = subprocess.run(
            [python, str(FAKEHOST / "nodeadm.py"), "uninstall"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            **user,
        )
        assert fatal(result) == "must run as root"
    finally:
        shutil.rmtree(root)


# --- nodeadm install -----------------------------------------------------------------------


def test_install_logs_json_steps_and_writes_the_tracker(host: Host) -> None:
    result = host.run("nodeadm", "install", "1.31", "--credential-provider=ssm", "-t", "1800s")
    assert result.returncode == 0, result.stderr
    lines = logs(result.stderr)
    assert len(lines) == len(result.stderr.splitlines())
    for line in lines:
        assert list(line)[:4] == ["level", "ts", "caller", "msg"]
        assert TS.match(line["ts"])
        assert re.match(r"^[a-z/]+\.go:\d+$", line["caller"])
    messages = [line["msg"] for line in lines]
    for step in (
        "Installing containerd...",
        "Installing iptables...",
        "Installing SSM agent installer...",
        "Installing kubelet...",
        "Installing kubectl...",
        "Installing cni-plugins...",
        "Installing image credential provider...",
        "Installing IAM authenticator...",
        "Finishing up install...",
    ):
        assert step in messages
    resolved = next(line for line in lines if line["msg"] == "Using Kubernetes version")
    assert resolved["version"] == "1.31.7"
    tracker = yaml.safe_load((host.root / "opt/nodeadm/tracker").read_text())
    assert tracker["Artifacts"]["Containerd"] == "distro"
    assert tracker["Artifacts"]["Ssm"] is True
    assert tracker["Artifacts"]["IamRolesAnywhere"] is False
    for path in (
        "etc/systemd/system/kubelet.service",
        "usr/local/bin/kubectl",
        "opt/ssm/ssm-setup-cli",
    ):
        assert (host.root / path).exists(), path
    kubelet = subprocess.run(
        [host.root / "usr/bin/kubelet", "--version"], capture_output=True, text=True, check=True
    )
    assert kubelet.stdout.strip() == "Kubernetes v1.31.7"
    assert not list((host.root / "var/lib/dpkg/updates").iterdir())
    assert not (host.root / "run/fakehost/nodeadm-install.pid").exists()
    assert [c["argv"][0] for c in calls(host.root, "nodeadm")] == ["install"]
    # re-running finds containerd on PATH but keeps the mark of having installed it
    assert host.run("nodeadm", "install", "1.31", "-p", "ssm").returncode == 0
    tracker = yaml.safe_load((host.root / "opt/nodeadm/tracker").read_text())
    assert tracker["Artifacts"]["Containerd"] == "distro"


def test_install_flag_forms_and_supported_versions(host: Host) -> None:
    result = host.run(
        "nodeadm",
        "install",
        "1.28.4",
        "-p=iam-ra",
        "--containerd-source",
        "none",
        "--region=eu-west-1",
        "-t",
        "1h23s",
        env={"NODEADM_FAKE_SUPPORTED": "1.28-1.29"},
    )
    assert result.returncode == 0, result.stderr
    artifacts = yaml.safe_load((host.root / "opt/nodeadm/tracker").read_text())["Artifacts"]
    assert (artifacts["Containerd"], artifacts["IamRolesAnywhere"]) == ("none", True)
    assert "Installing AWS signing helper..." in result.stderr
    rushed = host.run("nodeadm", "install", "1.31", "-p", "iam-ra", "--timeout=1ms")
    assert "context deadline exceeded" in fatal(rushed)
    changed = host.run("nodeadm", "upgrade", "1.29", "-c", host.nodeconfig())
    assert "upgrade does not support changing credential providers" in fatal(changed)


@pytest.mark.parametrize(
    ("os_id", "args", "error"),
    [
        ("ubuntu", ["1.31", "-p", "token"], "invalid credential process provided. Valid options are ssm and iam-ra"),
        ("ubuntu", ["1.29", "-p", "ssm"], "input semver did not match with any available releases"),
        ("ubuntu", ["1.31.99", "-p", "ssm"], "Try again with major.minor version"),
        ("ubuntu", ["one.thirty", "-p", "ssm"], "invalid semantic version"),
        ("amzn", ["1.31", "-p", "ssm", "-s", "docker"], "docker source for containerd is not supported on AL2023"),
        ("rhel", ["1.31", "-p", "ssm"], "distro source for containerd is not supported on RHEL"),
    ],
)  # fmt: skip
def test_install_validation_is_fatal(
    tmp_path: Path, os_id: str, args: list[str], error: str
) -> None:
    make_host(
        tmp_path / "root",
        os_id=os_id,
        version_id={"amzn": "2023", "rhel": "9.4"}.get(os_id, "22.04"),
    )
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    assert error in fatal(host.run("nodeadm", "install", *args))
    assert not (host.root / "opt/nodeadm/tracker").exists()


def test_ssm_install_fails_on_builds_with_the_expired_key(host: Host) -> None:
    result = host.run(
        "nodeadm", "install", "1.31", "-p", "ssm", env={"NODEADM_FAKE_VERSION": "v1.0.18"}
    )
    assert "No matching signature" in fatal(result)


# --- nodeadm init --------------------------------------------------------------------------


def test_init_without_tracker_exits_0_and_writes_nothing(host: Host) -> None:
    before = tree(host.root)
    result = host.run("nodeadm", "init", "-c", host.nodeconfig())
    assert result.returncode == 0
    assert "not installed" in logs(result.stderr)[-1]["msg"]
    assert tree(host.root) == before
    assert host.run("systemctl", "is-active", "kubelet").returncode == 3


@pytest.mark.parametrize(
    ("change", "error"),
    [
        # aws/eks-hybrid v1.0.20: internal/configprovider/file.go decodes strictly
        # (internal/api/bridge/decode.go) into internal/api/types.go, which lacks EC2's fields.
        (lambda s: s["hybrid"]["ssm"].update(foo=1), 'json: unknown field "foo"'),
        (lambda s: s.update(featureGates={"InstanceIdNodeName": True}), 'json: unknown field "featureGates"'),
        (lambda s: s.update(instance={"localStorage": {"strategy": "RAID0", "mountPath": "/m"}}), 'unknown field "mountPath"'),
        (lambda s: s.update(containerd={"baseRuntimeSpec": {}}), 'unknown field "baseRuntimeSpec"'),
        (lambda s: s["hybrid"]["ssm"].update(activationCode="short"), "invalid ActivationCode format: short. Must be 20-250 characters"),
        (lambda s: s["hybrid"]["ssm"].update(activationId=ACTIVATION_ID.upper()), "invalid ActivationID format"),
        (lambda s: s["cluster"].pop("region"), "Region is missing in cluster configuration"),
        (lambda s: s["kubelet"].update(flags="--v=2"), "cannot unmarshal string"),
        (lambda s: s["kubelet"]["flags"].append("--hostname-override=x"), "hostname-override kubelet flag is not supported"),
        (lambda s: s["kubelet"]["flags"].append("--node-ip=fd00::5"), "invalid IPv6 address fd00::5 in --node-ip flag. only IPv4 is supported"),
        (lambda s: s["hybrid"].update(iamRolesAnywhere={"nodeName": "n"}), "Only one of IAMRolesAnywhere or SSM"),
    ],
)  # fmt: skip
def test_init_rejects_a_bad_nodeconfig(installed: Host, change: Any, error: str) -> None:
    spec: dict[str, Any] = {
        "cluster": {"name": "edge-cluster", "region": "eu-west-1"},
        "hybrid": {
            "ssm": {"activationId": ACTIVATION_ID, "activationCode": "EXAMPLEactivationCode01"}
        },
        "kubelet": {"flags": []},
    }
    change(spec)
    result = installed.run("nodeadm", "init", "-c", installed.nodeconfig(spec))
    assert error in fatal(result)
    assert not (installed.root / "var/lib/amazon/ssm/registration").exists()


def test_init_cni_validation_follows_the_firewall_nodeadm_asks(tmp_path: Path) -> None:
    # aws/eks-hybrid v1.0.20: cmd/nodeadm/init/init.go (cni-validation right after
    # install-validation), internal/system/ports.go (firewalld unless Ubuntu) and
    # internal/firewall/firewalld.go (reload before the query drops runtime-only ports).
    root = tmp_path / "rhel"
    make_host(root, os_id="rhel", version_id="9.4", installed=True)
    rhel = Host(root, tmp_path / "rhel-bin", tmp_path)
    set_firewalld(root, running=True, permanent=("22/tcp",), runtime=("8472/udp",))
    uri = rhel.nodeconfig()
    assert fatal(rhel.run("nodeadm", "init", "-c", uri)) == (
        "Cilium (8472/udp) or Calico (4789/udp) VxLan ports are not open on the host. If you "
        "are not using VxLan, this validation can by bypassed with --skip cni-validation"
    )
    assert not (root / "var/lib/amazon/ssm/registration").exists()
    set_firewalld(root, running=True, permanent=("4789/udp",))
    assert rhel.run("nodeadm", "init", "-c", uri).returncode == 0
    # The same closed firewalld on Ubuntu is not asked: ufw is, and it is inactive.
    ubuntu = tmp_path / "ubuntu"
    make_host(ubuntu, installed=True)
    set_firewalld(ubuntu, running=True)
    host = Host(ubuntu, tmp_path / "ubuntu-bin", tmp_path)
    assert host.run("nodeadm", "init", "-c", uri).returncode == 0
    set_ufw(ubuntu, active=True, rules=("22/tcp ALLOW Anywhere",))
    assert "VxLan ports are not open" in fatal(host.run("nodeadm", "init", "-c", uri))
    skipped = host.run("nodeadm", "init", "-c", uri, "--skip", "cni-validation")
    assert skipped.returncode == 0, skipped.stderr


def test_init_without_a_containerd_unit_says_why(installed: Host) -> None:
    # aws/eks-hybrid v1.0.20: cmd/nodeadm/init/init.go wraps ValidateSystemdUnitFile's error.
    for unit in fakelayout.containerd_unit_paths(installed.root):
        unit.unlink(missing_ok=True)
    assert fatal(installed.run("nodeadm", "init", "-c", installed.nodeconfig())) == (
        "a systemd unit file for containerd is required to init the node: containerd daemon "
        "not found"
    )


def test_init_proxy_validation_wants_the_drop_ins(installed: Host) -> None:
    # aws/eks-hybrid v1.0.20: internal/network/proxy_validator.go, run by init's
    # proxy-validation (internal/node/hybrid/hybrid.go).
    uri = installed.nodeconfig()
    env = {"HTTP_PROXY": "http://proxy.example:3128"}
    error = fatal(installed.run("nodeadm", "init", "-c", uri, env=env))
    assert error == "apt proxy configuration file not found: /etc/apt/apt.conf.d/proxy.conf"
    skipped = installed.run("nodeadm", "init", "-c", uri, "--skip", "proxy-validation", env=env)
    assert skipped.returncode == 0, skipped.stderr


def test_init_on_ubuntu_needs_the_snap_ssm_agent(installed: Host) -> None:
    # aws/eks-hybrid v1.0.20: internal/ssm/daemon.go (setDaemonName: the snap unit on Ubuntu).
    assert (installed.root / "snap/amazon-ssm-agent/current/amazon-ssm-agent").exists()
    snap_unit = "etc/systemd/system/snap.amazon-ssm-agent.amazon-ssm-agent.service"
    (installed.root / snap_unit).unlink()  # as on a host whose agent came from a .deb
    error = fatal(installed.run("nodeadm", "init", "-c", installed.nodeconfig()))
    assert error == "Unit file snap.amazon-ssm-agent.amazon-ssm-agent.service does not exist."


def test_init_reads_only_file_uris(installed: Host) -> None:
    assert "unsupported scheme: s3" in fatal(installed.run("nodeadm", "init", "-c", "s3://b/k"))
    missing = installed.run("nodeadm", "init", "-c", "file:///nonexistent/nc.yaml")
    assert "no such file or directory" in fatal(missing)


def test_init_joins_with_ssm_and_reuses_the_registration(installed: Host) -> None:
    uri = installed.nodeconfig()
    set_unit(installed.root, "kubelet", "inactive")
    result = installed.run("nodeadm", "init", "--config-source", uri)
    assert result.returncode == 0, result.stderr
    for path in (
        "etc/sysctl.d/99-nodeadm.conf",
        "etc/modules-load.d/containerd.conf",
        "etc/containerd/config.toml",
        "etc/kubernetes/kubelet/config.json",
        "var/lib/kubelet/kubeconfig",
        "etc/kubernetes/pki/ca.crt",
        "etc/eks/kubelet/environment",
        "etc/eks/image-credential-provider/config.json",
    ):
        assert (installed.root / path).is_file(), path
    registration = json.loads((installed.root / "var/lib/amazon/ssm/registration").read_text())
    assert re.fullmatch(r"mi-[0-9a-f]{17}", registration["ManagedInstanceID"])
    assert registration["Region"] == "eu-west-1"
    environment = (installed.root / "etc/eks/kubelet/environment").read_text()
    assert f"--hostname-override={registration['ManagedInstanceID']}" in environment
    assert environment.rstrip().endswith('--node-labels=site=store-42"')
    active = installed.run("systemctl", "is-active", "kubelet", "containerd")
    assert (active.returncode, active.stdout) == (0, "active\nactive\n")
    # file swap is turned off, as init's swap aspect does
    assert len((installed.root / "proc/swaps").read_text().splitlines()) == 1
    again = installed.run("nodeadm", "init", "-c", uri)
    assert again.returncode == 0
    assert (
        json.loads((installed.root / "var/lib/amazon/ssm/registration").read_text()) == registration
    )


def test_config_check_takes_a_relative_file_uri(installed: Host) -> None:
    installed.nodeconfig()
    result = installed.run(
        "nodeadm", "config", "check", "-c", "file://nodeconfig.yaml", cwd=installed.tmp
    )
    assert result.returncode == 0, result.stderr
    assert logs(result.stderr)[-1]["msg"] == "Configuration is valid"


def _certificate(root: Path, name: str, not_before: dt.datetime, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    pki = root / "etc/iam/pki"
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_init_with_iam_roles_anywhere_checks_the_certificate_window(tmp_path: Path) -> None:
    make_host(tmp_path / "root", installed=True, credential_provider="iam-ra")
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    spec = {
        "cluster": {"name": "edge-cluster", "region": "eu-west-1"},
        "hybrid": {
            "enableCredentialsFile": True,
            "iamRolesAnywhere": {
                "nodeName": "store-42-node-1",
                "trustAnchorArn": "arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/ta",
                "profileArn": "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/p",
                "roleArn": "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole",
            },
        },
    }
    uri = host.nodeconfig(spec)
    assert "certificate /etc/iam/pki/server.pem not found" in fatal(
        host.run("nodeadm", "init", "-c", uri)
    )
    now = dt.datetime.now(dt.timezone.utc)
    _certificate(
        host.root, "store-42-node-1", now - dt.timedelta(days=10), now - dt.timedelta(days=1)
    )
    assert "expired or is not yet valid" in fatal(host.run("nodeadm", "init", "-c", uri))
    _certificate(
        host.root, "store-42-node-1", now - dt.timedelta(days=1), now + dt.timedelta(days=1)
    )
    result = host.run("nodeadm", "init", "-c", uri)
    assert result.returncode == 0, result.stderr
    profile = (host.root / "etc/aws/hybrid/config").read_text()
    assert "--role-session-name store-42-node-1" in profile
    assert (host.root / "eks-hybrid/.aws/credentials").exists()


def test_init_fails_on_partition_swap(tmp_path: Path) -> None:
    make_host(tmp_path / "root", installed=True, swap="partition")
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    assert (
        fatal(host.run("nodeadm", "init", "-c", host.nodeconfig()))
        == "partition type swap found on the host"
    )


def test_init_checks_the_node_ip_against_remote_node_cidrs(installed: Host) -> None:
    spec = {
        "cluster": {"name": "edge-cluster", "region": "eu-west-1"},
        "hybrid": {
            "ssm": {"activationId": ACTIVATION_ID, "activationCode": "EXAMPLEactivationCode01"}
        },
        "kubelet": {"flags": ["--node-ip=10.18.0.1"]},
    }
    uri = installed.nodeconfig(spec)
    env = {"NODEADM_FAKE_REMOTE_NODE_CIDRS": "10.0.0.0/16,192.168.0.0/16"}
    # aws/eks-hybrid v1.0.20: internal/node/hybrid/hybrid.go (LoggerPrinter lines, failures
    # joined) and internal/network/utils.go (the message).
    result = installed.run("nodeadm", "init", "-c", uri, env=env)
    assert fatal(result).startswith(
        "node IP 10.18.0.1 is not in any of the remote network CIDR blocks: "
        "[10.0.0.0/16 192.168.0.0/16]. See https://docs.aws.amazon.com/"
    )
    failed = [x for x in logs(result.stderr) if x["msg"] == "Validation failed"]
    assert failed[0]["validation"] == "node-ip-validation"
    assert failed[0]["remediation"].startswith("Ensure the node IP is within the configured")
    skipped = installed.run(
        "nodeadm", "init", "-c", uri, "--skip", "node-ip-validation,bogus", env=env
    )
    assert skipped.returncode == 0, skipped.stderr


# --- failure modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail", "args", "error"),
    [
        ("install", ["install", "1.31", "-p", "ssm"], "simulated"),
        ("install:checksum", ["install", "1.31", "-p", "ssm"], "checksum mismatch"),
        ("install:download", ["install", "1.31", "-p", "ssm"], "max retries achieved for http request"),
        ("init:ssm_activation_expired", ["init", "-c", "NODECONFIG"], "SSM activation expired. Please use a valid activation"),
        ("init:ssm_activation_invalid", ["init", "-c", "NODECONFIG"], "invalid SSM activation"),
        ("init:access_denied", ["init", "-c", "NODECONFIG"], "AccessDeniedException"),
    ],
)  # fmt: skip
def test_injected_failures_are_fatal(
    installed: Host, fail: str, args: list[str], error: str
) -> None:
    (installed.root / "opt/nodeadm/tracker").unlink() if args[0] == "install" else None
    args = [installed.nodeconfig() if a == "NODECONFIG" else a for a in args]
    assert error in fatal(installed.run("nodeadm", *args, env={"NODEADM_FAKE_FAIL": fail}))


def test_unknown_failure_mode_is_refused(host: Host) -> None:
    result = host.run("nodeadm", "version", env={"NODEADM_FAKE_FAIL": "install:stale"})
    assert result.returncode == 70
    assert "unknown mode 'stale'" in result.stderr


def test_stale_index_retries_until_the_timeout(host: Host) -> None:
    started = time.monotonic()
    result = host.run(
        "nodeadm",
        "install",
        "1.31",
        "-p",
        "ssm",
        "-t",
        "300ms",
        env={"NODEADM_FAKE_FAIL": "install:stale_index"},
    )
    assert 0.3 <= time.monotonic() - started < 5
    assert "context deadline exceeded: running command [apt install containerd]" in fatal(result)
    retries = [
        line
        for line in logs(result.stderr)
        if "Unable to locate package containerd" in line.get("error", "")
    ]
    assert len(retries) >= 3


def test_stale_index_knob_follows_the_real_list_age(tmp_path: Path) -> None:
    make_host(tmp_path / "root", index_age_s=3 * 86400)
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    env = {"NODEADM_FAKE_STALE_AFTER_S": "86400"}
    assert "context deadline exceeded" in fatal(
        host.run("nodeadm", "install", "1.31", "-p", "ssm", "-t", "100ms", env=env)
    )
    assert host.run("apt_get", "update").returncode == 0
    assert (
        host.run("nodeadm", "install", "1.31", "-p", "ssm", "-t", "100ms", env=env).returncode == 0
    )


def test_apt_lock_retries_then_succeeds(host: Host) -> None:
    result = host.run(
        "nodeadm", "install", "1.31", "-p", "ssm", env={"NODEADM_FAKE_FAIL": "install:apt_lock"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Could not get lock /var/lib/dpkg/lock-frontend") == 3


def test_kubelet_inactive_exits_0_with_kubelet_failed(installed: Host) -> None:
    set_unit(installed.root, "kubelet", "inactive")
    env = {"NODEADM_FAKE_FAIL": "init:kubelet_inactive"}
    assert installed.run("nodeadm", "init", "-c", installed.nodeconfig(), env=env).returncode == 0
    state = installed.run("systemctl", "is-active", "kubelet")
    assert (state.returncode, state.stdout) == (3, "failed\n")


def test_fail_times_fails_the_first_runs_only(host: Host, tmp_path: Path) -> None:
    log = tmp_path / "nodeadm-calls.jsonl"
    env = {
        "NODEADM_FAKE_FAIL": "install:checksum",
        "NODEADM_FAKE_FAIL_TIMES": "2",
        "NODEADM_FAKE_LOG": str(log),
    }
    codes = [
        host.run("nodeadm", "install", "1.31", "-p", "ssm", env=env).returncode for _ in range(3)
    ]
    assert codes == [1, 1, 0]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["argv"][:2] for e in entries] == [["install", "1.31"]] * 3
    assert len({e["pid"] for e in entries}) == 3


# --- hangs, timeouts, orphans --------------------------------------------------------------


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_hang_honours_the_timeout(host: Host) -> None:
    started = time.monotonic()
    result = host.run(
        "nodeadm", "install", "1.31", "-p", "ssm", "-t", "1s", env={"NODEADM_FAKE_HANG": "install"}
    )
    assert 1.0 <= time.monotonic() - started < 5
    assert "context deadline exceeded" in fatal(result)
    child = int((host.root / "run/fakehost/nodeadm-install.child.pid").read_text())
    assert _dead(child)
    # a timed-out apt leaves dpkg half-configured, for `dpkg --configure -a` to repair
    assert [p.name for p in (host.root / "var/lib/dpkg/updates").iterdir()] == ["0001"]
    assert host.run("dpkg", "--configure", "-a").returncode == 0
    assert not list((host.root / "var/lib/dpkg/updates").iterdir())


def test_hung_init_leaves_a_pid_file_and_dies_with_its_group(installed: Host) -> None:
    paths = install_fake_programs(installed.bin, installed.root, env={"NODEADM_FAKE_HANG": "init"})
    process = subprocess.Popen(
        [paths["nodeadm"], "init", "-c", installed.nodeconfig()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file = installed.root / "run/fakehost/nodeadm-init.pid"
    child_file = installed.root / "run/fakehost/nodeadm-init.child.pid"
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and child_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert int(pid_file.read_text()) == process.pid
    child = int(child_file.read_text())
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dead(child)
    assert pid_file.exists()  # killed, not exited: the stale pid file stays


# --- upgrade, uninstall, debug -------------------------------------------------------------


def test_upgrade_needs_a_tracker_and_replaces_kubelet(host: Host, installed: Host) -> None:
    noop = host.run("nodeadm", "upgrade", "1.32", "-c", host.nodeconfig())
    assert noop.returncode == 0
    assert not (host.root / "usr/bin/kubelet").exists()
    result = installed.run("nodeadm", "upgrade", "1.32", "-c", installed.nodeconfig(), "-t", "10m")
    assert result.returncode == 0, result.stderr
    assert "Kubernetes v1.32.3" in (installed.root / "usr/bin/kubelet").read_text()


def test_uninstall_removes_components_and_leaves_the_documented_leftovers(tmp_path: Path) -> None:
    make_host(tmp_path / "root", mode="appliance", installed=True)
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    assert host.run("nodeadm", "init", "-c", host.nodeconfig()).returncode == 0
    (host.root / "var/lib/cni/networks").mkdir(parents=True)
    result = host.run("nodeadm", "uninstall", "--force")
    assert result.returncode == 0, result.stderr
    for gone in (
        "opt/nodeadm",
        "usr/bin/kubelet",
        "etc/kubernetes/kubelet",
        "var/lib/kubelet/kubeconfig",
        "var/lib/kubelet/pki/kubelet-server-current.pem",
        "var/lib/amazon/ssm/registration",
        "etc/eks/kubelet",
        "usr/local/bin/kubectl",
        "etc/containerd/config.toml",
        "var/lib/cni/networks",
    ):
        assert not (host.root / gone).exists(), gone
    for kept in (
        "var/lib/kubelet/pki/kubelet-client-current.pem",
        "etc/sysctl.d/99-nodeadm.conf",
        "etc/modules-load.d/containerd.conf",
        "etc/eks",  # a bind mount point: emptied, not removed
    ):
        assert (host.root / kept).exists(), kept
    assert host.run("systemctl", "is-active", "kubelet", "containerd").returncode == 3
    again = host.run("nodeadm", "uninstall")
    assert again.returncode == 0
    assert "already uninstalled" in logs(again.stderr)[-1]["msg"]


def test_uninstall_of_a_running_node_needs_the_drain_skips(installed: Host) -> None:
    env = {"NODEADM_FAKE_FAIL": "uninstall:not_drained"}
    assert "not cordoned" in fatal(installed.run("nodeadm", "uninstall", env=env))
    result = installed.run("nodeadm", "uninstall", "-s", "pod-validation,node-validation", env=env)
    assert result.returncode == 0, result.stderr


def test_debug_prints_the_real_printer_tree(installed: Host) -> None:
    # aws/eks-hybrid v1.0.20: cmd/nodeadm/debug/debug.go (order, closing lines, silent
    # exit 1), internal/validation/printer.go (the tree), internal/system/ntp.go (the NTP
    # error and remediation), internal/kubernetes/access.go (UntilError stops the API checks).
    uri = installed.nodeconfig()
    assert installed.run("nodeadm", "init", "-c", uri).returncode == 0
    good = installed.run("nodeadm", "debug", "-c", uri, "--no-color")
    assert good.returncode == 0
    lines = good.stdout.splitlines()
    assert lines[0] == "* Validating access to AWS SSM API endpoint [Success]"
    assert lines[-1] == "* Validating active node status in Kubernetes cluster [Success]"
    assert all(re.fullmatch(r"\* .+ \[Success\]", line) for line in lines)
    set_ntp_synced(installed.root, False)
    bad = installed.run(
        "nodeadm", "debug", "-c", uri, "--no-color", env={"NODEADM_FAKE_FAIL": "debug"}
    )
    assert bad.returncode == 1
    out = bad.stdout.splitlines()
    ntp = out.index("* Validating NTP synchronization status [Failed]")
    assert out[ntp + 1 : ntp + 5] == [
        "  └─ Error",
        "     └─ validating NTP synchronization via timedatectl: System clock not synchronized",
        "     └─ Remediation",
        "        └─ Ensure the hybrid node is synchronized with NTP by running "
        "`timedatectl set-ntp true`.",
    ]
    assert "* Validating access to Kubernetes API endpoint [Failed]" in out
    assert not [line for line in out if "authenticated request" in line]
    assert out[-2:] == [
        "",
        "Issues found during validation. Please follow the remediation advice above.",
    ]
    assert "\x1b[" not in bad.stdout
    assert not [line for line in logs(bad.stderr) if line["level"] == "fatal"]
    coloured = installed.run("nodeadm", "debug", "-c", uri)
    assert "\x1b[31mFailed\x1b[0m" in coloured.stdout


def test_debug_proxy_validation_names_the_first_missing_file(installed: Host) -> None:
    # aws/eks-hybrid v1.0.20: internal/network/proxy_validator.go.
    uri = installed.nodeconfig()
    assert installed.run("nodeadm", "init", "-c", uri).returncode == 0
    proxy = "http://proxy.example:3128"
    bad = installed.run("nodeadm", "debug", "-c", uri, "--no-color", env={"HTTPS_PROXY": proxy})
    out = bad.stdout.splitlines()
    i = out.index("* Validating proxy configuration on the hybrid node [Failed]")
    assert (
        out[i + 2]
        == "     └─ apt proxy configuration file not found: /etc/apt/apt.conf.d/proxy.conf"
    )
    assert out[i + 4].startswith("        └─ Create the apt proxy configuration file at")


# --- the other programs --------------------------------------------------------------------


def test_systemctl_is_active(host: Host) -> None:
    missing = host.run("systemctl", "is-active", "kubelet")
    assert (missing.returncode, missing.stdout) == (3, "inactive\n")
    set_unit(host.root, "kubelet", "active")
    set_unit(host.root, "containerd", "failed")
    mixed = host.run("systemctl", "is-active", "kubelet.service", "containerd")
    assert (mixed.returncode, mixed.stdout) == (3, "active\nfailed\n")
    quiet = host.run("systemctl", "is-active", "--quiet", "kubelet")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    show = host.run("systemctl", "show", "-p", "ActiveState", "--value", "containerd")
    assert show.stdout == "failed\n"
    assert host.run("systemctl", "restart", "kubelet").returncode == 0


def test_apt_get_update_stamps_lists_with_the_mirror_time(host: Host) -> None:
    lists = host.root / "var/lib/apt/lists"
    frozen = 1_600_000_000
    assert (
        host.run("apt_get", "update", env={"FAKEHOST_APT_MIRROR_MTIME": str(frozen)}).returncode
        == 0
    )
    packages = lists / "fake_dists_main_binary-amd64_Packages"
    assert packages.stat().st_mtime == frozen
    assert time.time() - (lists / "lock").stat().st_mtime < 60
    assert host.run("apt_get", "update").returncode == 0
    assert time.time() - packages.stat().st_mtime < 60
    failed = host.run("apt_get", "update", env={"FAKEHOST_APT_FAIL": "1"})
    assert failed.returncode == 100
    assert "E: " in failed.stderr
    hold_dpkg_lock(host.root, 0.3)
    locked = host.run("apt_get", "update")
    assert locked.returncode == 100
    assert "E: Could not get lock /var/lib/dpkg/lock-frontend" in locked.stderr
    time.sleep(0.3)
    assert host.run("apt_get", "update").returncode == 0


def test_dnf_makecache_refreshes_the_cache(tmp_path: Path) -> None:
    make_host(tmp_path / "root", os_id="rhel", version_id="9.4", index_age_s=None)
    host = Host(tmp_path / "root", tmp_path / "bin", tmp_path)
    assert (
        host.run(
            "dnf", "makecache", "--refresh", env={"FAKEHOST_DNF_MIRROR_MTIME": "1600000000"}
        ).returncode
        == 0
    )
    assert (host.root / "var/cache/dnf/fake.solv").stat().st_mtime == 1_600_000_000
    assert host.run("dnf", "makecache", env={"FAKEHOST_DNF_FAIL": "1"}).returncode == 1


def _kernel_routes(text: str) -> list[tuple[str, str, str, str, int]]:
    """An independent reading of /proc/net/route: (iface, dest, gateway, mask, flags)."""

    def address(field: str) -> str:
        return socket.inet_ntoa(struct.pack("<I", int(field, 16)))

    rows = []
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        rows.append((f[0], address(f[1]), address(f[2]), address(f[7]), int(f[3], 16)))
    return rows


def test_ip_route_replace_writes_a_kernel_format_line(host: Host) -> None:
    table = host.root / "proc/net/route"
    assert _kernel_routes(table.read_text())[0] == ("eth0", "0.0.0.0", "172.16.0.1", "0.0.0.0", 3)
    for _ in range(2):
        assert (
            host.run("ip", "route", "replace", "10.100.0.0/16", "via", "172.16.0.1").returncode == 0
        )
    text = table.read_text()
    assert all(len(line) == 127 for line in text.splitlines())
    assert "eth0\t0000640A\t010010AC\t0003\t0\t0\t0\t0000FFFF" in text
    assert _kernel_routes(text).count(("eth0", "10.100.0.0", "172.16.0.1", "255.255.0.0", 3)) == 1
    shown = host.run("ip", "route", "show").stdout
    assert "10.100.0.0/16 via 172.16.0.1 dev eth0" in shown
    assert "default via 172.16.0.1 dev eth0 metric 100" in shown
    got = host.run("ip", "route", "get", "10.100.3.4").stdout
    assert got.startswith("10.100.3.4 via 172.16.0.1 dev eth0")
    listed = json.loads(host.run("ip", "-j", "route", "show").stdout)
    assert {"dst": "10.100.0.0/16", "gateway": "172.16.0.1", "dev": "eth0", "flags": []} in listed
    assert host.run("ip", "route", "replace", "10.100.0.5/16", "via", "172.16.0.1").returncode == 2
    assert host.run("ip", "route", "replace", "10.50.0.0/16", "via", "10.9.9.9").returncode == 2


def test_timedatectl_and_journalctl(host: Host) -> None:
    synced = host.run("timedatectl", "show", "-p", "NTPSynchronized")
    assert synced.stdout == "NTPSynchronized=yes\n"
    set_ntp_synced(host.root, False)
    assert host.run("timedatectl", "show", "-p", "NTPSynchronized", "--value").stdout == "no\n"
    assert (
        host.run("journalctl", "-u", "kubelet", "-n", "5", "--no-pager").stdout
        == "-- No entries --\n"
    )
    set_unit(host.root, "kubelet", "active")
    journal = host.run("journalctl", "-u", "kubelet", "-n", "2", "--no-pager").stdout.splitlines()
    assert len(journal) == 2
    assert all(
        re.match(r"^\w{3} \d\d \d\d:\d\d:\d\d edge-host kubelet\[\d+\]: ", line) for line in journal
    )


def test_every_program_is_recorded(host: Host) -> None:
    for prog, args in (
        ("systemctl", ["is-active", "kubelet"]),
        ("ip", ["route", "show"]),
        ("timedatectl", ["show"]),
    ):
        host.run(prog, *args)
    recorded = calls(host.root)
    assert [(c["prog"], c["argv"]) for c in recorded] == [
        ("systemctl", ["is-active", "kubelet"]),
        ("ip", ["route", "show"]),
        ("timedatectl", ["show"]),
    ]
    assert all(isinstance(c["ts"], float) for c in recorded)


# --- the host builder ----------------------------------------------------------------------


def _mounts(root: Path) -> dict[str, tuple[str, str]]:
    """mount point -> (mount options, root of the mount) from mountinfo."""
    result = {}
    for line in (root / "proc/1/mountinfo").read_text().splitlines():
        fields = line.split()
        result[fields[4]] = (fields[5], fields[3])
    return result


def test_make_host_agent_mode(tmp_path: Path) -> None:
    make_host(tmp_path, product_uuid="4C4C4544-0042-3510-8051-B7C04F4E4E32", index_age_s=7200)
    release = (tmp_path / "etc/os-release").read_text()
    assert "ID=ubuntu\n" in release
    assert 'VERSION_ID="22.04"' in release
    assert (tmp_path / "etc/machine-id").read_text() == "4c1d7c3b9c2e4f8a9b0c1d2e3f405162\n"
    assert (tmp_path / "sys/class/dmi/id/product_uuid").read_text().strip().startswith("4C4C4544")
    mounts = _mounts(tmp_path)
    assert mounts["/"][0].startswith("rw")
    assert "/etc/eks" not in mounts
    age = (
        time.time()
        - (tmp_path / "var/lib/apt/lists/fake_dists_main_binary-amd64_Packages").stat().st_mtime
    )
    assert 7100 < age < 7300
    assert (tmp_path / "run/systemd/system").is_dir()
    assert (tmp_path / "proc/swaps").read_text().count("\n") == 1
    assert not (tmp_path / "opt/nodeadm/tracker").exists()


def test_make_host_appliance_mode(tmp_path: Path) -> None:
    make_host(
        tmp_path,
        mode="appliance",
        ro_mounts=["/etc/iam"],
        missing_mounts=["/eks-hybrid"],
        systemd=False,
        swap="partition",
        installed=True,
        ssm_registration="mi-0123456789abcdef0",
    )
    mounts = _mounts(tmp_path)
    assert mounts["/"][0].startswith("ro")
    assert mounts["/etc/eks"] == ("rw,relatime", "/.state/etc-eks.bind")
    assert mounts["/etc/iam"][0].startswith("ro")
    assert "/eks-hybrid" not in mounts
    assert not (tmp_path / "eks-hybrid").exists()
    line = next(
        x for x in (tmp_path / "proc/1/mountinfo").read_text().splitlines() if " /etc/eks " in x
    )
    assert re.fullmatch(
        r"\d+ \d+ 8:3 /\.state/etc-eks\.bind /etc/eks rw,relatime shared:\d+ - ext4 /dev/sda3 rw",
        line,
    )
    assert not (tmp_path / "run/systemd/system").exists()
    assert "partition" in (tmp_path / "proc/swaps").read_text().splitlines()[1]
    assert (tmp_path / "opt/nodeadm/tracker").exists()
    assert (tmp_path / "run/fakehost/units/kubelet").read_text().strip() == "active"
    registration = json.loads((tmp_path / "var/lib/amazon/ssm/registration").read_text())
    assert registration == {"ManagedInstanceID": "mi-0123456789abcdef0", "Region": "us-west-2"}
    assert "KAIROS_" in (tmp_path / "etc/os-release").read_text()


def test_make_host_rejects_unknown_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        make_host(tmp_path, mode="kiosk")
    with pytest.raises(ValueError, match="swap"):
        make_host(tmp_path, swap="zram")
