"""The preflight checks of the README check table, in the contract's table order.

The registry is an immutable tuple: a new check is one `Check` value in its own module and
one line here. The runner, the CLI's ``--only`` and the ``run-checks`` command all take
their ids from `CHECK_IDS`.
"""

from __future__ import annotations

from agent.checks import (
    config_files,
    credentials,
    firewall,
    host_services,
    kubernetes,
    mounts,
    network,
    node_ip,
    nodeadm_binary,
    os_checks,
    packages,
    system,
)
from agent.checks.base import Check

CHECKS: tuple[Check, ...] = (
    os_checks.CHECK,
    packages.CHECK,
    mounts.BIND,
    mounts.WRITABLE,
    kubernetes.CHECK,
    credentials.CHECK,
    network.CIDRS,
    node_ip.CHECK,
    firewall.CHECK,
    network.ROUTE,
    system.SWAP,
    system.DISK,
    system.SYSTEMD,
    system.CLOCK,
    nodeadm_binary.CHECK,
    config_files.CHECK,
    # Beyond the contract's table: nodeadm init's own validations, judged earlier.
    host_services.PROXY,
    host_services.SSM_AGENT,
    host_services.CONTAINERD_UNIT,
)

CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
