"""TLS client contexts for the agent's two links (controller and broker), built one way.

Verification is always on: the system CAs, or the configured CA file alone when one is given;
a client certificate chain is loaded for mTLS when configured. Errors are the ssl module's
(``OSError``/``ssl.SSLError``/``ValueError``); each link translates them into its own codes.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path


def client_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


async def broker_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """`client_context` off the event loop: load_cert_chain reads files (~25 ms)."""
    return await asyncio.to_thread(client_context, ca_file, cert_file, key_file)
