"""The fake `nodeadm debug`: nodeadm's validations in its order, through its printer.

Written from aws/eks-hybrid v1.0.20 cmd/nodeadm/debug/debug.go: the credential provider's
endpoint check, NTP, swap, ulimit, AWS authentication and proxy, then the Kubernetes API
checks (stopping at their first failure, as the runner's UntilError does), the kubelet
certificate, the network interface and the active-node check. Each prints through
`Printer`, a copy of internal/validation/printer.go's format: ``* <message> `` at the
start (no newline), ``[Success]``/``[Failed]`` at the end, and for a failure a tree of
``Error`` nodes with the text one level down and ``Remediation`` under it. On any failure
it prints a blank line and "Issues found during validation...". Host state decides the
verdicts: NTP from the fake clock, swap from /proc/swaps, proxy drop-ins from the tree and
the proxy variables in the environment, the node IP against NODEADM_FAKE_REMOTE_NODE_CIDRS,
and the active node from kubelet's unit: when kubelet is not active the check waits
NODEADM_FAKE_ACTIVE_NODE_WAIT_S (the real one waits 5 minutes for a Ready node) and fails.
``NODEADM_FAKE_FAIL=debug`` makes the API endpoint unreachable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.fakehost import layout
from devtools.fakehost.nodeadm_run import Knobs
from devtools.fakehost.nodeconfig import NodeConfig
from devtools.fakehost.proxy import proxy_error

GREEN, RED, BLUE, RESET = "\x1b[32m", "\x1b[31m", "\x1b[34m", "\x1b[0m"
ISSUES = "Issues found during validation. Please follow the remediation advice above."
TROUBLESHOOTING = (
    "https://docs.aws.amazon.com/eks/latest/userguide/hybrid-nodes-troubleshooting.html"
)


@dataclass(frozen=True)
class Failure:
    error: str
    remediation: str = ""


class Printer:
    """internal/validation/printer.go's output, one error per failure (all ours have one)."""

    def __init__(self, *, no_color: bool) -> None:
        self.no_color = no_color

    def _c(self, text: str, colour: str) -> str:
        return text if self.no_color else f"{colour}{text}{RESET}"

    def starting(self, message: str) -> None:
        sys.stdout.write(f"* {message} ")
        sys.stdout.flush()

    def done(self, failure: Failure | None) -> None:
        if failure is None:
            print(f"[{self._c('Success', GREEN)}]")
        else:
            print(f"[{self._c('Failed', RED)}]")
            print(f"  └─ {self._c('Error', RED)}")
            print(f"     └─ {failure.error}")
            if failure.remediation:
                print(f"     └─ {self._c('Remediation', BLUE)}")
                print(f"        └─ {failure.remediation}")
        sys.stdout.flush()


def checklist(root: Path, config: NodeConfig, knobs: Knobs, *, no_color: bool) -> bool:
    """Run and print the validations; return True when something failed."""
    printer = Printer(no_color=no_color)
    failed = False

    def validate(message: str, judge: object) -> Failure | None:
        nonlocal failed
        printer.starting(message)
        time.sleep(knobs.delay / 4)  # debug takes 5-30 s on a real host
        failure = judge() if callable(judge) else None
        printer.done(failure)
        failed = failed or failure is not None
        return failure

    endpoint = "SSM" if config.provider == "ssm" else "IAM Roles Anywhere"
    validate(f"Validating access to AWS {endpoint} API endpoint", None)
    validate("Validating NTP synchronization status", lambda: _ntp(root))
    validate("Validating swap configuration", lambda: _swap(root))
    validate("Validating ulimit configuration", None)
    validate("Validating authentication against AWS", None)
    validate("Validating proxy configuration on the hybrid node", lambda: _proxy(root, config))
    if validate("Validating access to Kubernetes API endpoint", lambda: _api(knobs)) is None:
        validate("Validating unauthenticated request to Kubernetes API endpoint", None)
        validate("Validating authenticated request to Kubernetes API endpoint", None)
        validate("Validating Kubernetes identity matches a Node identity", None)
        validate("Validating access to Kube-API server through VPC IPs", None)
    validate("Validating kubelet server certificate", None)
    if knobs.remote_node_cidrs is None:
        validate(
            "Skipping network interface validation due to node IAM role missing EKS "
            "DescribeCluster permission",
            None,
        )
    else:
        validate("Validating hybrid node network interface", lambda: _node_ip(config, knobs))
    validate("Validating active node status in Kubernetes cluster", lambda: _active(root))
    if failed:
        print("")
        print(ISSUES)
    sys.stdout.flush()
    return failed


