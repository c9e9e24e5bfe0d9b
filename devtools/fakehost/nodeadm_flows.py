"""What each fake nodeadm subcommand does: its log lines, timing, failure modes and file effects.

The order of checks and log lines follows nodeadm's flows (aws/eks-hybrid v1.0.20 cmd/nodeadm/
and internal/flows/; devtools/fakehost/README.md maps each behaviour to its file): init checks
the install, then the firewall's VXLAN ports, then the NodeConfig, and exits 0 without a
tracker, as upgrade does; uninstall exits 0 when already uninstalled; debug prints its
validations through nodeadm's printer (`nodeadm_debug`); install lives in `nodeadm_install`. Injected
failures (`Knobs.failure`) and hangs (`Knobs.hangs`) happen where the real ones would.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.fakehost import layout, nodeadm_files, nodeconfig
from devtools.fakehost.firewall import vxlan_port_open
from devtools.fakehost.layout import under
from devtools.fakehost.nodeadm_debug import checklist
from devtools.fakehost.nodeadm_run import (
    Clock,
    CommandError,
    Knobs,
    Log,
    SilentFailure,
    Usage,
    parse_duration,
    resolve_version,
    spawn_hung_child,
)
from devtools.fakehost.proxy import proxy_error

CONFIG_REQUIRED = (
    "--config-source is a required flag. The format is a URI with supported schemes: "
    "[file, imds]. For example on hybrid nodes --config-source file://nodeConfig.yaml"
)
SIMULATED = "(simulated by NODEADM_FAKE_FAIL)"


@dataclass
class Invocation:
    """A parsed command line: subcommand, flag values by long name, positionals."""

    sub: str
    values: dict[str, Any]
    positionals: list[str]
    development: bool = False

    def skip(self) -> set[str]:
        return {s.strip() for s in str(self.values.get("skip") or "").split(",") if s.strip()}


@dataclass
class Run:
    """One invocation with its knobs and log."""

    inv: Invocation
    knobs: Knobs
    log: Log

    @property
    def root(self) -> Path:
        return self.knobs.root

    @property
    def os_id(self) -> str:
        return layout.read_os_release(self.root).get("ID", "ubuntu")

    def step(self, clock: Clock, msg: str, what: str) -> None:
        """Log one step and spend the simulated time on it."""
        self.log.info(msg)
        clock.sleep(self.knobs.delay, what)

    def hang(self, clock: Clock, what: str) -> None:
        """Stall like a stuck child process until the deadline (or forever without one)."""
        self.log.info("Waiting for command to finish", command=what)
        child = spawn_hung_child(self.root, self.inv.sub)
        try:
            while True:
                clock.sleep(60.0, what)
        finally:
            child.kill()
            child.wait()


def run(inv: Invocation, knobs: Knobs, log: Log) -> int:
    # install has its own module (upgrade reuses its artifact steps); imported here, not at
    # the top, because it builds on this module's Run.
    from devtools.fakehost.nodeadm_install import install

    handlers: dict[str, Callable[[Run], int]] = {
        "install": install,
        "init": init,
        "upgrade": upgrade,
        "uninstall": uninstall,
        "debug": debug,
        "config": config_check,
        "sync-artifacts": sync_artifacts,
    }
    return handlers[inv.sub](Run(inv, knobs, log))


def _require_root(run: Run) -> None:
    # Tests run as root anyway; the check is opt-in so the fake also runs unprivileged.
    if run.knobs.require_root and os.geteuid() != 0:
        raise CommandError("must run as root")


def _timeout(run: Run, default: str) -> Clock:
    text = str(run.inv.values.get("timeout") or default)
    return Clock(parse_duration(text))


def _load_config(run: Run, *, validate: bool = True) -> nodeconfig.NodeConfig:
    uri = run.inv.values.get("config-source")
    if not uri:
        raise Usage(CONFIG_REQUIRED)
    run.log.info("Loading configuration..", configSource=uri)
    try:
        config = nodeconfig.load(str(uri))
        if validate:
            run.log.component = "hybrid/validator.go"
            run.log.info("Validating configuration...")
            nodeconfig.validate(config, run.root)
    except nodeconfig.ConfigError as exc:
        raise CommandError(str(exc)) from None
    return config


def init(run: Run) -> int:
    run.log.component = "init/init.go"
    _require_root(run)
    if not run.inv.values.get("config-source"):
        raise Usage(CONFIG_REQUIRED)
    skip = run.inv.skip()
    if "install-validation" not in skip:
        run.log.info("Loading installed components")
        if layout.read_tracker(run.root) is None:
            # The quirk the agent must know: nothing installed is a success (exit 0).
            run.log.info(
                "Nodeadm components are not installed. Please run `nodeadm install` before "
                "running init"
            )
            return 0
        if not any(p.exists() for p in layout.containerd_unit_paths(run.root)):
            raise CommandError(
                "a systemd unit file for containerd is required to init the node: "
                "containerd daemon not found"
            )
    if "cni-validation" not in skip:
        run.log.info("Validating firewall ports for cilium and calico")
        if not vxlan_port_open(run.root, run.os_id):
            raise CommandError(
                "Cilium (8472/udp) or Calico (4789/udp) VxLan ports are not open on the host. "
                "If you are not using VxLan, this validation can by bypassed with --skip "
                "cni-validation"
            )
    if not under(run.root, "run/systemd/system").is_dir():
        raise CommandError(
            "failed to connect to systemd: dial unix /run/systemd/private: "
            "connect: no such file or directory"
        )
    config = _load_config(run)
    mode = run.knobs.failure("init")
    clock = Clock(None)
    _configure_node(run, clock, config, mode, skip, hang=run.knobs.hangs("init"))
    return 0


def _configure_node(
    run: Run,
    clock: Clock,
    config: nodeconfig.NodeConfig,
    mode: str | None,
    skip: set[str],
    *,
    hang: bool = False,
) -> None:
    """Init's work after loading the config (also the tail of upgrade)."""
    root = run.root
    cluster = config.cluster
    run.log.component = "hybrid/aws.go"
    run.log.info("Configuring Aws...")
    node_name = _configure_aws(run, clock, config, mode)
    run.log.component = "hybrid/configenricher.go"
    run.log.info("Enriching configuration...")
    complete = all(cluster.get(k) for k in ("apiServerEndpoint", "certificateAuthority", "cidr"))
    if mode == "access_denied" and not complete:
        raise CommandError(
            "operation error EKS: DescribeCluster, https response error StatusCode: 403, "
            "RequestID: 4f1c2b3a-0d9e-4c8b-a7f6-e5d4c3b2a190, api error AccessDeniedException: "
            f"User: arn:aws:sts::111122223333:assumed-role/AmazonEKSHybridNodesRole/{node_name} "
            "is not authorized to perform: eks:DescribeCluster"
        )
    clock.sleep(run.knobs.delay, "enriching configuration")
    if hang:
        run.hang(clock, "waiting for kubelet")
    run.log.component = "hybrid/validator.go"
    _runtime_validations(run, config, skip)
    run.log.component = "system/system.go"
    run.log.info("Setting up system aspects...")
    if nodeadm_files.partition_swap_present(root):
        raise CommandError("partition type swap found on the host")
    if "config" not in skip:
        nodeadm_files.write_sysctl_and_modules(root)
        nodeadm_files.turn_off_file_swap(root)
    clock.sleep(run.knobs.delay, "setting up system aspects")
    run.log.component = "containerd/config.go"
    run.log.info("Configuring containerd...")
    if "config" not in skip:
        nodeadm_files.write_containerd_config(root, config, cluster["region"])
    if "run" not in skip:
        layout.set_unit(root, "containerd", "active")
    clock.sleep(run.knobs.delay, "configuring containerd")
    if mode == "generic":
        raise CommandError(f"failed to pull sandbox image: context canceled {SIMULATED}")
    run.log.component = "kubelet/config.go"
    run.log.info("Configuring kubelet...")
    if "config" not in skip:
        nodeadm_files.write_kubelet_files(root, config, node_name, run.os_id)
    clock.sleep(run.knobs.delay, "configuring kubelet")
    if "run" not in skip:
        run.log.info("Enabling kubelet...")
        # kubelet_inactive: nodeadm is done and exits 0, but the unit never stays up.
        state = "failed" if mode == "kubelet_inactive" else "active"
        layout.set_unit(root, "kubelet", state)
        if state == "active":
            nodeadm_files.write_kubelet_certs(root, cluster["name"])
    run.log.info("done!", nodeName=node_name)


