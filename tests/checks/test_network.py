"""``network.*`` checks and ``/proc/net/route`` parsing, with a fake ``ip`` that edits the table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.core.checks import CheckStatus
from agent.host.routes import parse_routes, route_for
from devtools.fakehost import calls, make_host
from tests.checks.helpers import assignment, config, context, fake_programs, one, script

# Real kernel output (fib_route_seq_show), including the padding to 127 columns.
KERNEL_TABLE = "\n".join(
    line.ljust(127)
    for line in (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0",
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0",
        "wg0\t0000640A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0",
        "eth1\t000010AC\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0",
        "eth0\t0000C80A\t010010AC\t0002\t0\t0\t0\t0000FFFF\t0\t0\t0",  # not RTF_UP
        "eth0\t0000C90A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0",  # reject
        "eth0\t0000CA0A\t00000000\t0001\t0\t0\t0\t00FF00FF\t0\t0\t0",  # non-contiguous
        "eth0\tZZZZZZZZ\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0",
    )
)
VPC = ipaddress.IPv4Network("10.100.0.0/16")


def test_parse_kernel_route_table() -> None:
    default, lan, wg, eth1 = parse_routes(KERNEL_TABLE)
    assert default.is_default
    assert str(default.gateway) == "192.168.1.1"
    assert default.metric == 100
    assert default.describe() == "default via 192.168.1.1 dev eth0"
    assert str(lan.destination) == "192.168.1.0/24"
    assert lan.gateway is None
    assert str(wg.destination) == "10.100.0.0/16"
    assert wg.iface == "wg0"
    assert str(eth1.destination) == "172.16.0.0/12"


def test_route_for_prefers_the_most_specific_covering_route() -> None:
    routes = parse_routes(KERNEL_TABLE)
    assert route_for(routes, VPC).iface == "wg0"  # type: ignore[union-attr]
    # A /17 inside the VPC does not route all of it: the /16 (or the default) does.
    half = parse_routes("eth0\t0000640A\t010010AC\t0003\t0\t0\t0\t0080FFFF\t0\t0\t0")
    assert route_for(half, VPC) is None
    assert route_for(routes[:1], ipaddress.IPv4Network("8.8.8.0/24")).is_default  # type: ignore[union-attr]
    assert route_for([], VPC) is None


def host_with_routes(tmp_path: Path, routes: list[tuple[str, str]]) -> Path:
    root = tmp_path / "host"
    make_host(root, routes=routes)
    return root


async def test_default_route_via_the_vpn_server_passes(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "172.16.0.1")])
    r = await one(context(config(tmp_path, root), assignment()), "network.route_to_vpc")
    assert r.status is CheckStatus.PASS, r
    assert r.details["route"] == "default via 172.16.0.1 dev eth0"


async def test_default_route_counts_when_no_vpn_server_is_set(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "192.168.1.1")])
    a = assignment(network__vpn_server_ip=None)
    r = await one(context(config(tmp_path, root), a), "network.route_to_vpc")
    assert r.status is CheckStatus.PASS, r


async def test_route_via_another_gateway_warns(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "192.168.1.1")])
    r = await one(context(config(tmp_path, root), assignment()), "network.route_to_vpc")
    assert r.status is CheckStatus.WARN
    assert "routed by the default route via 192.168.1.1" in r.message
    assert "not via the VPN server 172.16.0.1" in r.message
    assert "ip route replace 10.100.0.0/16 via 172.16.0.1" in r.remedy


async def test_specific_route_via_the_vpn_beats_the_default(tmp_path: Path) -> None:
    root = host_with_routes(
        tmp_path, [("0.0.0.0/0", "192.168.1.1"), ("10.100.0.0/16", "172.16.0.1")]
    )
    r = await one(context(config(tmp_path, root), assignment()), "network.route_to_vpc")
    assert r.status is CheckStatus.PASS, r
    assert r.details["route"] == "10.100.0.0/16 via 172.16.0.1 dev eth0"


async def test_no_route_at_all_warns(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("192.168.7.0/24", "192.168.1.1")])
    r = await one(context(config(tmp_path, root), assignment()), "network.route_to_vpc")
    assert r.status is CheckStatus.WARN
    assert "no route covers vpc_cidr 10.100.0.0/16" in r.message


def ip_that_changes_nothing(tmp_path: Path) -> str:
    """An ``ip`` that succeeds without touching the table (a policy-routing surprise)."""
    return script(tmp_path / "bin/ip", 'echo "$*" >> "' + str(tmp_path / "ip-calls") + '"')


LAN_AND_VPN = [("0.0.0.0/0", "192.168.1.1"), ("172.16.0.0/24", "0.0.0.0")]


async def test_manage_routes_adds_the_missing_route(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, LAN_AND_VPN)
    programs = fake_programs(tmp_path, root)
    cfg = config(tmp_path, root, network={"manage_routes": True}, programs=programs)
    r = await one(context(cfg, assignment(), allow_changes=True), "network.route_to_vpc")
    assert r.status is CheckStatus.PASS, r
    assert r.message.startswith("added route 10.100.0.0/16 via 172.16.0.1")
    assert r.details["route_added"] is True
    assert r.details["route"] == "10.100.0.0/16 via 172.16.0.1 dev eth0"
    assert [c["argv"] for c in calls(root, "ip")] == [
        ["route", "replace", "10.100.0.0/16", "via", "172.16.0.1"]
    ]
    again = await one(context(cfg, assignment(), allow_changes=True), "network.route_to_vpc")
    assert again.status is CheckStatus.PASS
    assert "route_added" not in again.details


async def test_manage_routes_reports_the_ip_error(tmp_path: Path) -> None:
    # The VPN server is on no local network: the kernel refuses the next hop.
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "192.168.1.1")])
    programs = fake_programs(tmp_path, root)
    cfg = config(tmp_path, root, network={"manage_routes": True}, programs=programs)
    r = await one(context(cfg, assignment(), allow_changes=True), "network.route_to_vpc")
    assert r.status is CheckStatus.FAIL
    assert "Nexthop has invalid gateway" in r.message
    assert "exited 2" in r.message


async def test_manage_routes_fails_when_the_table_does_not_change(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, LAN_AND_VPN)
    ip = ip_that_changes_nothing(tmp_path)
    cfg = config(tmp_path, root, network={"manage_routes": True}, programs={"ip": ip})
    r = await one(context(cfg, assignment(), allow_changes=True), "network.route_to_vpc")
    assert r.status is CheckStatus.FAIL
    assert "the table still says" in r.message
    assert r.details["route_added"] is False


async def test_manage_routes_changes_nothing_without_permission(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, LAN_AND_VPN)
    programs = fake_programs(tmp_path, root)
    cfg = config(tmp_path, root, network={"manage_routes": True}, programs=programs)
    r = await one(context(cfg, assignment(), allow_changes=False), "network.route_to_vpc")
    assert r.status is CheckStatus.WARN
    assert calls(root, "ip") == []


async def test_cidrs_valid(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "172.16.0.1")])
    r = await one(context(config(tmp_path, root), assignment()), "network.cidrs")
    assert r.status is CheckStatus.PASS, r


async def test_cidr_problems_are_all_reported(tmp_path: Path) -> None:
    root = host_with_routes(tmp_path, [("0.0.0.0/0", "172.16.0.1")])
    a = assignment(
        network__remote_node_cidrs=["10.200.0.0/16", "10.200.128.0/17", "203.0.113.0/24"],
        network__remote_pod_cidrs=[
            "10.0.0.0/7",
            "10.100.4.0/24",
            "172.20.1.0/24",
            "192.168.1.1/24",
            "fd00::/64",
            "nonsense",
        ],
    )
    r = await one(context(config(tmp_path, root), a), "network.cidrs")
    assert r.status is CheckStatus.FAIL
    problems = r.details["problems"]
    assert "10.200.0.0/16 overlaps 10.200.128.0/17" in problems
    assert any("203.0.113.0/24 is not RFC 1918" in p for p in problems)
    assert any("10.0.0.0/7" in p and "larger than /8" in p for p in problems)
    assert "10.100.4.0/24 overlaps the cluster's vpc_cidr 10.100.0.0/16" in problems
    assert "172.20.1.0/24 overlaps the cluster's service_cidr 172.20.0.0/16" in problems
    assert any("did you mean 192.168.1.0/24" in p for p in problems)
    assert any("fd00::/64 is IPv6" in p for p in problems)
    assert any("'nonsense' is not a CIDR" in p for p in problems)
    assert "IPv4 RFC 1918" in r.remedy
