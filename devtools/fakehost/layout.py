"""Where things live on the made-up host, and the small reads and writes every fake shares.

A fake host is a directory tree (the "root") that stands for `/`. The fake programs find it in
`FAKEHOST_ROOT` (nodeadm: `NODEADM_FAKE_ROOT`) and keep their own bookkeeping under
`run/fakehost/`: the call log, unit states, the dpkg lock flag, the NTP flag and nodeadm's
failure counters. This module owns those paths, nodeadm's tracker file, and the files an
installed node has, so `make_host(installed=True)` and the fake `nodeadm install` agree.
Stdlib only at import time: every fake program imports it on every run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RUN_DIR = "run/fakehost"
CALLS_FILE = f"{RUN_DIR}/calls.jsonl"
UNITS_DIR = f"{RUN_DIR}/units"
DPKG_LOCK_FLAG = f"{RUN_DIR}/dpkg-lock-held"
NTP_UNSYNCED_FLAG = f"{RUN_DIR}/ntp-unsynced"
FAIL_COUNTS_FILE = f"{RUN_DIR}/fail-counts.json"
TRACKER = "opt/nodeadm/tracker"
DPKG_UPDATES = "var/lib/dpkg/updates"
APT_LISTS = "var/lib/apt/lists"
APT_LIST_FILE = f"{APT_LISTS}/fake_dists_main_binary-amd64_Packages"
DNF_CACHE = "var/cache/dnf"
DNF_SOLV_FILE = f"{DNF_CACHE}/fake.solv"
SSM_REGISTRATION = "var/lib/amazon/ssm/registration"
KUBELET_PKI = "var/lib/kubelet/pki"

EKS_BIND_MOUNTS = (
    "/eks-hybrid",
    "/etc/aws",
    "/etc/containerd",
    "/etc/eks",
    "/etc/iam",
    "/etc/modules-load.d",
    "/var/lib/amazon",
)
TRACKER_KEYS = (
    "CniPlugins",
    "Containerd",
    "IamAuthenticator",
    "IamRolesAnywhere",
    "ImageCredentialProvider",
    "Iptables",
    "Kubectl",
    "Kubelet",
    "Ssm",
)


class RootNotSet(SystemExit):
    """Raised when a fake is run without its root: it must never touch the real `/`."""


def root_from_env(*names: str) -> Path:
    """The host root named by the first set variable of `names`; exit 70 when none is set."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return Path(value)
    print(
        f"fakehost: {' or '.join(names)} is not set; refusing to touch the real host",
        file=sys.stderr,
    )
    raise RootNotSet(70)


def under(root: Path, path: str) -> Path:
    """`path` (absolute on the host) inside the fake root."""
    return root / path.lstrip("/")


def write_file(
    path: Path, text: str | bytes, *, mode: int = 0o644, mtime: float | None = None
) -> None:
    """Write a file whole (temp file, then rename), making its parents; optionally stamp its mtime.

    Whole, because tests poll some of these files (pid files) while the stand-in writes them:
    a reader must never see one created but still empty.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def record_call(root: Path, prog: str, argv: list[str]) -> None:
    """Append one line to the call log; O_APPEND keeps concurrent writers' lines whole."""
    path = under(root, CALLS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"prog": prog, "argv": argv, "ts": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def calls(root: Path, prog: str | None = None) -> list[dict[str, Any]]:
    """Every recorded call of the fakes under `root`, oldest first, optionally of one program."""
    path = under(root, CALLS_FILE)
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if prog is None or e["prog"] == prog]


def _unit_file(root: Path, unit: str) -> Path:
    return under(root, UNITS_DIR) / unit.removesuffix(".service")


def unit_state(root: Path, unit: str) -> str:
    """What `systemctl is-active` says about `unit`: the word in its state file, else inactive."""
    path = _unit_file(root, unit)
    if not path.exists():
        return "inactive"
    return path.read_text().strip() or "inactive"


def set_unit(root: Path, unit: str, state: str) -> None:
    """Set a unit's state (`active`, `failed`, `activating`...); `inactive` removes the file."""
    path = _unit_file(root, unit)
    if state == "inactive":
        path.unlink(missing_ok=True)
    else:
        write_file(path, state + "\n")