def _configure_aws(run: Run, clock: Clock, config: nodeconfig.NodeConfig, mode: str | None) -> str:
    root = run.root
    region = config.cluster["region"]
    if config.provider == "iam-ra":
        return nodeadm_files.write_iam_ra_profile(root, config)
    if under(root, layout.SSM_REGISTRATION).exists():
        run.log.info("Skipping SSM registration, machine already registered")
    else:
        run.log.info("Registering machine with SSM...")
        clock.sleep(run.knobs.delay, "registering with SSM")
        if mode == "ssm_activation_expired":
            raise CommandError("SSM activation expired. Please use a valid activation")
        if mode == "ssm_activation_invalid":
            raise CommandError(
                "invalid SSM activation. Please use a valid activation code, activation id and region"
            )
    node_name, _ = nodeadm_files.register_ssm(root, region)
    unit = nodeadm_files.ssm_agent_unit(run.os_id)
    if not any(under(root, f"{d}/{unit}.service").exists() for d in layout.UNIT_DIRS):
        # A .deb agent on Ubuntu has no snap unit: enabling it fails (internal/ssm/daemon.go).
        raise CommandError(f"Unit file {unit}.service does not exist.")
    layout.set_unit(root, unit, "active")
    nodeadm_files.write_ssm_credentials(root)
    return node_name


