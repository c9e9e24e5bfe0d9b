"""``network.node_ip`` picks the address the way nodeadm will, then judges that one.

Encodes aws/eks-hybrid v1.0.20: internal/network/utils.go (GetNodeIP: --node-ip flag, then
for IAM Roles Anywhere the node name's addresses that belong to the host, then
ResolveBindAddress, i.e. the default-route interface's address; ValidateIPInRemoteNodeNetwork)
and internal/network/interface.go (the node name is looked up only for IAM Roles Anywhere).
"""

from __future__ import annotations

from pathlib import Path

from agent.core.checks import CheckStatus
from devtools.fakehost import make_host
from tests.checks.helpers import assignment, config, context, ira_assignment, one

# Two NICs: eth0 (default route, 192.168.1.0/24) and eth1 inside the remote node network.
TWO_NICS = [
    ("0.0.0.0/0", "192.168.1.1", "eth0"),
    ("192.168.1.0/24", "0.0.0.0", "eth0"),
    ("10.200.0.0/16", "0.0.0.0", "eth1"),
]
ADDRESSES = ("192.168.1.7", "10.200.3.4")


def two_nic_host(tmp_path: Path, routes: list[tuple[str, ...]] = TWO_NICS) -> Path:
    root = tmp_path / "host"
    make_host(root, routes=routes)
    return root


async def test_two_nic_host_whose_default_route_is_outside_the_node_cidrs_fails(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, two_nic_host(tmp_path))
    r = await one(context(cfg, assignment(), addresses=ADDRESSES), "network.node_ip")
    # Today's "any address in range passes" would pass here: eth1 has 10.200.3.4.
    assert r.status is CheckStatus.FAIL, r
    assert r.message == (
        "node IP 192.168.1.7 (the address of eth0, which carries the default route) is not in "
        "any remote node CIDR (10.200.0.0/16): nodeadm init's node-ip-validation will fail"
    )
    assert r.details["route"] == "default via 192.168.1.1 dev eth0"
    assert "set network.node_ip" in r.remedy and "--node-ip" in r.remedy


async def test_default_route_through_the_inside_nic_passes(tmp_path: Path) -> None:
    routes = [
        ("0.0.0.0/0", "10.200.0.1", "eth1"),
        ("10.200.0.0/16", "0.0.0.0", "eth1"),
        ("192.168.1.0/24", "0.0.0.0", "eth0"),
    ]
    cfg = config(tmp_path, two_nic_host(tmp_path, routes))
    r = await one(context(cfg, assignment(), addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.PASS, r
    assert r.message == (
        "node IP 10.200.3.4 (the address of eth1, which carries the default route) is in "
        "10.200.0.0/16"
    )


async def test_an_explicit_node_ip_decides_and_must_be_on_the_host(tmp_path: Path) -> None:
    cfg = config(tmp_path, two_nic_host(tmp_path))
    a = assignment(network__node_ip="10.200.3.4")
    r = await one(context(cfg, a, addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.PASS and r.details["source"] == "assignment", r
    r = await one(context(cfg, a, addresses=("10.200.9.9",)), "network.node_ip")
    assert r.status is CheckStatus.WARN and "kubelet will refuse it" in r.message
    outside = assignment(network__node_ip="203.0.113.5")
    r = await one(context(cfg, outside, addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.FAIL
    assert r.message.startswith("node IP 203.0.113.5 (network.node_ip) is not in any remote")


async def test_a_node_ip_kubelet_flag_counts_as_explicit(tmp_path: Path) -> None:
    cfg = config(tmp_path, two_nic_host(tmp_path))
    a = assignment(kubelet={"node_labels": {}, "taints": [], "flags": ["--node-ip=10.200.3.4"]})
    r = await one(context(cfg, a, addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.PASS, r


async def test_iam_ra_takes_what_the_node_name_resolves_to_first(tmp_path: Path) -> None:
    root = two_nic_host(tmp_path)
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n127.0.1.1 store-42-node-1\n10.200.3.4 store-42-node-1 # eth1\n"
    )
    cfg = config(tmp_path, root)
    r = await one(context(cfg, ira_assignment(), addresses=ADDRESSES), "network.node_ip")
    # 127.0.1.1 is loopback (kubelet refuses it); 10.200.3.4 is on the host and inside.
    assert r.status is CheckStatus.PASS, r
    assert r.details["source"] == "node_name"
    assert "what the node name store-42-node-1 resolves to" in r.message
    # SSM never resolves its name (the managed instance id): the default route decides.
    r = await one(context(cfg, assignment(), addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.FAIL


async def test_no_default_route_fails_and_an_unknown_interface_address_warns(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, two_nic_host(tmp_path, [("10.200.0.0/16", "0.0.0.0", "eth1")]))
    r = await one(context(cfg, assignment(), addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.FAIL and r.message.startswith("no default route")
    cfg = config(tmp_path, two_nic_host(tmp_path, [("0.0.0.0/0", "172.16.0.1", "wg0")]))
    r = await one(context(cfg, assignment(), addresses=ADDRESSES), "network.node_ip")
    assert r.status is CheckStatus.WARN, r
    assert "no known address of this host is on wg0" in r.message
