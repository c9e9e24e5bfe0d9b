"""The fake `nodeadm install`: validations, version resolution and the install steps.

Written from aws/eks-hybrid v1.0.20 cmd/nodeadm/install/install.go and internal/containerd,
internal/ssm and internal/iamrolesanywhere: install validates its flags and the containerd
source for the OS, resolves the Kubernetes version, then installs containerd, the credential
process and the EKS artifacts one step at a time against its ``--timeout``, writing the
tracker last. Injected failures (`Knobs.failure`) and hangs (`Knobs.hangs`) happen where the
real ones would.
"""

from __future__ import annotations

import time
from pathlib import Path

from devtools.fakehost import layout
from devtools.fakehost.layout import under
from devtools.fakehost.nodeadm_flows import SIMULATED, Run, _require_root, _timeout
from devtools.fakehost.nodeadm_run import (
    Clock,
    CommandError,
    DeadlineExceeded,
    Usage,
    resolve_version,
)


def install(run: Run) -> int:
    run.log.component = "install/install.go"
    _require_root(run)
    values = run.inv.values
    provider = values.get("credential-provider")
    if not provider:
        raise Usage("--credential-provider is a required flag. Allowed values are ssm & iam-ra")
    if provider not in ("ssm", "iam-ra"):
        raise CommandError("invalid credential process provided. Valid options are ssm and iam-ra")
    source = str(values.get("containerd-source") or "distro")
    _validate_containerd_source(run, source)
    if values.get("private-mode") and not values.get("manifest-override"):
        raise CommandError("--manifest-override is required when --private-mode is set")
    _check_manifest_override(values.get("manifest-override"))
    run.log.info("Creating package manager...")
    clock = _timeout(run, "20m")
    wanted = run.inv.positionals[0]
    run.log.info("Validating Kubernetes version", version=wanted)
    _check_region(str(values.get("region") or "us-west-2"))
    version = resolve_version(wanted, run.knobs.supported)
    run.log.info("Using Kubernetes version", version=version)
    mode = run.knobs.failure("install")
    hang = run.knobs.hangs("install")
    run.log.component = "flows/install.go"
    run.log.info("Configuring package manager. This might take a while...")
    apt = layout.uses_apt(run.os_id)
    marker = under(run.root, f"{layout.DPKG_UPDATES}/0001")
    try:
        run.log.info("Installing containerd...")
        if apt:
            # dpkg's journal of a half-configured package: what a kill mid-install leaves.
            layout.write_file(marker, "Package: containerd\nStatus: install ok half-configured\n")
        _install_containerd(run, clock, source, mode, hang)
        run.step(clock, "Installing iptables...", "failed to install iptables")
        if mode == "generic":
            pm = "apt" if apt else "yum"
            raise CommandError(
                f"failed to install iptables: running command [{pm} install -y iptables]: "
                f"exit status 100 {SIMULATED}"
            )
        _install_credential_process(run, clock, str(provider))
        install_eks_artifacts(run, clock, mode, version)
    except DeadlineExceeded:
        raise  # a killed apt leaves dpkg half-configured
    except CommandError:
        marker.unlink(missing_ok=True)
        raise
    run.log.info("Finishing up install...")
    previous = layout.read_tracker(run.root) or {}
    artifacts = layout.install_artifacts(
        run.root,
        kubernetes_version=version,
        provider=str(provider),
        containerd_source=source,
        os_id=run.os_id,
    )
    # nodeadm starts from the current tracker: a re-install that finds containerd (or
    # iptables) already there keeps the mark of having installed it the first time.
    for key, value in previous.items():
        if artifacts.get(key) in (False, "none") and value not in (False, "none"):
            artifacts[key] = value
    layout.write_tracker(run.root, artifacts)
    marker.unlink(missing_ok=True)
    return 0


def _validate_containerd_source(run: Run, source: str) -> None:
    if source not in ("none", "distro", "docker"):
        raise CommandError(
            f"invalid containerd source: {source}. Allowed values are [none, distro, docker]"
        )
    os_id = run.os_id
    if source == "docker" and os_id == "amzn":
        raise CommandError(
            "docker source for containerd is not supported on AL2023. "
            "Please provide `none` or `distro` to the --containerd-source flag"
        )
    if source == "distro" and os_id == "rhel":
        raise CommandError(
            "distro source for containerd is not supported on RHEL. "
            "Please provide `none` or `docker` to the --containerd-source flag"
        )