def _runtime_validations(run: Run, config: nodeconfig.NodeConfig, skip: set[str]) -> None:
    """internal/node/hybrid/hybrid.go Validate: every validation runs and logs through the
    LoggerPrinter; the failures are joined into one error at the end."""
    failures: list[str] = []

    def validate(name: str, message: str, problem: tuple[str, str] | None) -> None:
        if name in skip:
            return
        run.log.info("Starting validation", validation=name, message=message)
        if problem is None:
            run.log.info("Validation passed", validation=name)
            return
        run.log.error(
            "Validation failed", validation=name, error=problem[0], remediation=problem[1]
        )
        failures.append(problem[0])

    validate(
        "node-ip-validation",
        "Validating hybrid node network interface",
        _node_ip_problem(run, config),
    )
    name = config.cluster["name"]
    cert = None
    if nodeadm_files.stale_serving_cert(run.root, name):
        path = f"/{nodeadm_files.SERVING_CERT}"
        cert = (
            "validating kubelet certificate: certificate is not valid for the current cluster: "
            "x509: certificate signed by unknown authority",
            f'Please remove the kubelet server certificate file {path} or use "--skip '
            'kubelet-cert-validation" if this is expected',
        )
    validate("kubelet-cert-validation", "Validating kubelet server certificate", cert)
    proxy = proxy_error(run.root, dict(os.environ), ssm=config.provider == "ssm")
    validate("proxy-validation", "Validating proxy configuration on the hybrid node", proxy)
    if failures:
        joined = "\n".join(failures)
        run.log.error("Hybrid node validation failures detected", error=joined)
        raise CommandError(joined)


def _node_ip_problem(run: Run, config: nodeconfig.NodeConfig) -> tuple[str, str] | None:
    node_ip = config.flag_value("node-ip")
    cidrs = run.knobs.remote_node_cidrs
    if not node_ip or cidrs is None or any(ipaddress.IPv4Address(node_ip) in n for n in cidrs):
        return None
    docs = "https://docs.aws.amazon.com/eks/latest/userguide/hybrid-nodes-troubleshooting.html"
    listed = " ".join(str(c) for c in cidrs)
    return (
        f"node IP {node_ip} is not in any of the remote network CIDR blocks: [{listed}]. "
        f"See {docs} or use --skip node-ip-validation",
        "Ensure the node IP is within the configured remote network CIDR blocks. Update the "
        "remote network configuration in the EKS cluster or adjust the node's network "
        f"configuration. See {docs}",
    )


