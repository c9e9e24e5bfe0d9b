"""The controller client: register, poll the assignment, upload diagnostics.

This is the only module that imports httpx; its errors are translated here, once, into
`ControllerError` carrying a status ``last_error`` code. Registration retries forever: 429,
5xx and transport failures with capped exponential backoff and full jitter (honouring
``Retry-After``); refusals (400, 401/403, 409, a rejected client certificate) slowly, near
the cap, since only an operator can fix them. The registration token file is re-read on
every try and the TLS files are reloaded when they change, so rotated secrets need no
restart. The host token is kept in ``state_dir/host_token`` (0600). Secrets
never reach a log line or an error message: every message leaving here is scrubbed of the
registration token and the host token. What a status means, how long to wait and what of
a reply may be shown are decided, purely, in `agent.core.controller_policy`; what a reply
body may grow to in `replybody`; TLS alerts and rotations in `controller_tls`; what the
client returns and raises is in `controller_types`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from agent import __version__, _compat
from agent.core.backoff import Backoff
from agent.core.config import ControllerConfig
from agent.core.controller_policy import (
    accepted,
    error_excerpt,
    json_object,
    parse_retry_after,
    refuses_client_cert,
    slow_delay,
    status_verdict,
)
from agent.core.redact import scrub_text
from agent.link.controller_tls import find_ssl_error, probe_client_cert
from agent.link.controller_types import (
    AssignmentFetch,
    ControllerError,
    Reauth,
    Registration,
)
from agent.link.replybody import BadEncoding, BoundedBody, ReplyTooLarge
from agent.link.tls import client_context
from agent.logs import Log
from agent.state.atomic import write_bytes
from agent.state.filewatch import Stamp
from agent.state.filewatch import stamp as file_stamp

__all__ = ["AssignmentFetch", "ControllerClient", "ControllerError", "Reauth", "Registration"]

# The old private name of `parse_retry_after`: tests/link/test_controller_client.py imports it.
_retry_after = parse_retry_after

REGISTER_PATH = "/v1/hosts/register"
HOST_TOKEN_FILE = "host_token"
MAX_RESPONSE_BYTES = 1024 * 1024
UPLOAD_ATTEMPTS = 3
# The server's refusal of our client certificate arrives as a TLS alert (see
# `refuses_client_cert`) or, as often, is lost in a connection reset: then
# `_probe_client_cert` asks again.
_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, ConnectionError)


class _Reply(NamedTuple):
    status_code: int
    headers: httpx.Headers
    content: bytes


class ControllerClient:
    """Talks to one controller on behalf of one host; see the module docstring.

    `on_error(code, message)` is called for every failed exchange (each registration try,
    poll and upload attempt); `on_recovered()` after every successful registration and after
    the first successful poll or upload following a failure, so the caller can clear a
    controller ``last_error``.
    """

    def __init__(
        self,
        cfg: ControllerConfig,
        state_dir: Path,
        *,
        log: Log,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_error: Callable[[str, str], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        uid: str | None = None,
    ) -> None:
        self._cfg = cfg
        self._token_path = state_dir / HOST_TOKEN_FILE
        self._log = log
        self._rng = rng
        self._sleep = sleep
        self._on_error = on_error
        self._on_recovered = on_recovered
        self._uid = uid
        self._backoff = Backoff(base=1.0, cap=cfg.max_backoff_s, rng=rng)
        self._failing = False
        self._secrets: set[str] = set()
        self._reauth_lock = asyncio.Lock()
        self._host_token = self._load_host_token()
        self._http: httpx.AsyncClient | None = None
        self._tls: ssl.SSLContext | None = None
        self._tls_stamp: list[Stamp | None] = []
        # httpx logs every request at INFO through stdlib logging; the agent logs its own.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)

    @property
    def insecure(self) -> bool:
        """Plain ``http://``: accepted for laboratories; the caller warns at every start."""
        return self._cfg.url.startswith("http://")

    @property
    def host_token(self) -> str | None:
        return self._host_token

    @property
    def uid(self) -> str | None:
        return self._uid

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # -- registration ----------------------------------------------------------------------

    async def register(self, body: dict[str, Any]) -> Registration:
        """POST the registration until the controller accepts it; never gives up."""
        while True:
            try:
                reg, bad_assignment = await self._register_once(body)
            except Exception as exc:  # noqa: BLE001 - see _odd: a reply must not end the agent
                err = exc if isinstance(exc, ControllerError) else self._odd(exc, REGISTER_PATH)
                self._failed(err, "controller.register_failed")
                await self._sleep(self._delay(err))
                continue
            self._backoff.reset()
            self._failing = False
            self._log.info("controller.registered", uid=reg.uid, assignment=bool(reg.assignment))
            if self._on_recovered is not None:
                self._on_recovered()
            if bad_assignment:
                # The host token is good, so the registration stands; the next poll refetches.
                self._report("bad_assignment", "the registration's assignment is not an object")
            return reg

    async def _register_once(self, body: dict[str, Any]) -> tuple[Registration, bool]:
        token = self._registration_token()
        reply = await self._exchange("POST", REGISTER_PATH, token, json=body)
        if reply.status_code != 200:
            raise self._status_error(reply, "POST", REGISTER_PATH, register=True)
        fields = accepted(reply.content, body.get("uid"))
        if fields is None:
            msg = "the controller answered 200 without a uid and a host_token"
            raise ControllerError("registration_failed", msg, slow=True)
        host_token = fields.host_token
        self._secrets.add(host_token)
        if host_token != self._host_token:
            try:
                write_bytes(self._token_path, host_token.encode(), mode=0o600)
            except OSError as e:
                # A full state disk must not stop the agent: the token works from memory, and
                # the next start simply registers again (registration is idempotent).
                self._log.warning("controller.host_token_not_saved", error=str(e))
            self._host_token = host_token
        self._uid = fields.uid
        return Registration(fields.uid, host_token, fields.assignment), fields.bad_assignment

    def _registration_token(self) -> str:
        path = self._cfg.registration_token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            msg = f"cannot read the registration token file {path}: {e}"
            raise ControllerError("registration_refused", msg, slow=True) from e
        if not token:
            msg = f"the registration token file {path} is empty"
            raise ControllerError("registration_refused", msg, slow=True)
        self._secrets.add(token)
        return token

    # -- assignment ------------------------------------------------------------------------

    async def fetch_assignment(self, etag: str | None) -> AssignmentFetch:
        """One GET of the assignment; `Reauth` on 401, `ControllerError` on other failures."""
        try:
            result = await self._fetch_once(etag)
        except Reauth:
            raise
        except ControllerError as e:
            self._failed(e, "controller.assignment_failed")
            raise
        except Exception as exc:  # see _odd: a reply must not end the agent
            odd = self._odd(exc, "the assignment")
            self._failed(odd, "controller.assignment_failed")
            raise odd from exc
        self._succeeded()
        return result

    async def poll_assignment(
        self, register_body_factory: Callable[[], dict[str, Any]], etag: str | None
    ) -> AssignmentFetch:
        """`fetch_assignment`, registering again (once) when the host token is refused.

        Registering blocks until it succeeds (with backoff, reporting each failure); the
        caller keeps working from its persisted assignment meanwhile.
        """
        if self._host_token is None or self._uid is None:
            reg = await self._reregister(register_body_factory, None, "no host token yet")
        else:
            refused = self._host_token
            try:
                return await self.fetch_assignment(etag)
            except Reauth as e:
                reason = e.message
            reg = await self._reregister(register_body_factory, refused, reason)
        try:
            # A new registration starts afresh: fetch in full, not against the old ETag.
            fetch = await self.fetch_assignment(None)
        except Reauth as e:
            # Refused right after registering: report it, and let the next poll try again
            # rather than loop here.
            self._failed(e, "controller.assignment_failed")
            raise
        return dataclasses.replace(fetch, registration=reg)

    async def _reregister(
        self, factory: Callable[[], dict[str, Any]], refused: str | None, reason: str
    ) -> Registration | None:
        # The poll loop and a sync-assignment command may both meet the 401: register once.
        async with self._reauth_lock:
            if refused is not None and self._host_token != refused:
                return None
            self._log.info("controller.reregistering", reason=self._scrub(reason))
            return await self.register(factory())

    async def _fetch_once(self, etag: str | None) -> AssignmentFetch:
        token, uid = self._host_token, self._uid
        if token is None or uid is None:
            raise Reauth("no host token yet: register first")
        path = f"/v1/hosts/{quote(uid, safe='')}/assignment"
        extra = {"If-None-Match": etag} if etag else {}
        reply = await self._exchange("GET", path, token, headers=extra)
        new_etag = reply.headers.get("ETag")
        if reply.status_code == 200:
            doc = json_object(reply.content)
            if doc is None:
                raise ControllerError("bad_assignment", "the assignment is not a JSON object")
            return AssignmentFetch("changed", doc, new_etag)
        if reply.status_code == 204:
            return AssignmentFetch("none", None, None)
        if reply.status_code == 304:
            return AssignmentFetch("unchanged", None, new_etag or etag)
        raise self._status_error(reply, "GET", path)

    # -- diagnostics -----------------------------------------------------------------------

    async def upload_diagnostics(self, bundle_id: str, data: bytes) -> None:
        """PUT a tar.gz bundle; up to `UPLOAD_ATTEMPTS` tries on transient failures."""
        token, uid = self._host_token, self._uid
        if token is None or uid is None:
            raise Reauth("no host token yet: register first")
        path = f"/v1/hosts/{quote(uid, safe='')}/diagnostics/{quote(bundle_id, safe='')}"
        # Per-step timeouts bound a stall; the total deadline allows 64 KiB/s on top.
        deadline = 3 * self._cfg.timeout_s + len(data) / 65536
        backoff = Backoff(base=1.0, cap=min(30.0, self._cfg.max_backoff_s), rng=self._rng)
        ctype = {"Content-Type": "application/gzip"}
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                reply = await self._exchange(
                    "PUT", path, token, headers=ctype, content=data, deadline=deadline
                )
                if not 200 <= reply.status_code < 300:
                    raise self._status_error(reply, "PUT", path)
            except Reauth:
                raise  # not an error to report: the next poll registers again
            except ControllerError as e:
                self._failed(e, "controller.upload_failed", attempt=attempt)
                if e.code != "controller_unreachable" or attempt == UPLOAD_ATTEMPTS:
                    raise
                await self._sleep(backoff.next_delay(e.retry_after))
                continue
            self._succeeded()
            self._log.info("controller.uploaded", bundle_id=bundle_id, bytes=len(data))
            return

    # -- plumbing --------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        path: str,
        token: str,
        *,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
        json: dict[str, Any] | None = None,
        content: bytes | None = None,
    ) -> _Reply:
        http = await self._client()
        deadline = deadline or 3 * self._cfg.timeout_s  # connect + send + read, each bounded
        sent = {"Authorization": f"Bearer {token}", **(headers or {})}
        stream = http.stream(method, path, headers=sent, json=json, content=content)
        try:
            async with _compat.timeout(deadline), stream as reply:
                # A few KiB are expected; never buffer a broken controller's endless stream,
                # nor let a compressed one inflate past the limit (see agent.link.replybody).
                collected = BoundedBody(reply.headers.get("Content-Encoding"), MAX_RESPONSE_BYTES)
                async for chunk in reply.aiter_raw():
                    collected.feed(chunk)
                body = collected.finish()
        except (ReplyTooLarge, BadEncoding) as e:
            raise ControllerError("controller_unreachable", f"{method} {path}: {e}") from None
        # ssl.SSLError (raw, when our client certificate is refused) and asyncio.timeout's
        # TimeoutError are both OSErrors.
        except (httpx.HTTPError, OSError) as e:
            tls = find_ssl_error(e)
            if tls is None and self._tls is not None and isinstance(e, _DROPPED):
                tls = await probe_client_cert(self._cfg.url, self._cfg.timeout_s, self._tls)
            raise self._transport_error(e, tls, f"{method} {self._cfg.url}{path}", deadline) from e
        return _Reply(reply.status_code, reply.headers, body)

    def _transport_error(
        self, exc: BaseException, tls: ssl.SSLError | None, where: str, deadline: float
    ) -> ControllerError:
        if isinstance(tls, ssl.SSLCertVerificationError):
            detail = f"certificate verify failed: {tls.verify_message or tls.reason}"
            msg = f"TLS verification of the controller failed on {where}: {detail}"
            return ControllerError("controller_unreachable", msg)
        if tls is not None and refuses_client_cert(str(tls.reason)):
            msg = f"the controller refused our TLS client certificate ({tls.reason}) on {where}"
            return ControllerError("registration_refused", msg, slow=True)
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            msg = f"{where} timed out ({type(exc).__name__}, limit {deadline:g}s)"
            return ControllerError("controller_unreachable", msg)
        msg = f"{where} failed: {type(exc).__name__}: {exc}".rstrip(": ")
        return ControllerError("controller_unreachable", self._scrub(msg))

    def _status_error(
        self, reply: _Reply, method: str, path: str, *, register: bool = False
    ) -> ControllerError:
        status = reply.status_code
        verdict = status_verdict(status, register=register)
        msg = self._scrub(f"HTTP {status} from {method} {path}{error_excerpt(reply.content)}")
        if verdict.reauth:
            return Reauth(f"host token refused: {msg}")
        retry_after = None
        if verdict.transient:
            retry_after = parse_retry_after(reply.headers.get("Retry-After"), time.time())
        return ControllerError(verdict.code, msg, slow=verdict.slow, retry_after=retry_after)

    def _odd(self, exc: Exception, what: str) -> ControllerError:
        """A failure nobody foresaw while handling a reply (a parser's RecursionError once):
        whatever the controller, or anyone on an http:// path, sends costs at most this
        error and a retry, never the agent (which systemd would restart into a crash loop)."""
        self._log.warning("controller.reply_unhandled", error=repr(exc), exc_info=exc)
        msg = f"cannot handle the controller's reply for {what}: {type(exc).__name__}: {exc}"
        return ControllerError("controller_unreachable", self._scrub(msg[:300]))

    def _delay(self, e: ControllerError) -> float:
        if e.slow:
            return slow_delay(self._cfg.max_backoff_s, e.retry_after, self._rng)
        return self._backoff.next_delay(e.retry_after)

    def _failed(self, e: ControllerError, event: str, **kw: object) -> None:
        self._failing = True
        self._log.warning(event, code=e.code, error=self._scrub(e.message), **kw)
        self._report(e.code, e.message)

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            if self._on_recovered is not None:
                self._on_recovered()

    def _report(self, code: str, message: str) -> None:
        if self._on_error is not None:
            self._on_error(code, self._scrub(message))

    def _scrub(self, text: str) -> str:
        return scrub_text(text, self._secrets)

    async def _client(self) -> httpx.AsyncClient:
        """The one AsyncClient, rebuilt only when a TLS file changed (a rotated cert)."""
        cfg = self._cfg
        files = [] if self.insecure else [cfg.ca_file, cfg.client_cert_file, cfg.client_key_file]
        stamp = [file_stamp(f) for f in files if f is not None]
        if self._http is not None and stamp == self._tls_stamp:
            return self._http
        verify = self._tls = self._ssl_context()
        if self._http is not None:
            self._log.info("controller.tls_reloaded")
            await self._http.aclose()
        # Built once (~45 ms), with an SSLContext as `verify`: 0.28 deprecates `cert=`.
        self._http = httpx.AsyncClient(
            base_url=cfg.url,
            verify=verify or False,
            timeout=httpx.Timeout(cfg.timeout_s),
            # identity: a compressed body's size is only known once inflated (replybody.py).
            headers={"User-Agent": f"edge-agent/{__version__}", "Accept-Encoding": "identity"},
            follow_redirects=False,
        )
        self._tls_stamp = stamp
        return self._http

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self._cfg
        if self.insecure:
            return None
        try:
            context = client_context(cfg.ca_file, cfg.client_cert_file, cfg.client_key_file)
        except (OSError, ValueError) as e:
            msg = f"cannot load the controller TLS files: {e}"
            raise ControllerError("registration_failed", msg, slow=True) from e
        return context

    def _load_host_token(self) -> str | None:
        try:
            token = self._token_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            self._log.warning("controller.host_token_unreadable", error=str(e))
            return None
        if token:
            self._secrets.add(token)
        return token or None
