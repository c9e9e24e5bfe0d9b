"""The host's IPv4 routing table: read from ``/proc/net/route``, changed with ``ip route``.

``/proc/net/route`` (under the host root) is the kernel's main table in a fixed text format:
addresses and masks are 32-bit hex in host byte order (little-endian on every platform we
support), flags are hex ``RTF_*`` bits. Reading it needs no netlink and works from a
container that sees the host's ``/proc``. Policy-routing tables other than main are not
shown there; the agent judges the main table, which is where static VPN routes live.
Changing a route goes through the configured ``ip`` program (the host-root rule), never a shell.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from agent.host.hostroot import HostRoot
from agent.host.proc import ProcessError, ProcessResult, run

PROC_ROUTE = "/proc/net/route"
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_HOST = 0x0004
RTF_REJECT = 0x0200


class RouteError(Exception):
    """``ip route`` could not change the table; carries the program's output tail."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(f"{message}: {tail}" if tail else message)
        self.tail = tail


@dataclass(frozen=True)
class Route:
    iface: str
    destination: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    flags: int
    metric: int

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def describe(self) -> str:
        """``10.100.0.0/16 via 172.16.0.1 dev eth0``, as ``ip route`` would print it."""
        dest = "default" if self.is_default else str(self.destination)
        via = f" via {self.gateway}" if self.gateway is not None else ""
        return f"{dest}{via} dev {self.iface}"


def _hex_ip(field: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(field), "little"))


def _prefixlen(mask: int) -> int:
    # Computed by hand: ipaddress reads a dotted mask such as 0.255.255.255 as a host mask.
    prefix = bin(mask).count("1")
    if mask != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ValueError(f"non-contiguous mask {mask:#010x}")
    return prefix


def parse_route_line(line: str) -> Route | None:
    """One table line, or None for the header, a malformed line, or a down/reject route."""
    parts = line.split()
    if len(parts) < 8 or parts[0] == "Iface":
        return None
    try:
        dest, gateway, mask = _hex_ip(parts[1]), _hex_ip(parts[2]), _hex_ip(parts[7])
        flags, metric = int(parts[3], 16), int(parts[6])
        network = ipaddress.IPv4Network((dest, _prefixlen(int(mask))))
    except ValueError:
        return None  # non-hex fields or a non-contiguous mask: not a route we can judge
    if not flags & RTF_UP or flags & RTF_REJECT:
        return None
    has_gateway = bool(flags & RTF_GATEWAY) and int(gateway) != 0
    return Route(parts[0], network, gateway if has_gateway else None, flags, metric)


def parse_routes(text: str) -> list[Route]:
    """Every usable route in a ``/proc/net/route`` text, in table order."""
    return [r for r in (parse_route_line(line) for line in text.splitlines()) if r is not None]


def read_routes(host: HostRoot) -> list[Route] | None:
    """The host's main routing table; None when ``/proc/net/route`` cannot be read."""
    text = host.read_text(PROC_ROUTE)
    return None if text is None else parse_routes(text)


def route_for(routes: Iterable[Route], network: ipaddress.IPv4Network) -> Route | None:
    """The route the kernel would use for all of ``network``: most specific, then lowest metric.

    A route covers ``network`` when its destination contains it (a default route covers
    everything). A more specific route for only part of ``network`` does not count: traffic
    to the rest would still leave by the covering one.
    """
    covering = [r for r in routes if network.subnet_of(r.destination)]
    if not covering:
        return None
    return min(covering, key=lambda r: (-r.destination.prefixlen, r.metric))


async def replace_route(
    ip_program: str, network: str, via: str, *, timeout: float = 15.0
) -> ProcessResult:
    """``ip route replace <network> via <via>``; `RouteError` when it cannot be done."""
    argv = [ip_program, "route", "replace", network, "via", via]
    try:
        result = await run(argv, timeout=timeout)
    except ProcessError as e:
        raise RouteError(f"{' '.join(argv)} failed", e.reason) from e
    if not result.ok:
        raise RouteError(f"{' '.join(argv)} exited {result.returncode}", result.tail())
    return result