def hold_dpkg_lock(root: Path, seconds: float | None) -> None:
    """Make apt-get, dpkg and nodeadm see the dpkg lock held for `seconds` from now (None: forever)."""
    write_file(under(root, DPKG_LOCK_FLAG), "forever\n" if seconds is None else f"{seconds}\n")


def release_dpkg_lock(root: Path) -> None:
    """Release a lock taken with `hold_dpkg_lock`."""
    under(root, DPKG_LOCK_FLAG).unlink(missing_ok=True)


def dpkg_lock_held(root: Path) -> bool:
    """True while the lock flag says so: `forever`, or its mtime plus the seconds it holds."""
    path = under(root, DPKG_LOCK_FLAG)
    try:
        text = path.read_text().strip()
        since = path.stat().st_mtime
    except FileNotFoundError:
        return False
    if text == "forever":
        return True
    try:
        return time.time() < since + float(text)
    except ValueError:
        return True


def set_ntp_synced(root: Path, synced: bool) -> None:
    """Make `timedatectl` (and `nodeadm debug`) report the clock synchronised or not."""
    path = under(root, NTP_UNSYNCED_FLAG)
    if synced:
        path.unlink(missing_ok=True)
    else:
        write_file(path, "unsynced\n")


def ntp_synced(root: Path) -> bool:
    return not under(root, NTP_UNSYNCED_FLAG).exists()


def read_os_release(root: Path) -> dict[str, str]:
    """`etc/os-release` as a dict, quotes removed; empty when missing."""
    path = under(root, "etc/os-release")
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def uses_apt(os_id: str) -> bool:
    """nodeadm picks yum where it exists, else apt; our fake hosts follow the distro family."""
    return os_id in ("ubuntu", "debian")


def write_tracker(root: Path, artifacts: dict[str, Any]) -> None:
    """Write nodeadm's tracker (YAML, 0644) the way nodeadm marshals it: keys in Go field order."""
    lines = ["Artifacts:"]
    for key in TRACKER_KEYS:
        value = artifacts.get(key, False)
        rendered = ("true" if value else "false") if isinstance(value, bool) else str(value)
        lines.append(f"  {key}: {rendered}")
    write_file(under(root, TRACKER), "\n".join(lines) + "\n")


def read_tracker(root: Path) -> dict[str, Any] | None:
    """The tracker's Artifacts map, or None when nodeadm has not installed anything."""
    path = under(root, TRACKER)
    if not path.exists():
        return None
    artifacts: dict[str, Any] = {}
    for line in path.read_text().splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        value = value.strip()
        artifacts[key] = {"true": True, "false": False}.get(value, value)
    return artifacts


def _script(text: str) -> str:
    return f"#!/bin/sh\n# placeholder written by the fake nodeadm\n{text}\n"


UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")


def containerd_unit_paths(root: Path) -> list[Path]:
    """Where systemd would find a containerd unit on the fake host."""
    return [under(root, d) / "containerd.service" for d in UNIT_DIRS]


