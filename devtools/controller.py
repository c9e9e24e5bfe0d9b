"""A small controller speaking docs/api/openapi.yaml, for tests and the demo.

`Controller` is a stdlib `ThreadingHTTPServer` on 127.0.0.1 in a daemon thread: hosts
register with a registration token, poll their assignment with the host token they got
back, and upload diagnostics bundles. Test knobs (token rotation, injected failures with
`Retry-After`, hostile raw replies, UID conflicts, revoked host tokens, slow answers,
kubelet healthz) are plain attributes or methods, safe to change while the server runs,
and every request is recorded so a test can assert on what the agent actually sent. `ServerTLS` holds a trustme CA and
the server certificate it issued, optionally demanding client certificates (mTLS); the
Mosquitto fixture reuses it. This is a fake for loopback tests, never a production server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import trustme

__all__ = ["Controller", "RecordedRequest", "ServerTLS"]

_UID_RE = re.compile(r"[a-z0-9._-]{1,128}")
_BUNDLE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ASSIGNMENT_RE = re.compile(r"/v1/hosts/([^/]+)/assignment")
_DIAGNOSTICS_RE = re.compile(r"/v1/hosts/([^/]+)/diagnostics/([^/]+)")


def _new_ca() -> trustme.CA:
    # Imported here: only TLS tests need trustme, and the demo runs without the test tools.
    import trustme

    return trustme.CA()


@dataclass
class ServerTLS:
    """A trustme CA, the server certificate it issued, and whether clients must show one.

    The server certificate names 127.0.0.1 and localhost, so clients verify it by IP as the
    agent does. Client certificates come from the same CA.
    """

    require_client_cert: bool = False
    ca: trustme.CA = field(default_factory=_new_ca)
    hostnames: tuple[str, ...] = ("127.0.0.1", "localhost")

    def __post_init__(self) -> None:
        self.server_cert = self.ca.issue_cert(*self.hostnames)

    def server_context(self) -> ssl.SSLContext:
        """The server side: our certificate, and the CA to check clients against."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_cert.configure_cert(context)
        if self.require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(
        self, *, client_cert: bool = True, name: str = "edge-test"
    ) -> ssl.SSLContext:
        """A client context trusting the CA; with a client certificate for `name` by default."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if client_cert:
            self.ca.issue_cert(name).configure_cert(context)
        return context

    def write_ca(self, path: str | os.PathLike[str]) -> Path:
        """Write the CA certificate PEM (the agent's `*.ca_file`)."""
        target = Path(path)
        self.ca.cert_pem.write_to_path(str(target))
        return target

    def write_client_cert(
        self, directory: str | os.PathLike[str], name: str = "edge-test"
    ) -> tuple[Path, Path]:
        """Issue a client certificate for `name`; write `<name>.pem` and `<name>.key`."""
        cert = self.ca.issue_cert(name)
        cert_path = Path(directory) / f"{name}.pem"
        key_path = Path(directory) / f"{name}.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return cert_path, key_path

    def write_server_files(self, directory: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
        """Write `ca.pem`, `server.pem`, `server.key` into `directory` (for Mosquitto)."""
        base = Path(directory)
        ca_path = self.write_ca(base / "ca.pem")
        cert_path = base / "server.pem"
        key_path = base / "server.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in self.server_cert.cert_chain_pems))
        self.server_cert.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return ca_path, cert_path, key_path


class RecordedRequest(NamedTuple):
    """One request as the server saw it; `headers` has lowercased names."""

    ts: float
    method: str
    path: str
    status: int
    headers: dict[str, str]


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: float | None
    path_prefix: str
    body: bytes | None = None  # None: the usual small JSON error
    headers: dict[str, str] = field(default_factory=dict)


def _validate_registration(body: Any) -> str | None:
    """Return what is wrong with a registration body, or None when it is acceptable."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    uid = body.get("uid")
    if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
        return "uid: must be 1-128 of [a-z0-9._-]"
    for key in ("hostname", "mode", "agent_version", "arch"):
        if not isinstance(body.get(key), str) or not body[key]:
            return f"{key}: must be a non-empty string"
    if body["mode"] not in ("agent", "appliance"):
        return "mode: must be agent or appliance"
    os_info = body.get("os")
    if not isinstance(os_info, dict) or not isinstance(os_info.get("id"), str):
        return "os: must be an object with a string id"
    if any(value is not None and not isinstance(value, str) for value in os_info.values()):
        return "os: values must be strings or null"
    addresses = body.get("addresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        return "addresses: must be a list of strings"
    labels = body.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        return "labels: must be an object of strings"
    return None


class _Server(ThreadingHTTPServer):
    """The HTTP server, with TLS done per connection in the worker thread.

    Wrapping the listening socket would run every handshake in the accept loop, so one
    stalled or certificate-less client would hold up everybody else.
    """

    daemon_threads = True
    # ThreadingMixIn joins every handler thread on close by default; a handler sleeping in
    # `delay_s`, or parked on an idle keep-alive connection, would then hang `stop()`.
    block_on_close = False

    def __init__(self, controller: Controller, ssl_context: ssl.SSLContext | None) -> None:
        self.controller = controller
        self.ssl_context = ssl_context
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        if self.ssl_context is not None:
            request.settimeout(10)
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                # A refused client (no certificate, wrong CA) is an expected test outcome.
                self.controller._note_tls_failure()
                return
        with self.sockets_lock:
            self.open_sockets.add(conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(conn)
            if conn is not request:
                conn.close()

    def close_connections(self) -> None:
        """End every open connection, so keep-alive clients see the server gone."""
        with self.sockets_lock:
            conns = list(self.open_sockets)
        for conn in conns:
            # Already closed by the client: nothing left to end.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer (timeouts under `delay_s`) are expected; stay quiet.
        # Anything else is a bug in this fake and must show in the test output.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Idle keep-alive connections end on their own rather than pinning a thread forever.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded in `Controller.requests`; stderr noise helps nobody.
        pass

    def do_GET(self) -> None:
        self.server.controller._handle(self)

    def do_POST(self) -> None:
        self.server.controller._handle(self)

    def do_PUT(self) -> None:
        self.server.controller._handle(self)

    def do_DELETE(self) -> None:
        self.server.controller._handle(self)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end at an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # 204 and 304 carry no body, and by RFC 9110 no Content-Length either.
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status not in (204, 304):
            self.wfile.write(body)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


class Controller:
    """The fake controller. See the module docstring; all knobs are safe to set while running."""

    def __init__(
        self,
        *,
        tls: ServerTLS | None = None,
        registration_token: str | None = None,
        assignment: dict[str, Any] | None = None,
    ) -> None:
        self.tls = tls
        # A random default keeps a test from passing by accident with a hard-coded token.
        self.registration_token = registration_token or secrets.token_urlsafe(16)
        self.assignment = assignment
        self.conflict_uids: set[str] = set()
        self.delay_s = 0.0
        self.healthz_status = 200
        self.requests: list[RecordedRequest] = []
        self.registrations: list[dict[str, Any]] = []
        self.bundles: dict[str, bytes] = {}
        self.tls_failures = 0
        self._assignments: dict[str, dict[str, Any] | None] = {}
        self._host_tokens: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._failures: list[_Failure] = []
        self._cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Controller:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        context = self.tls.server_context() if self.tls else None
        self._server = _Server(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="devtools-controller",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and end open connections (keep-alive ones too)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("controller is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, `http://` or `https://127.0.0.1:PORT`, without a trailing slash."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def healthz_url(self) -> str:
        """Where the demo points `health.kubelet_healthz_url`."""
        return f"{self.url}/healthz"

    # -- knobs -----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = None,
        path_prefix: str = "/v1/hosts/register",
    ) -> None:
        """The next `n` requests whose path starts with `path_prefix` get `status`."""
        with self._cond:
            self._failures.append(_Failure(n, status, retry_after, path_prefix))

    def serve_raw_next(
        self,
        n: int,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        path_prefix: str = "/v1/hosts/",
    ) -> None:
        """The next `n` requests under `path_prefix` get exactly `body` and `headers`.

        For hostile replies: deeply nested JSON, a `Content-Encoding` the body was compressed
        with (or claims), whatever a broken or malicious controller might send. The body is
        sent as given, with a correct `Content-Length`.
        """
        with self._cond:
            self._failures.append(_Failure(n, status, None, path_prefix, body, headers or {}))

    def set_assignment(self, uid: str, assignment: dict[str, Any] | None) -> None:
        """Give one host its own assignment, overriding `assignment` (None means none yet)."""
        with self._cond:
            self._assignments[uid] = assignment

    def assignment_for(self, uid: str) -> dict[str, Any] | None:
        with self._cond:
            return self._assignments.get(uid, self.assignment)

    def revoke_host_token(self, uid: str) -> None:
        """Refuse `uid`'s host token from now on; its next registration gets a new one."""
        with self._cond:
            self._revoked.add(uid)

    def host_token(self, uid: str) -> str | None:
        """The token currently issued to `uid`, if it has registered."""
        with self._cond:
            return self._host_tokens.get(uid)

    # -- records ---------------------------------------------------------------------------

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """How many recorded requests match `method` (any when None) and `path_prefix`."""
        with self._cond:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            )

    def wait_count(
        self, method: str | None, path_prefix: str, n: int = 1, timeout: float = 5.0
    ) -> bool:
        """Wait until `count(method, path_prefix) >= n`; False on timeout."""
        return self.wait_for(lambda: self.count(method, path_prefix) >= n, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Re-check `predicate` after every request (and TLS refusal) until true or timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def _note_tls_failure(self) -> None:
        with self._cond:
            self.tls_failures += 1
            self._cond.notify_all()

    # -- request handling ------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        headers = {name.lower(): value for name, value in handler.headers.items()}
        # Recorded as 0 when the client left (or sent broken framing) before any answer.
        status = 0
        try:
            body = handler.read_body()
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            status, payload, extra = self._route(handler.command, path, headers, body)
            handler.answer(status, payload, extra)
        except (ConnectionError, TimeoutError, ssl.SSLError, ValueError):
            # The client left (often on purpose, under `delay_s`) or sent garbage framing.
            handler.close_connection = True
        finally:
            with self._cond:
                self.requests.append(
                    RecordedRequest(time.time(), handler.command, path, status, headers)
                )
                self._cond.notify_all()

    def _take_failure(self, path: str) -> _Failure | None:
        with self._cond:
            for failure in self._failures:
                if failure.remaining > 0 and path.startswith(failure.path_prefix):
                    failure.remaining -= 1
                    return failure
            self._failures = [f for f in self._failures if f.remaining > 0]
        return None

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        failure = self._take_failure(path)
        if failure is not None:
            if failure.body is not None:
                return failure.status, failure.body, dict(failure.headers)
            extra = {"Content-Type": "application/json"}
            if failure.retry_after is not None:
                # Integral seconds print as "2", the form every client parses.
                value = failure.retry_after
                extra["Retry-After"] = str(int(value)) if value == int(value) else str(value)
            return failure.status, _json({"error": "injected failure"}), extra
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
        if path == "/healthz" and method == "GET":
            text = b"ok" if self.healthz_status == 200 else b"unhealthy"
            return self.healthz_status, text, {"Content-Type": "text/plain"}
        if path == "/v1/hosts/register":
            if method != "POST":
                return 405, b"", {"Allow": "POST"}
            return self._register(token, body)
        if match := _ASSIGNMENT_RE.fullmatch(path):
            if method != "GET":
                return 405, b"", {"Allow": "GET"}
            return self._get_assignment(match.group(1), token, headers.get("if-none-match"))
        if match := _DIAGNOSTICS_RE.fullmatch(path):
            if method != "PUT":
                return 405, b"", {"Allow": "PUT"}
            return self._put_bundle(match.group(1), match.group(2), token, headers, body)
        return 404, _json({"error": "not found"}), {"Content-Type": "application/json"}

    def _register(self, token: str | None, raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        ctype = {"Content-Type": "application/json"}
        if token is None or not secrets.compare_digest(token, self.registration_token):
            return 401, _json({"error": "registration token refused"}), ctype
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, _json({"error": "body is not JSON"}), ctype
        problem = _validate_registration(body)
        if problem is not None:
            return 400, _json({"error": problem}), ctype
        uid = body["uid"]
        if uid in self.conflict_uids:
            return 409, _json({"error": f"uid {uid} is held by another host"}), ctype
        with self._cond:
            self.registrations.append(body)
            host_token = self._host_tokens.get(uid)
            if host_token is None or uid in self._revoked:
                host_token = secrets.token_urlsafe(24)
                self._host_tokens[uid] = host_token
                self._revoked.discard(uid)
            assignment = self._assignments.get(uid, self.assignment)
            answer = {"uid": uid, "host_token": host_token, "assignment": assignment}
        return 200, _json(answer), ctype

    def _authorized(self, uid: str, token: str | None) -> bool:
        with self._cond:
            expected = self._host_tokens.get(uid)
            if expected is None or token is None or uid in self._revoked:
                return False
            return secrets.compare_digest(token, expected)

    def _get_assignment(
        self, uid: str, token: str | None, if_none_match: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        if not self._authorized(uid, token):
            return 401, _json({"error": "host token refused"}), {"Content-Type": "application/json"}
        assignment = self.assignment_for(uid)
        if assignment is None:
            return 204, b"", {}
        etag = f'"{assignment.get("revision")}"'
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            return 304, b"", {"ETag": etag}
        return 200, _json(assignment), {"Content-Type": "application/json", "ETag": etag}

    def _put_bundle(
        self, uid: str, bundle_id: str, token: str | None, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        ctype = {"Content-Type": "application/json"}
        if not self._authorized(uid, token):
            return 401, _json({"error": "host token refused"}), ctype
        if not _BUNDLE_RE.fullmatch(bundle_id):
            return 400, _json({"error": "bad bundle id"}), ctype
        if headers.get("content-type", "").split(";")[0].strip() != "application/gzip":
            return 415, _json({"error": "Content-Type must be application/gzip"}), ctype
        with self._cond:
            self.bundles[bundle_id] = body
        return 201, _json({"bundle_id": bundle_id, "bytes": len(body)}), ctype


def _etag_matches(header: str, etag: str) -> bool:
    """Whether an If-None-Match header matches `etag`; `*` matches anything we have."""
    tags = [part.strip() for part in header.split(",")]
    # If-None-Match asks for the weak comparison, so W/"3" matches "3".
    return "*" in tags or etag in {tag.removeprefix("W/") for tag in tags}
