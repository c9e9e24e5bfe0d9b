"""Fake `ip`: `route` verbs over `<root>/proc/net/route`, in the kernel's own text format.

`route replace CIDR via GW [dev IF] [metric N]` swaps in a route for CIDR (appending it when
new), `route add` refuses an existing one ("RTNETLINK answers: File exists", exit 2), `route
del CIDR` removes it, `route show` prints iproute2-style lines (`-j`: JSON), and `route get
ADDR` names the longest-prefix match. As the kernel does, a CIDR with host bits set is
refused, and so is a gateway outside every link route when any exist ("Nexthop has invalid
gateway"). Other invocations succeed silently.
"""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout, procfs


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "ip", argv)
    as_json = any(a in ("-j", "-json", "--json") for a in argv)
    words = [a for a in argv if a not in ("-4", "-j", "-json", "--json")]
    if not words or words[0] not in ("route", "r", "ro"):
        return 0
    table = layout.under(root, "proc/net/route")
    routes = procfs.parse_routes(table.read_text()) if table.exists() else []
    verb = words[1] if len(words) > 1 else "show"
    if verb in ("show", "list", "ls"):
        _show(routes, as_json=as_json)
        return 0
    if verb not in ("replace", "add", "del", "delete", "get") or len(words) < 3:
        print(f'Command "{verb}" is unknown, try "ip route help".', file=sys.stderr)
        return 255
    if verb == "get":
        return _get(routes, words[2])
    try:
        network = IPv4Network("0.0.0.0/0" if words[2] == "default" else words[2])
    except ValueError:
        print("Error: Invalid prefix for given prefix length.", file=sys.stderr)
        return 2
    options = dict(zip(words[3::2], words[4::2], strict=False))
    existing = [r for r in routes if r.network == network]
    others = [r for r in routes if r.network != network]
    if verb in ("del", "delete"):
        if not existing:
            print("RTNETLINK answers: No such process", file=sys.stderr)
            return 2
        table.write_text(procfs.render_routes(others))
        return 0
    if verb == "add" and existing:
        print("RTNETLINK answers: File exists", file=sys.stderr)
        return 2
    gateway = IPv4Address(options.get("via", "0.0.0.0"))
    links = [r for r in routes if not int(r.gateway)]
    if int(gateway) and links and not any(gateway in r.network for r in links):
        print("Error: Nexthop has invalid gateway.", file=sys.stderr)
        return 2
    iface = options.get("dev") or next((r.iface for r in links if gateway in r.network), "eth0")
    route = procfs.Route(iface, network, gateway, int(options.get("metric", "0")))
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(procfs.render_routes([*others, route]))
    return 0


def _show(routes: list[procfs.Route], *, as_json: bool) -> None:
    if not as_json:
        for route in routes:
            print(procfs.describe_route(route))
        return
    entries = []
    for route in routes:
        entry: dict[str, object] = {
            "dst": "default" if route.network.prefixlen == 0 else str(route.network)
        }
        if int(route.gateway):
            entry["gateway"] = str(route.gateway)
        entry["dev"] = route.iface
        if not int(route.gateway):
            entry |= {"protocol": "kernel", "scope": "link"}
        if route.metric:
            entry["metric"] = route.metric
        entry["flags"] = []
        entries.append(entry)
    print(json.dumps(entries))


def _get(routes: list[procfs.Route], target: str) -> int:
    try:
        address = IPv4Address(target)
    except ValueError:
        print(f'Error: any valid prefix is expected rather than "{target}".', file=sys.stderr)
        return 1
    matches = [r for r in routes if address in r.network]
    if not matches:
        print("RTNETLINK answers: Network is unreachable", file=sys.stderr)
        return 2
    best = max(matches, key=lambda r: (r.network.prefixlen, -r.metric))
    via = f" via {best.gateway}" if int(best.gateway) else ""
    print(f"{address}{via} dev {best.iface} uid 0\n    cache ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