def install_artifacts(
    root: Path,
    *,
    kubernetes_version: str,
    provider: str,
    containerd_source: str,
    os_id: str,
) -> dict[str, Any]:
    """Write what `nodeadm install` puts on a host; return the tracker's Artifacts map."""
    artifacts: dict[str, Any] = dict.fromkeys(TRACKER_KEYS, False)
    artifacts["Containerd"] = "none"
    apt = uses_apt(os_id)
    # nodeadm skips containerd when both containerd and runc are already on PATH.
    has_runtime = under(root, "usr/bin/containerd").exists() and (
        under(root, "usr/bin/runc").exists() or under(root, "usr/sbin/runc").exists()
    )
    if containerd_source != "none" and not has_runtime:
        write_file(
            under(root, "usr/bin/containerd"), _script('echo "containerd v1.7.24"'), mode=0o755
        )
        write_file(under(root, "usr/bin/runc"), _script('echo "runc version 1.1.12"'), mode=0o755)
        unit_dir = "lib/systemd/system" if apt else "usr/lib/systemd/system"
        write_file(under(root, f"{unit_dir}/containerd.service"), _unit("containerd"))
        artifacts["Containerd"] = containerd_source
    if containerd_source == "docker":
        if apt:
            write_file(under(root, "etc/apt/keyrings/docker.asc"), "fake docker key\n")
            write_file(
                under(root, "etc/apt/sources.list.d/docker.list"),
                "deb [signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu jammy stable\n",
            )
        else:
            write_file(under(root, "etc/yum.repos.d/docker-ce.repo"), "[docker-ce-stable]\n")
    if not under(root, "usr/sbin/iptables").exists():
        write_file(under(root, "usr/sbin/iptables"), _script('echo "iptables v1.8.7"'), mode=0o755)
        artifacts["Iptables"] = True
    if provider == "ssm":
        write_file(under(root, "opt/ssm/ssm-setup-cli"), _script("exit 0"), mode=0o755)
        # ssm-setup-cli installs the snap on Ubuntu (nodeadm then drives the snap's unit,
        # internal/ssm/daemon.go) and the rpm elsewhere.
        for path, text in ssm_agent_files(os_id).items():
            write_file(
                under(root, path), text, mode=0o755 if "bin" in path or "snap/" in path else 0o644
            )
        write_file(
            under(root, "etc/amazon/ssm/amazon-ssm-agent.json"),
            json.dumps({"Ssm": {"CredentialRetryMaxSleepSeconds": 60}}, indent=2) + "\n",
        )
        artifacts["Ssm"] = True
    else:
        write_file(under(root, "usr/local/bin/aws_signing_helper"), _script("exit 0"), mode=0o755)
        artifacts["IamRolesAnywhere"] = True
    write_kubernetes_binaries(root, kubernetes_version)
    artifacts.update(Kubelet=True, Kubectl=True, CniPlugins=True)
    artifacts.update(ImageCredentialProvider=True, IamAuthenticator=True)
    return artifacts


def ssm_agent_files(os_id: str) -> dict[str, str]:
    """The SSM agent's binary and unit as ssm-setup-cli installs them on this OS."""
    if os_id == "ubuntu":
        return {
            "snap/amazon-ssm-agent/current/amazon-ssm-agent": _script("exit 0"),
            "etc/systemd/system/snap.amazon-ssm-agent.amazon-ssm-agent.service": _unit(
                "snap.amazon-ssm-agent.amazon-ssm-agent"
            ),
        }
    return {
        "usr/bin/amazon-ssm-agent": _script("exit 0"),
        "usr/lib/systemd/system/amazon-ssm-agent.service": _unit("amazon-ssm-agent"),
    }


def write_kubernetes_binaries(root: Path, kubernetes_version: str) -> None:
    """kubelet, kubectl, CNI plugins, ECR provider and authenticator for one version.

    The kubelet placeholder answers `--version` like the real one, which is how a test (or
    the agent) can tell an install from an upgrade.
    """
    version = f"v{kubernetes_version}"
    write_file(under(root, "usr/bin/kubelet"), _script(f'echo "Kubernetes {version}"'), mode=0o755)
    write_file(under(root, "etc/systemd/system/kubelet.service"), _unit("kubelet"))
    write_file(
        under(root, "usr/local/bin/kubectl"),
        _script(f'echo "Client Version: {version}"'),
        mode=0o755,
    )
    write_file(under(root, "opt/cni/plugins/cni-plugins.tgz"), b"fake cni plugins tarball\n")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        write_file(under(root, f"opt/cni/bin/{plugin}"), _script("exit 0"), mode=0o755)
    write_file(
        under(root, "etc/eks/image-credential-provider/ecr-credential-provider"),
        _script("exit 0"),
        mode=0o755,
    )
    write_file(under(root, "usr/local/bin/aws-iam-authenticator"), _script("exit 0"), mode=0o755)


def installed_kubelet_version(root: Path) -> str | None:
    """The version the kubelet placeholder reports (`1.31.7`), or None."""
    path = under(root, "usr/bin/kubelet")
    if not path.exists():
        return None
    for word in path.read_text().replace('"', " ").split():
        if word.startswith("v1."):
            return word[1:]
    return None


def _unit(name: str) -> str:
    return (
        f"[Unit]\nDescription={name} (fake)\n\n[Service]\nExecStart=/usr/bin/{name}\n"
        "Restart=always\n\n[Install]\nWantedBy=multi-user.target\n"
    )