def upgrade(run: Run) -> int:
    run.log.component = "upgrade/upgrade.go"
    _require_root(run)
    if not run.inv.values.get("config-source"):
        raise Usage(CONFIG_REQUIRED)
    tracker = layout.read_tracker(run.root)
    if tracker is None:
        run.log.info("Nodeadm components are not installed. Please run `nodeadm install` first")
        return 0
    clock = _timeout(run, "20m")
    config = _load_config(run)
    installed = "ssm" if tracker.get("Ssm") else "iam-ra"
    if installed != config.provider:
        raise CommandError(
            "upgrade does not support changing credential providers. "
            "Please uninstall and install with new credential provider"
        )
    run.log.info("Validating Kubernetes version", version=run.inv.positionals[0])
    version = resolve_version(run.inv.positionals[0], run.knobs.supported)
    run.log.info("Using Kubernetes version", version=version)
    mode = run.knobs.failure("upgrade")
    skip = run.inv.skip()
    _drain_validations(run, mode, skip)
    run.log.component = "flows/upgrade.go"
    run.step(clock, "Upgrading containerd...", "upgrading containerd")
    if run.knobs.hangs("upgrade"):
        run.hang(clock, "upgrading containerd")
    cred = "SSM agent" if installed == "ssm" else "AWS signing helper"
    run.step(clock, f"Upgrading {cred}...", f"upgrading {cred}")
    if mode == "generic":
        raise CommandError(f"upgrading kubelet: exit status 1 {SIMULATED}")
    from devtools.fakehost.nodeadm_install import install_eks_artifacts  # see run()

    install_eks_artifacts(run, clock, mode, version)
    layout.write_kubernetes_binaries(run.root, version)
    _configure_node(run, clock, config, None, skip)
    return 0


def _drain_validations(run: Run, mode: str | None, skip: set[str]) -> None:
    """nodeadm refuses to upgrade or uninstall a running node that is not cordoned and drained."""
    if mode != "not_drained" or layout.unit_state(run.root, "kubelet") != "active":
        return
    if "node-validation" not in skip:
        raise CommandError(
            "node is not cordoned. Please cordon and drain the node, "
            "or use --skip node-validation,pod-validation"
        )
    if "pod-validation" not in skip:
        raise CommandError(
            "pod validation failed: pods other than static pods and DaemonSet pods are "
            "running on the node: [default/web-7c9d8f6b5d-x2k4p]"
        )


def uninstall(run: Run) -> int:
    run.log.component = "uninstall/uninstall.go"
    _require_root(run)
    tracker = layout.read_tracker(run.root)
    if tracker is None:
        run.log.info("Node components are already uninstalled")
        return 0
    mode = run.knobs.failure("uninstall")
    skip = run.inv.skip()
    _drain_validations(run, mode, skip)
    clock = Clock(None)
    run.log.component = "flows/uninstall.go"
    run.step(clock, "Stopping kubelet...", "stopping kubelet")
    layout.set_unit(run.root, "kubelet", "inactive")
    if run.knobs.hangs("uninstall"):
        run.hang(clock, "stopping containerd")
    if mode == "generic":
        raise CommandError(f"failed to uninstall containerd: exit status 100 {SIMULATED}")
    if tracker.get("Ssm"):
        run.step(clock, "Deregistering SSM managed instance...", "deregistering")
        layout.set_unit(run.root, nodeadm_files.ssm_agent_unit(run.os_id), "inactive")
    if tracker.get("Containerd") in ("distro", "docker"):
        run.step(clock, "Uninstalling containerd...", "uninstalling containerd")
        layout.set_unit(run.root, "containerd", "inactive")
    run.step(clock, "Removing node components...", "removing components")
    keep = nodeadm_files.mount_points(run.root)
    for path in nodeadm_files.uninstall_paths(tracker, force=bool(run.inv.values.get("force"))):
        nodeadm_files.remove(run.root, path, keep)
    run.log.info("Finished uninstallation")
    return 0


def config_check(run: Run) -> int:
    run.log.component = "config/check.go"
    _load_config(run)
    if run.knobs.failure("config"):
        raise CommandError(f"configuration check failed {SIMULATED}")
    run.log.info("Configuration is valid")
    return 0


def sync_artifacts(run: Run) -> int:
    run.log.component = "syncartifacts/sync.go"
    values = run.inv.values
    if not values.get("s3-bucket") or not values.get("s3-prefix"):
        raise Usage("--s3-bucket and --s3-prefix are required flags")
    clock = _timeout(run, "30m")
    version = resolve_version(run.inv.positionals[0], run.knobs.supported)
    run.step(clock, "Syncing artifacts to S3...", "syncing artifacts")
    run.log.info("Artifacts synced", version=version, bucket=values["s3-bucket"])
    return 0


def debug(run: Run) -> int:
    """Print nodeadm debug's checklist on stdout; failures are silent errors (exit 1)."""
    run.log.component = "debug/debug.go"
    config = _load_config(run, validate=False)
    clock = Clock(None)
    if run.knobs.hangs("debug"):
        run.hang(clock, "validating")
    failed = checklist(run.root, config, run.knobs, no_color=bool(run.inv.values.get("no-color")))
    if failed:
        raise SilentFailure
    return 0
