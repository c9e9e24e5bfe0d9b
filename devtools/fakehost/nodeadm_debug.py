"""The checklist the fake `nodeadm debug` prints, judged from the fake host's state.

Output on stdout, one `* <description> [Success|Failed]` line per validation (ANSI colours
unless `--no-color`), a failed one followed by indented `Error:` and `Remediation:` lines, and
after any failure a blank line and "Issues found during validation. Please follow the
remediation advice above.". The Kubernetes API checks stop at their first failure, as
nodeadm's `UntilError` group does; the others always run. `NODEADM_FAKE_FAIL=debug` fails the
API endpoint check; NTP, swap, node IP and kubelet state come from the host tree.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.fakehost import layout
from devtools.fakehost.nodeadm_run import Knobs
from devtools.fakehost.nodeconfig import NodeConfig

GREEN, RED, RESET = "\x1b[32m", "\x1b[31m", "\x1b[0m"
ISSUES = "Issues found during validation. Please follow the remediation advice above."


@dataclass(frozen=True)
class Item:
    description: str
    error: str = ""
    remediation: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def checklist(root: Path, config: NodeConfig, knobs: Knobs, *, no_color: bool) -> bool:
    """Print the checklist; return True when something failed."""
    items = [*_host_items(root, config), *_api_items(knobs), *_node_items(root, config, knobs)]
    failed = False
    for item in items:
        # debug takes 5-30 s on a real host; a quarter of a step per validation here.
        time.sleep(knobs.delay / 4)
        word = "Success" if item.ok else "Failed"
        if not no_color:
            word = f"{GREEN if item.ok else RED}{word}{RESET}"
        print(f"* {item.description} [{word}]")
        if not item.ok:
            failed = True
            print(f"    Error: {item.error}")
            print(f"    Remediation: {item.remediation}")
        sys.stdout.flush()
    if failed:
        print("")
        print(ISSUES)
    sys.stdout.flush()
    return failed


def _host_items(root: Path, config: NodeConfig) -> list[Item]:
    if config.provider == "ssm":
        items = [Item("Validating access to SSM endpoint")]
    else:
        items = [Item("Validating access to IAM Roles Anywhere endpoint")]
    if layout.ntp_synced(root):
        items.append(Item("Validating NTP synchronization"))
    else:
        items.append(
            Item(
                "Validating NTP synchronization",
                "system clock is not synchronized with NTP",
                "Ensure chronyd or systemd-timesyncd is running and synchronized.",
            )
        )
    items.append(_swap_item(root))
    items += [
        Item("Validating ulimits"),
        Item("Validating AWS authentication"),
        Item("Validating proxy configuration"),
    ]
    return items


def _swap_item(root: Path) -> Item:
    swaps = layout.under(root, "proc/swaps")
    kinds = [
        line.split()[1]
        for line in (swaps.read_text().splitlines()[1:] if swaps.exists() else [])
        if len(line.split()) > 1
    ]
    description = "Validating swap is disabled"
    remedy = "Disable swap with swapoff -a and remove swap entries from /etc/fstab."
    if "partition" in kinds:
        return Item(description, "partition type swap found on the host", remedy)
    if kinds:
        return Item(description, "swap is enabled on the host", remedy)
    return Item(description)


def _api_items(knobs: Knobs) -> list[Item]:
    endpoint = "Validating access to Kubernetes API server endpoint"
    if knobs.failure("debug"):
        return [
            Item(
                endpoint,
                "dial tcp 10.100.0.25:443: i/o timeout",
                "Ensure the node can reach the Kubernetes API server endpoint and the cluster "
                "security group allows inbound traffic from the remote node network.",
            )
        ]
    return [
        Item(endpoint),
        Item("Validating authenticated request to Kubernetes API server"),
        Item("Validating node identity maps to a Kubernetes node"),
        Item("Validating access to Kubernetes API server through VPC IPs"),
    ]


def _node_items(root: Path, config: NodeConfig, knobs: Knobs) -> list[Item]:
    items = [Item("Validating kubelet server certificate")]
    node_ip = config.flag_value("node-ip")
    cidrs = knobs.remote_node_cidrs
    interface = "Validating network interface"
    if (
        node_ip
        and cidrs is not None
        and not any(ipaddress.IPv4Address(node_ip) in net for net in cidrs)
    ):
        listed = " ".join(str(c) for c in cidrs)
        items.append(
            Item(
                interface,
                f"node IP {node_ip} is not in any of the remote network CIDR blocks [{listed}]",
                "Set --node-ip in the kubelet flags to an address inside the remote node networks.",
            )
        )
    else:
        items.append(Item(interface))
    if layout.unit_state(root, "kubelet") == "active":
        items.append(Item("Validating node is active in the cluster"))
    else:
        items.append(
            Item(
                "Validating node is active in the cluster",
                "kubelet is not running",
                "Check the kubelet logs with journalctl -u kubelet and re-run nodeadm init.",
            )
        )
    return items
