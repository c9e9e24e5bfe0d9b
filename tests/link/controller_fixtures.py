"""Test doubles for the controller client: a recording sleep and a canned server.

`FakeSleep` records each backoff delay and returns at once, so retry policy is asserted
without waiting; a hook runs on each call (an operator replacing the token file between two
tries) and `stop_after` ends an endless retry loop by raising `StopRetrying`.
`CannedServer` is a tiny HTTP server whose answers are whatever the test sets, for replies
the contract-speaking fake controller never gives (a non-object assignment, an HTTP-date
`Retry-After`, an error body echoing the Authorization header).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.core.config import ControllerConfig

UID = "edge-test-1"


def registration_body(uid: str = UID) -> dict[str, Any]:
    """A registration body as docs/api/openapi.yaml shows it."""
    return {
        "uid": uid,
        "hostname": "store-12",
        "mode": "agent",
        "agent_version": "0.1.0",
        "os": {"id": "ubuntu", "version_id": "22.04", "pretty_name": "Ubuntu 22.04.4 LTS"},
        "arch": "x86_64",
        "addresses": ["10.200.1.5"],
        "labels": {"site": "store-12"},
    }


def controller_config(tmp_path: Path, url: str, token: str = "", **kw: Any) -> ControllerConfig:
    """A config whose registration token file holds `token` (written as an operator would)."""
    token_file = tmp_path / "registration-token"
    token_file.write_text(token)
    return ControllerConfig(url=url, registration_token_file=token_file, **kw)


class StopRetrying(Exception):
    """Raised by `FakeSleep` to end a retry loop that would otherwise run forever."""


@dataclass
class FakeSleep:
    delays: list[float] = field(default_factory=list)
    hook: Callable[[int], None] | None = None
    stop_after: int | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook is not None:
            self.hook(len(self.delays))
        if self.stop_after is not None and len(self.delays) >= self.stop_after:
            raise StopRetrying


@dataclass
class Canned:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Echo the request's Authorization header into the body (a careless proxy does this).
    echo_auth: bool = False


class CannedServer:
    """Answers every request with `self.reply`; records (method, path, headers)."""

    def __init__(self) -> None:
        self.reply = Canned(200)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.seen.append((self.command, self.path, headers))
                r = outer.reply
                body = r.body + (headers.get("authorization", "").encode() if r.echo_auth else b"")
                self.send_response(r.status)
                for k, v in r.headers.items():
                    self.send_header(k, v)
                if r.status not in (204, 304):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if r.status not in (204, 304):
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def do_PUT(self) -> None:
                self._any()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CannedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
