"""Kernel text formats of the made-up host: `/proc/net/route`, `/proc/swaps`, `/proc/1/mountinfo`.

The agent parses these files byte for byte as the kernel writes them, so the fakes and the host
builder produce them here, with the kernel's own quirks (little-endian hex addresses, lines
padded to 127 columns, octal-escaped mount paths), and `ip route show` reads them back here.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

# net/ipv4/fib_trie.c: fib_route_seq_show pads every line to 127 characters.
ROUTE_LINE_WIDTH = 127
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_HOST = 0x4

SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"


@dataclass(frozen=True)
class Route:
    """One IPv4 route as `/proc/net/route` lists it."""

    iface: str
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    metric: int = 0

    @property
    def flags(self) -> int:
        flags = RTF_UP
        if int(self.gateway):
            flags |= RTF_GATEWAY
        if self.network.prefixlen == 32:
            flags |= RTF_HOST
        return flags


def _le_hex(address: ipaddress.IPv4Address | int) -> str:
    # The kernel prints the __be32 as a host-order integer: on x86 and arm64 (little-endian)
    # 172.16.0.1 becomes 010010AC.
    packed = socket.inet_aton(str(ipaddress.IPv4Address(address)))
    return f"{struct.unpack('<I', packed)[0]:08X}"


def _from_le_hex(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(struct.pack("<I", int(text, 16)))


def route_line(route: Route) -> str:
    """Render one route the way the kernel does, padded to the kernel's width."""
    fields = (
        route.iface,
        _le_hex(route.network.network_address),
        _le_hex(route.gateway),
        f"{route.flags:04X}",
        "0",
        "0",
        str(route.metric),
        _le_hex(route.network.netmask),
        "0",
        "0",
        "0",
    )
    return "\t".join(fields).ljust(ROUTE_LINE_WIDTH)


def render_routes(routes: list[Route]) -> str:
    """The whole `/proc/net/route` text for these routes."""
    lines = [ROUTE_HEADER.ljust(ROUTE_LINE_WIDTH)] + [route_line(r) for r in routes]
    return "\n".join(lines) + "\n"


def parse_routes(text: str) -> list[Route]:
    """Read `/proc/net/route` text back into routes (header and blank lines skipped)."""
    routes: list[Route] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination = _from_le_hex(fields[1])
        mask = _from_le_hex(fields[7])
        network = ipaddress.IPv4Network(f"{destination}/{mask}")
        routes.append(Route(fields[0], network, _from_le_hex(fields[2]), int(fields[6])))
    return routes


def describe_route(route: Route) -> str:
    """One line of `ip route show` for this route."""
    dest = "default" if route.network.prefixlen == 0 else str(route.network)
    if int(route.gateway):
        text = f"{dest} via {route.gateway} dev {route.iface}"
    else:
        text = f"{dest} dev {route.iface} proto kernel scope link"
    if route.metric:
        text += f" metric {route.metric}"
    return text


def swap_line(path: str, kind: str, size_kb: int, used_kb: int = 0, priority: int = -2) -> str:
    """One `/proc/swaps` line as mm/swapfile.c:swap_show prints it."""
    # The kernel pads the path to 40 columns, writes "file\t" for files so both types line up,
    # and adds an extra tab after numbers shorter than 8 digits.
    padding = " " * (40 - len(path) if len(path) < 40 else 1)
    type_column = "partition" if kind == "partition" else "file\t"
    size_tab = "\t" if size_kb < 10_000_000 else ""
    used_tab = "\t" if used_kb < 10_000_000 else ""
    return f"{path}{padding}{type_column}\t{size_kb}\t{size_tab}{used_kb}\t{used_tab}{priority}"


def render_swaps(entries: list[tuple[str, str, int]]) -> str:
    """The whole `/proc/swaps` text for (path, "file"|"partition", size in KiB) entries."""
    return "\n".join([SWAPS_HEADER] + [swap_line(p, k, s) for p, k, s in entries]) + "\n"


def escape_mount_path(path: str) -> str:
    """Octal-escape space, tab, newline and backslash as fs/proc_namespace.c does."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


@dataclass(frozen=True)
class Mount:
    """One mount in `/proc/1/mountinfo`: the fields the agent reads, plus plausible rest."""

    mount_point: str
    root: str = "/"
    fstype: str = "ext4"
    source: str = "/dev/sda1"
    options: str = "rw,relatime"
    super_options: str = "rw"
    device: str = "8:1"


def render_mountinfo(mounts: list[Mount]) -> str:
    """Number the mounts, link each to its nearest parent mount, and render mountinfo text."""
    lines: list[str] = []
    ids: dict[str, int] = {}
    for index, mount in enumerate(mounts):
        mount_id = 22 + index
        parents = [p for p in ids if _is_under(mount.mount_point, p) and p != mount.mount_point]
        parent_id = ids[max(parents, key=len)] if parents else 1
        ids[mount.mount_point] = mount_id
        lines.append(
            f"{mount_id} {parent_id} {mount.device} {escape_mount_path(mount.root)} "
            f"{escape_mount_path(mount.mount_point)} {mount.options} shared:{index + 1} - "
            f"{mount.fstype} {mount.source} {mount.super_options}"
        )
    return "\n".join(lines) + "\n"


def _is_under(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent.rstrip("/") + "/")
