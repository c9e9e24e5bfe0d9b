"""``network.firewall``: the CNI's VXLAN port is open in the firewall nodeadm will ask.

nodeadm ``init`` runs a ``cni-validation`` before anything else: when the host firewall is
enabled, 8472/udp (Cilium) or 4789/udp (Calico) must be open, else init stops with "Cilium
(8472/udp) or Calico (4789/udp) VxLan ports are not open on the host". It asks ufw on Ubuntu
and firewalld everywhere else (the first thing a stock RHEL join hits: firewalld runs there
by default). Before querying firewalld it reloads it, which drops ports opened only at
runtime, so this check asks for the permanent rule. The port wanted is the configured one
(``checks.vxlan_port``, UDP): nodeadm accepts either port, but the CNI's tunnels need their own. A
firewall program that is not installed means that firewall is not running. The other
firewall, when it also runs with the port closed, is a warning: nodeadm does not look at it,
but it still drops the tunnel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    errored,
    failed,
    passed,
    skipped,
    warned,
)
from agent.host.proc import ProcessError, run

# Whose VXLAN port a number is, for messages; any other configured port is named bare.
CNI_OF_PORT = MappingProxyType({8472: "Cilium", 4789: "Calico"})
# firewall-cmd --state exits 251 ("running but failed") or 252 ("not running") when stopped.
FIREWALLD_STOPPED = (251, 252)
# Only rules from Anywhere count, as nodeadm's parser reads them (``ufw status`` table).
_UFW_RULE = re.compile(r"^(\d+)\s*/(\w+)\s+(ALLOW|DENY)\s+Anywhere", re.M)


class FirewallUnknown(Exception):
    """The firewall program answered in a way that says neither running nor stopped."""


@dataclass(frozen=True)
class Firewall:
    name: str
    running: bool
    open_ports: frozenset[str] = frozenset()
    runtime_only: frozenset[str] = frozenset()


async def _ask(argv: list[str]) -> tuple[int, str] | None:
    """(exit code, output) of a firewall program; None when it is not installed."""
    try:
        result = await run(argv, timeout=20.0)
    except ProcessError as e:
        if e.timed_out:
            raise FirewallUnknown(f"{argv[0]} {argv[1]} did not answer within 20 s") from e
        return None
    return result.returncode, (result.stdout + result.stderr).strip()


async def firewalld(program: str, ports: tuple[str, ...]) -> Firewall:
    state = await _ask([program, "--state"])
    if state is None or state[0] in FIREWALLD_STOPPED:
        return Firewall("firewalld", False)
    code, out = state
    if code != 0 or "running" not in out:
        raise FirewallUnknown(f"firewall-cmd --state exited {code}: {out[-200:]}")
    permanent: set[str] = set()
    runtime: set[str] = set()
    for port in ports:
        for flags, into in ((["--permanent"], permanent), ([], runtime)):
            answer = await _ask([program, *flags, f"--query-port={port}"])
            if answer is not None and answer[0] == 0 and "yes" in answer[1]:
                into.add(port)
    return Firewall("firewalld", True, frozenset(permanent), frozenset(runtime - permanent))


async def ufw(program: str) -> Firewall:
    status = await _ask([program, "status"])
    if status is None:
        return Firewall("ufw", False)
    code, out = status
    if code != 0:
        # nodeadm fails init on this too: it cannot tell whether ufw runs.
        raise FirewallUnknown(f"ufw status exited {code}: {out[-200:]}")
    if "Status: active" not in out:
        return Firewall("ufw", False)
    allowed = {f"{p}/{proto}" for p, proto, action in _UFW_RULE.findall(out) if action == "ALLOW"}
    return Firewall("ufw", True, frozenset(allowed))


def open_command(name: str, port: str) -> str:
    if name == "ufw":
        return f"ufw allow {port}"
    return f"firewall-cmd --permanent --add-port={port} && firewall-cmd --reload"


def describe(port: str) -> str:
    """``8472/udp (Cilium's VXLAN port)``, ``4789/udp (Calico's VXLAN port)``, or the bare port."""
    cni = CNI_OF_PORT.get(int(port.partition("/")[0]))
    return port if cni is None else f"{port} ({cni}'s VXLAN port)"


def _verdict(asked: Firewall, other: Firewall, port: str) -> CheckVerdict:
    details: dict[str, Any] = {
        "port": port,
        "nodeadm_asks": asked.name,
        "firewalls": {
            f.name: {"running": f.running, "open_ports": sorted(f.open_ports)}
            for f in (asked, other)
        },
    }
    if asked.running and port not in asked.open_ports:
        where = f"{asked.name} is running and {describe(port)} is not open"
        if port in asked.runtime_only:
            where += " permanently (only at runtime, and nodeadm init reloads firewalld first)"
        return failed(
            f"{where}: nodeadm init's cni-validation will fail",
            f"open it: {open_command(asked.name, port)}",
            details,
        )
    if other.running and port not in other.open_ports:
        return warned(
            f"{other.name} also runs and does not open {describe(port)}; nodeadm checks only "
            f"{asked.name}, but {other.name} will drop the CNI's VXLAN tunnel",
            f"open it: {open_command(other.name, port)}",
            details,
        )
    if not asked.running and not other.running:
        return skipped("neither firewalld nor ufw is running", details)
    running = " and ".join(f.name for f in (asked, other) if f.running)
    return passed(f"{running} open(s) {describe(port)}", details)


async def check_firewall(ctx: CheckContext) -> CheckVerdict:
    port = f"{ctx.config.checks.vxlan_port}/udp"
    release = ctx.host.os_release()
    on_ubuntu = release is not None and release.id == "ubuntu"
    programs = ctx.config.programs
    try:
        fwd = await firewalld(programs.firewall_cmd, (port,))
        uf = await ufw(programs.ufw)
    except FirewallUnknown as e:
        return errored(
            f"cannot tell whether the firewall runs: {e}; nodeadm init fails on this too",
            "check the firewall service (systemctl status firewalld / ufw)",
        )
    asked, other = (uf, fwd) if on_ubuntu else (fwd, uf)
    return _verdict(asked, other, port)


CHECK = Check(
    id="network.firewall",
    title="The CNI's VXLAN port is open in the host firewall",
    remedy="open the CNI's VXLAN port (checks.vxlan_port): firewall-cmd --permanent "
    "--add-port=8472/udp && firewall-cmd --reload (ufw allow 8472/udp on Ubuntu; 4789/udp "
    "for Calico)",
    timeout_s=60.0,
    needs_assignment=False,
    run=check_firewall,
)
