"""Host metrics for the health message (docs/api/asyncapi.yaml): the only module that imports psutil.

A sample costs about 0.3 ms, so it runs inline on the event loop. CPU percent is computed
from our own ``cpu_times()`` deltas: psutil's ``cpu_percent(None)`` keeps its state per thread
(psutil 7), which makes it noisy from a thread pool. Disk usage is read for the paths that
matter to a node (``/`` and ``/var/lib`` under the host root); services and kubelet healthz
come from the caller, who owns the programs and the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from agent import _compat


class HealthSampler:
    def __init__(self, root: Path, disk_paths: Sequence[str] = ("/", "/var/lib")) -> None:
        self.root = root
        self.disk_paths = tuple(disk_paths)
        self._boot = psutil.boot_time()
        self._last_cpu = psutil.cpu_times()

    def _cpu_percent(self) -> float:
        now = psutil.cpu_times()
        prev, self._last_cpu = self._last_cpu, now
        busy = (sum(now) - now.idle - getattr(now, "iowait", 0.0)) - (
            sum(prev) - prev.idle - getattr(prev, "iowait", 0.0)
        )
        total = sum(now) - sum(prev)
        return round(100.0 * busy / total, 1) if total > 0 else 0.0

    def sample(self) -> dict[str, Any]:
        mem = psutil.virtual_memory()
        net = psutil.net_io_counters()
        disks = []
        for p in self.disk_paths:
            target = self.root / p.lstrip("/")
            with contextlib.suppress(OSError):
                u = psutil.disk_usage(str(target))
                disks.append({"path": p, "total": u.total, "free": u.free, "percent": u.percent})
        return {
            "uptime_s": int(time.time() - self._boot),
            "cpu_percent": self._cpu_percent(),
            "load": [round(x, 2) for x in psutil.getloadavg()],
            "memory": {"total": mem.total, "available": mem.available, "percent": mem.percent},
            "disks": disks,
            "net": {
                "bytes_sent": net.bytes_sent if net else 0,
                "bytes_recv": net.bytes_recv if net else 0,
            },
        }


def host_addresses() -> tuple[str, ...]:
    """The host's IPv4 addresses, loopback excluded (the agent shares the host's network)."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                out.append(a.address)
    return tuple(sorted(set(out)))


def process_rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def kubelet_healthz(url: str, timeout: float = 2.0) -> str:
    """``ok``, ``unhealthy`` or ``unreachable``: a bare HTTP GET, to keep httpx in one module."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    ctx: ssl.SSLContext | None = None
    if tls:
        # The kubelet serves healthz on loopback with its own self-signed certificate.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        async with _compat.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            try:
                path = parts.path or "/"
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError):
        return "unreachable"
    fields = head.split()
    return "ok" if len(fields) >= 2 and fields[1] == b"200" else "unhealthy"
