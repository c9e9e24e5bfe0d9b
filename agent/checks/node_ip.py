"""``network.node_ip``: the address nodeadm will give the node lies in a remote node network.

nodeadm's node-ip-validation (and kubelet after it) picks one address, not any: an explicit
``--node-ip`` kubelet flag (the agent passes ``network.node_ip`` as one); otherwise, for IAM
Roles Anywhere, the first address the node name resolves to that belongs to this host; and
otherwise the address of the interface that carries the default route (the first default
route in the kernel's table whose interface has one). An SSM node's name is its managed
instance id, which resolves to nothing, so SSM always takes the default-route interface.
A multi-NIC host whose default route leaves by a NIC outside the remote node networks
therefore fails init even when another NIC is inside them: this check judges the address
nodeadm will take. The interface's address is found from the routing table: the kernel adds
a link route for each address's network on its interface, so the host address inside a link
route of the default-route interface is that interface's address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import _compat
from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    failed,
    passed,
    require_assignment,
    warned,
)
from agent.core.assignment import Assignment
from agent.core.checks import CheckStatus
from agent.host.routes import Route, read_routes

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address
REMEDY = (
    "set network.node_ip in the assignment to this host's address inside a remote node "
    "network (the agent passes it to nodeadm as --node-ip), or route the default route "
    "through the NIC inside it, or add the host's network to remote_node_cidrs (and the "
    "cluster's remoteNetworkConfig)"
)


def _ipv4(text: str) -> Addr | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return ip if isinstance(ip, Addr) else None


def usable(ip: Addr) -> bool:
    """What kubelet accepts as a node IP (not loopback, multicast, link-local or zeros)."""
    return not (ip.is_loopback or ip.is_multicast or ip.is_link_local or ip.is_unspecified)


def explicit_node_ip(a: Assignment) -> str | None:
    """``network.node_ip``, else the last ``--node-ip=`` kubelet flag (nodeadm reads that)."""
    if a.network.node_ip:
        return a.network.node_ip
    found = None
    for flag in a.kubelet.flags:
        if flag.startswith("--node-ip="):
            found = flag.removeprefix("--node-ip=")
    return found


def default_route_address(
    routes: Sequence[Route], addresses: Sequence[Addr]
) -> tuple[Route | None, list[Addr]]:
    """The first default route whose interface has a known address, and those addresses."""
    defaults = [r for r in routes if r.is_default]
    for route in defaults:
        links = [r.destination for r in routes if r.iface == route.iface and r.gateway is None]
        on_iface = [ip for ip in addresses if usable(ip) and any(ip in n for n in links)]
        if on_iface:
            return route, on_iface
    return (defaults[0] if defaults else None), []


def hosts_file_lookup(text: str, name: str) -> list[Addr]:
    """IPv4 addresses ``/etc/hosts`` gives ``name``, in file order."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:] and (ip := _ipv4(fields[0])) is not None:
            out.append(ip)
    return out


async def resolve_node_name(ctx: CheckContext, name: str) -> list[Addr]:
    """What the node name resolves to: ``/etc/hosts`` under the host root, then DNS.

    DNS is asked only when the host root is ``/``: a made-up host's names are not the
    resolver's business, and the agent shares the host's resolver only on the host itself.
    """
    found = hosts_file_lookup(ctx.host.read_text("/etc/hosts") or "", name)
    if found or ctx.host.root != Path("/"):
        return found
    try:
        async with _compat.timeout(5.0):
            infos = await asyncio.get_running_loop().getaddrinfo(name, None, family=socket.AF_INET)
    except (OSError, TimeoutError):
        return []
    return [ip for info in infos if (ip := _ipv4(str(info[4][0]))) is not None]


def _nets(a: Assignment) -> list[Net]:
    nets = []
    for text in a.network.remote_node_cidrs:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # network.cidrs reports it
        if isinstance(net, Net):
            nets.append(net)
    return nets