def _check_manifest_override(value: object) -> None:
    if not value:
        return
    text = str(value)
    if text.startswith("file://"):
        path = text.removeprefix("file://")
        if not Path(path).is_file():
            raise CommandError(f"reading manifest override: open {path}: no such file or directory")
    elif not text.startswith("https://"):
        raise CommandError(f"unsupported manifest override scheme: {text}")


def _check_region(region: str) -> None:
    parts = region.split("-")
    if len(parts) < 3 or not parts[-1].isdigit() or not all(p.isalpha() for p in parts[:-1]):
        raise CommandError(f"region {region} not found in manifest")


def _install_containerd(run: Run, clock: Clock, source: str, mode: str | None, hang: bool) -> None:
    root = run.root
    apt = layout.uses_apt(run.os_id)
    package = "containerd.io" if source == "docker" else "containerd"
    command = f"{'apt' if apt else 'yum'} install {package}"
    failed = f"failed to install containerd: context deadline exceeded: running command [{command}]"
    if hang:
        run.hang(clock, "failed to install containerd")
    present = under(root, "usr/bin/containerd").exists() and under(root, "usr/bin/runc").exists()
    if source != "none" and not present:
        try:
            if mode == "stale_index" or _index_stale(run):
                missing = "Unable to locate package" if apt else "No match for argument:"
                while True:
                    run.log.warn(
                        "Command failed, retrying",
                        command=command,
                        error=f"exit status 100, output: E: {missing} {package}",
                    )
                    clock.sleep(run.knobs.delay, "retrying")
            lock_retries = 3 if mode == "apt_lock" else 0
            while apt and (lock_retries > 0 or layout.dpkg_lock_held(root)):
                run.log.warn(
                    "Command failed, retrying",
                    command=command,
                    error="exit status 100, output: E: Could not get lock "
                    "/var/lib/dpkg/lock-frontend. It is held by process 2345 (unattended-upgr)",
                )
                clock.sleep(run.knobs.delay, "retrying")
                lock_retries -= 1
        except DeadlineExceeded:
            raise DeadlineExceeded(failed) from None
    clock.sleep(run.knobs.delay, "failed to install containerd")


def _index_stale(run: Run) -> bool:
    limit = run.knobs.stale_after_s
    if limit is None:
        return False
    apt = layout.uses_apt(run.os_id)
    directory = under(run.root, layout.APT_LISTS if apt else layout.DNF_CACHE)
    mtimes = [
        p.stat().st_mtime
        for p in directory.rglob("*")
        if p.is_file() and p.name != "lock" and "partial" not in p.parts
    ]
    return not mtimes or time.time() - max(mtimes) > limit


def _install_credential_process(run: Run, clock: Clock, provider: str) -> None:
    if provider == "iam-ra":
        run.step(clock, "Installing AWS signing helper...", "failed to install aws_signing_helper")
        return
    run.step(clock, "Installing SSM agent installer...", "failed to install ssm-setup-cli")
    if run.knobs.version_tuple() < (1, 0, 19):
        # The SSM installer's GPG key embedded in nodeadm <= v1.0.18 expired (issue #864).
        raise CommandError(
            "validating ssm-setup-cli signature: Signature Verification Error: No matching signature"
        )


def install_eks_artifacts(run: Run, clock: Clock, mode: str | None, version: str) -> None:
    if mode == "download":
        raise CommandError(
            "failed reading file from url: https://hybrid-assets.eks.amazonaws.com/releases/"
            f"v{version}/bin/linux/amd64/kubelet: max retries achieved for http request"
        )
    run.log.info("Installing kubelet...")
    if mode == "checksum":
        raise CommandError(
            "failed to install kubelet: checksum mismatch for kubelet: expected sha256 "
            "3f9a1c0e7b2d4f6a8c0e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a, got "
            "0b4e8d2a6c1f5e9b3d7a1c5f9e3b7d1a5c9f3e7b1d5a9c3f7e1b5d9a3c7f1e5b"
        )
    clock.sleep(run.knobs.delay, "failed to install kubelet")
    run.step(clock, "Installing kubectl...", "failed to install kubectl")
    run.step(clock, "Installing cni-plugins...", "failed to install cni-plugins")
    run.step(
        clock,
        "Installing image credential provider...",
        "failed to install image credential provider",
    )
    run.step(clock, "Installing IAM authenticator...", "failed to install aws-iam-authenticator")
