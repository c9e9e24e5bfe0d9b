"""The preflight checks of contract §5, in the contract's table order.

The registry is an immutable tuple: a new check is one `Check` value in its own module and
one line here. The runner, the CLI's ``--only`` and the ``run-checks`` command all take
their ids from `CHECK_IDS`.
"""

from __future__ import annotations

from agent.checks import (
    config_files,
    credentials,
    kubernetes,
    mounts,
    network,
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
    network.NODE_IP,
    network.ROUTE,
    system.SWAP,
    system.DISK,
    system.SYSTEMD,
    system.CLOCK,
    nodeadm_binary.CHECK,
    config_files.CHECK,
)

CHECK_IDS: tuple[str, ...] = tuple(c.id for c in CHECKS)
