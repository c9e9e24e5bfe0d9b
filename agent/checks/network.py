"""``network.cidrs`` and ``network.route_to_vpc`` (``network.node_ip`` is `node_ip`'s).

The remote node and pod networks must satisfy the cluster's remoteNetworkConfig rules, and
the host must route the VPC CIDR back to the EKS
control plane's ENIs, through the VPN when the assignment names its server. With
``network.manage_routes`` the agent adds that static route itself (Palette step 8, for VPNs
without BGP).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    failed,
    one_line,
    passed,
    require_assignment,
    warned,
)
from agent.core.assignment import Assignment
from agent.host.routes import (
    PROC_ROUTE,
    Route,
    RouteError,
    read_routes,
    replace_route,
    route_for,
)

PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
Net = ipaddress.IPv4Network


def _cidr_problem(label: str, text: str) -> tuple[Net | None, str | None]:
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            fixed = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return None, f"{label} {text!r} is not a CIDR"
        return None, f"{label} {text} has host bits set (did you mean {fixed}?)"
    if not isinstance(net, Net):
        return None, f"{label} {text} is IPv6; EKS Hybrid Nodes take IPv4 only"
    if net.prefixlen < 8:
        return net, f"{label} {text} is larger than /8"
    if not any(net.subnet_of(p) for p in PRIVATE):
        return net, f"{label} {text} is not RFC 1918 private space (10/8, 172.16/12, 192.168/16)"
    return net, None


def cidr_problems(a: Assignment) -> list[str]:
    problems: list[str] = []
    remote: list[tuple[str, Net]] = []
    for label, cidrs in (
        ("remote node CIDR", a.network.remote_node_cidrs),
        ("remote pod CIDR", a.network.remote_pod_cidrs),
    ):
        for text in cidrs:
            net, problem = _cidr_problem(label, text)
            if problem:
                problems.append(problem)
            if net is not None:
                remote.append((text, net))
    for i, (text, net) in enumerate(remote):
        for other_text, other in remote[i + 1 :]:
            if net.overlaps(other):
                problems.append(f"{text} overlaps {other_text}")
    for key, value in (("vpc_cidr", a.cluster.vpc_cidr), ("service_cidr", a.cluster.service_cidr)):
        if value is None:
            continue
        try:
            cluster_net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            problems.append(f"cluster.{key} {value!r} is not a CIDR")
            continue
        problems.extend(
            f"{text} overlaps the cluster's {key} {value}"
            for text, net in remote
            if isinstance(cluster_net, Net) and net.overlaps(cluster_net)
        )
    return problems


async def check_cidrs(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    problems = cidr_problems(a)
    details = {
        "remote_node_cidrs": list(a.network.remote_node_cidrs),
        "remote_pod_cidrs": list(a.network.remote_pod_cidrs),
        "problems": problems,
    }
    if problems:
        return failed("; ".join(problems), details=details)
    n = len(a.network.remote_node_cidrs) + len(a.network.remote_pod_cidrs)
    return passed(f"{n} remote CIDRs are private, sized /8-/32 and disjoint", details)


CIDRS = Check(
    id="network.cidrs",
    title="Remote network CIDRs are valid",
    remedy="fix the remote node/pod CIDRs in the assignment and the cluster's "
    "remoteNetworkConfig: IPv4 RFC 1918, /8 to /32, disjoint from each other, the VPC CIDR "
    "and the service CIDR",
    timeout_s=5.0,
    needs_assignment=True,
    run=check_cidrs,
)


def _routing_verdict(
    vpc: Net, vpn: str | None, routes: list[Route]
) -> tuple[bool, str, dict[str, Any]]:
    """(good, message, details) for the current table."""
    route = route_for(routes, vpc)
    details: dict[str, Any] = {
        "vpc_cidr": str(vpc),
        "vpn_server_ip": vpn,
        "route": route.describe() if route else None,
    }
    if route is None:
        return False, f"no route covers vpc_cidr {vpc} (not even a default route)", details
    if vpn is None or route.gateway is None:
        # No VPN named, or a link route (a tunnel interface): the host reaches the VPC itself.
        return True, f"vpc_cidr {vpc} is routed: {route.describe()}", details
    if str(route.gateway) != vpn:
        kind = "the default route" if route.is_default else "a route"
        return (
            False,
            f"vpc_cidr {vpc} is routed by {kind} via {route.gateway} ({route.describe()}), "
            f"not via the VPN server {vpn}",
            details,
        )
    return True, f"vpc_cidr {vpc} is routed via the VPN server: {route.describe()}", details


async def check_route(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    try:
        vpc = ipaddress.ip_network(a.cluster.vpc_cidr, strict=False)
    except ValueError:
        return failed(
            f"cluster.vpc_cidr {a.cluster.vpc_cidr!r} is not a CIDR", "fix cluster.vpc_cidr"
        )
    if not isinstance(vpc, Net):
        return failed(
            f"cluster.vpc_cidr {vpc} is IPv6; only IPv4 is supported", "fix cluster.vpc_cidr"
        )
    routes = read_routes(ctx.host)
    if routes is None:
        return warned(
            f"cannot read {PROC_ROUTE} under the host root: routing to vpc_cidr {vpc} is unknown",
            "run the agent where it sees the host's /proc and network namespace",
        )
    vpn = a.network.vpn_server_ip
    good, message, details = _routing_verdict(vpc, vpn, routes)
    if good:
        return passed(message, details)
    if vpn is None:
        remedy = (
            f"route {vpc} towards the VPN or Direct Connect, or set network.vpn_server_ip in "
            "the assignment so the agent can judge and add the route"
        )
        return warned(message, remedy, details)
    if not (ctx.config.network.manage_routes and ctx.allow_changes):
        remedy = (
            f"add the route: ip route replace {vpc} via {vpn} (and persist it in netplan or "
            "NetworkManager), or set network.manage_routes: true to let the agent add it"
        )
        return warned(message, remedy, details)
    try:
        await replace_route(ctx.config.programs.ip, str(vpc), vpn)
    except RouteError as e:
        return failed(
            f"{message}; adding the route failed: {one_line(str(e))}",
            f"check that {vpn} is reachable on a local network, then add the route by hand",
            details,
        )
    ctx.log.info("route.added", network=str(vpc), via=vpn)
    good, now_message, details = _routing_verdict(vpc, vpn, read_routes(ctx.host) or [])
    details["route_added"] = good
    if not good:
        return failed(
            f"ran ip route replace {vpc} via {vpn}, but the table still says: {now_message}",
            details=details,
        )
    return passed(f"added route {vpc} via {vpn} (before: {message})", details)


ROUTE = Check(
    id="network.route_to_vpc",
    title="VPC CIDR is routed",
    remedy="add a static route to the VPC CIDR via the VPN server (ip route add <vpc_cidr> "
    "via <vpn_server_ip>, persisted in netplan or NetworkManager), or set "
    "network.manage_routes: true",
    timeout_s=20.0,
    needs_assignment=True,
    run=check_route,
)