def _judge(
    ip: Addr, how: str, nets: list[Net], cidrs: str, details: dict[str, Any]
) -> CheckVerdict:
    net = next((n for n in nets if ip in n), None)
    details.update(node_ip=str(ip), network=str(net) if net else None)
    if net is None:
        return failed(
            f"node IP {ip} ({how}) is not in any remote node CIDR ({cidrs}): nodeadm init's "
            "node-ip-validation will fail",
            REMEDY,
            details,
        )
    return passed(f"node IP {ip} ({how}) is in {net}", details)


async def check_node_ip(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    nets, cidrs = _nets(a), ", ".join(a.network.remote_node_cidrs)
    host_ips = [ip for x in ctx.addresses if (ip := _ipv4(x)) is not None]
    given = explicit_node_ip(a)
    if given:
        ip = _ipv4(given)
        if ip is None:
            return failed(
                f"node IP {given!r} (network.node_ip / --node-ip) is not an IPv4 address",
                "set network.node_ip in the assignment to this host's IPv4 address",
                {"node_ip": given, "source": "assignment"},
            )
        verdict = _judge(ip, "network.node_ip", nets, cidrs, {"source": "assignment"})
        if verdict.status is CheckStatus.PASS and host_ips and ip not in host_ips:
            return warned(
                f"node IP {ip} (network.node_ip) is in a remote node CIDR but not on this "
                f"host ({', '.join(map(str, host_ips))}): kubelet will refuse it",
                REMEDY,
                verdict.details,
            )
        return verdict
    details: dict[str, Any] = {"addresses": [str(i) for i in host_ips]}
    if a.credential_provider == "iam-ra" and a.node_name_hint:
        resolved = await resolve_node_name(ctx, a.node_name_hint)
        details["node_name_resolves_to"] = [str(i) for i in resolved]
        mine = [ip for ip in resolved if usable(ip) and ip in host_ips]
        if mine:
            how = f"what the node name {a.node_name_hint} resolves to"
            return _judge(mine[0], how, nets, cidrs, {**details, "source": "node_name"})
    return _default_route_verdict(ctx, host_ips, nets, cidrs, details)


def _default_route_verdict(
    ctx: CheckContext, host_ips: list[Addr], nets: list[Net], cidrs: str, details: dict[str, Any]
) -> CheckVerdict:
    routes = read_routes(ctx.host)
    route, on_iface = default_route_address(routes or [], host_ips)
    details.update(source="default_route", route=route.describe() if route else None)
    if route is None:
        return failed(
            "no default route: nodeadm cannot pick a node IP (it takes the default-route "
            "interface's address when no node IP is given)",
            REMEDY,
            details,
        )
    how = f"the address of {route.iface}, which carries the default route"
    if len(on_iface) == 1:
        return _judge(on_iface[0], how, nets, cidrs, details)
    inside = [ip for ip in on_iface if any(ip in n for n in nets)]
    if on_iface and not inside:
        listed = ", ".join(map(str, on_iface))
        return failed(
            f"the default route leaves by {route.iface}, whose addresses ({listed}) are not in "
            f"any remote node CIDR ({cidrs}): nodeadm init's node-ip-validation will fail",
            REMEDY,
            details,
        )
    if on_iface and len(inside) == len(on_iface):
        return passed(
            f"every address of {route.iface} (the default route's) is in {cidrs}", details
        )
    problem = (
        f"{route.iface} (the default route's interface) has several addresses "
        f"({', '.join(map(str, on_iface))}) and nodeadm takes its first"
        if on_iface
        else f"no known address of this host is on {route.iface}, which carries the default route"
    )
    return warned(f"cannot tell which address nodeadm will pick: {problem}", REMEDY, details)


CHECK = Check(
    id="network.node_ip",
    title="Node IP is in a remote node network",
    remedy=REMEDY,
    timeout_s=10.0,
    needs_assignment=True,
    run=check_node_ip,
)
