"""The controller client's TLS bookkeeping, apart from HTTP: which alert means what, when.

`probe_client_cert` asks the server on a quiet connection whether it refuses our client
certificate (under TLS 1.3 the refusal often arrives only as a reset of the real request);
`find_ssl_error` digs the ssl error out of an httpx error's cause chain. No httpx here:
`agent.link.controller` calls these.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

from agent import _compat

__all__ = ["find_ssl_error", "probe_client_cert"]


async def probe_client_cert(
    url: str, timeout_s: float, context: ssl.SSLContext
) -> ssl.SSLError | None:
    """Ask on a quiet connection whether the server refuses our client certificate.

    A TLS 1.3 server judges the client certificate after the client has finished its
    handshake and sent the request; closing on unread data resets the connection, and
    the alert saying why is often lost (60% of the time here). On a connection that
    sends nothing the alert arrives intact, while a server that accepts us just waits.
    """
    host, port = _host_port(url)
    try:
        async with _compat.timeout(min(2.0, timeout_s)):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                await reader.read(1)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except ssl.SSLError as e:
        return e
    except OSError:  # TimeoutError too: the server kept the connection, so not refused
        return None
    return None


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind an httpx/httpcore error, following the cause chain."""
    for _ in range(10):  # chains are short; the bound guards against a cycle
        if exc is None or isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