def _ntp(root: Path) -> Failure | None:
    if layout.ntp_synced(root):
        return None
    return Failure(
        "validating NTP synchronization via timedatectl: System clock not synchronized",
        "Ensure the hybrid node is synchronized with NTP by running `timedatectl set-ntp true`.",
    )


def _swap(root: Path) -> Failure | None:
    swaps = layout.under(root, "proc/swaps")
    rows = [line.split() for line in (swaps.read_text().splitlines()[1:] if swaps.exists() else [])]
    rows = [r for r in rows if len(r) > 1]
    if any(r[1] == "partition" for r in rows):
        return Failure(
            "partition swap detected on host",
            "Nodeadm can only disable file-based swap automatically. Please manually disable "
            "partition swap before running nodeadm init. Run 'sudo swapoff -a' to disable swap "
            "and remove swap entries from /etc/fstab to make the change persistent.",
        )
    if len(rows) == 1:
        return Failure(
            "swap still active on host: 1 swap entries found",
            "File-based swap should have been disabled during nodeadm init. This may indicate "
            f"init did not complete successfully. Try running 'sudo swapoff {rows[0][0]}' and "
            "re-run nodeadm init if needed.",
        )
    if rows:
        return Failure(
            f"swap still active on host: {len(rows)} swap entries found",
            "All swap should be disabled before running debug. For partition swap, run 'sudo "
            "swapoff -a' and remove entries from /etc/fstab. For file swap, this indicates "
            "nodeadm init may not have completed successfully.",
        )
    return None


def _proxy(root: Path, config: NodeConfig) -> Failure | None:
    problem = proxy_error(root, dict(os.environ), ssm=config.provider == "ssm")
    return None if problem is None else Failure(*problem)


def _api(knobs: Knobs) -> Failure | None:
    if not knobs.failure("debug"):
        return None
    return Failure(
        "dialing 10.100.0.25:443: dial tcp 10.100.0.25:443: i/o timeout",
        "Ensure your network configuration allows the node to access the Kubernetes API endpoint.",
    )


def _node_ip(config: NodeConfig, knobs: Knobs) -> Failure | None:
    node_ip = config.flag_value("node-ip")
    cidrs = knobs.remote_node_cidrs or []
    if not node_ip or any(ipaddress.IPv4Address(node_ip) in net for net in cidrs):
        return None
    listed = " ".join(str(c) for c in cidrs)
    return Failure(
        f"node IP {node_ip} is not in any of the remote network CIDR blocks: [{listed}]. "
        f"See {TROUBLESHOOTING} or use --skip node-ip-validation",
        "Ensure the node IP is within the configured remote network CIDR blocks. Update the "
        "remote network configuration in the EKS cluster or adjust the node's network "
        f"configuration. See {TROUBLESHOOTING}",
    )


def _active(root: Path) -> Failure | None:
    if layout.unit_state(root, "kubelet") == "active":
        return None
    wait = float(os.environ.get("NODEADM_FAKE_ACTIVE_NODE_WAIT_S", "300"))
    time.sleep(wait)
    name = _node_name(root)
    return Failure(
        f"node '{name}' did not register with the cluster within timeout {wait:g}s",
        f"Detected Hostname: {name}, verify this node's network connectivity and "
        "authentication credentials.",
    )


def _node_name(root: Path) -> str:
    """The kubelet's node name: the SSM managed instance id, else the host name."""
    registration = layout.under(root, layout.SSM_REGISTRATION)
    if registration.exists():
        return str(json.loads(registration.read_text()).get("ManagedInstanceID", ""))
    hostname = layout.under(root, "etc/hostname")
    return hostname.read_text().strip() if hostname.exists() else "null"
