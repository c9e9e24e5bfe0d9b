"""The controller client against a real HTTP(S) server: the fake controller of devtools.

Registration and its failure codes with the delays the client chose (a recording sleep
returns at once, so backoff is asserted without waiting), assignment polling with ETags and
re-registration on 401, diagnostics uploads, TLS with a custom CA, mTLS and a rotated client
certificate. Every test checks that neither the registration token nor the host token ever
reached a log record or an `on_error` message.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import stat
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import ControllerConfig
from agent.link.controller import ControllerClient, ControllerError, _retry_after
from agent.testing import CapturingLog, sample_assignment
from devtools.controller import Controller, RecordedRequest, ServerTLS
from tests.link.controller_fixtures import (
    UID,
    Canned,
    CannedServer,
    FakeSleep,
    StopRetrying,
    controller_config,
    registration_body,
)

TOKEN = "reg-token-7f3a9c"


class Harness:
    """Builds clients sharing one log, one error list and one sleep; checks for leaks."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.log = CapturingLog()
        self.errors: list[tuple[str, str]] = []
        self.recovered = 0
        self.sleep = FakeSleep()
        self.clients: list[ControllerClient] = []
        self.secrets: set[str] = {TOKEN}

    def client(self, cfg: ControllerConfig, **kw: Any) -> ControllerClient:
        def recovered() -> None:
            self.recovered += 1

        client = ControllerClient(
            cfg,
            self.state_dir,
            log=self.log,
            rng=random.Random(7),
            sleep=self.sleep,
            on_error=lambda code, msg: self.errors.append((code, msg)),
            on_recovered=recovered,
            **kw,
        )
        self.clients.append(client)
        return client

    def codes(self) -> list[str]:
        return [code for code, _ in self.errors]

    def assert_no_secrets(self) -> None:
        for client in self.clients:
            if client.host_token:
                self.secrets.add(client.host_token)
        text = self.log.dump() + repr(self.errors)
        for secret in self.secrets:
            assert secret not in text


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for client in harness.clients:
        await client.aclose()
    harness.assert_no_secrets()


@pytest.fixture
def controller() -> Iterator[Controller]:
    with Controller(registration_token=TOKEN) as ctl:
        yield ctl


def cfg_for(
    tmp_path: Path, ctl: Controller, token: str = f"  {TOKEN}\n", **kw: Any
) -> ControllerConfig:
    return controller_config(tmp_path, ctl.url, token, **kw)


def seen(
    ctl: Controller, n: int, method: str | None = None, prefix: str = ""
) -> list[RecordedRequest]:
    """The requests matching `method` and `prefix`, once `n` of them are recorded.

    The server records a request after answering it, so the client can be a step ahead.
    """
    assert ctl.wait_count(method, prefix, n)
    return [r for r in ctl.requests if method in (None, r.method) and r.path.startswith(prefix)]


# -- registration --------------------------------------------------------------------------


async def test_register_sends_body_and_stripped_token_and_keeps_host_token(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    assert client.host_token is None
    assert client.insecure
    reg = await client.register(registration_body())
    assert reg.uid == UID
    assert reg.host_token == controller.host_token(UID)
    assert reg.assignment is None
    assert controller.registrations == [registration_body()]
    (post,) = seen(controller, 1)
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["user-agent"].startswith("edge-agent/")
    token_file = h.state_dir / "host_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == reg.host_token
    assert (h.sleep.delays, h.errors, h.recovered) == ([], [], 1)
    again = h.client(cfg_for(tmp_path, controller), uid=UID)
    assert again.host_token == reg.host_token
    assert (await again.fetch_assignment(None)).status == "none"


async def test_5xx_backs_off_exponentially_with_jitter_then_recovers(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    controller.fail_next(8, status=503)
    client = h.client(cfg_for(tmp_path, controller, max_backoff_s=5.0))
    await client.register(registration_body())
    assert len(seen(controller, 9, "POST", "/v1/hosts/register")) == 9
    assert h.codes() == ["controller_unreachable"] * 8
    assert "HTTP 503" in h.errors[0][1]
    delays = h.sleep.delays
    assert len(delays) == 8
    for attempt, delay in enumerate(delays):
        assert 0 <= delay <= min(5.0, 2**attempt)  # first ~1 s, doubling, capped
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    assert h.recovered == 1
    assert len(h.log.events("controller.register_failed", level="warning")) == 8


async def test_backoff_restarts_after_a_success(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    controller.fail_next(6, status=502)
    await client.register(registration_body())
    controller.fail_next(1, status=502)
    await client.register(registration_body())
    assert h.sleep.delays[-1] <= 1.0


@pytest.mark.parametrize(("status", "retry_after"), [(503, 7), (429, 2), (429, 10_000)])
async def test_retry_after_is_a_floor_capped_by_max_backoff(
    tmp_path: Path, h: Harness, controller: Controller, status: int, retry_after: int
) -> None:
    controller.fail_next(1, status=status, retry_after=retry_after)
    client = h.client(cfg_for(tmp_path, controller, max_backoff_s=60.0))
    await client.register(registration_body())
    assert min(retry_after, 60.0) <= h.sleep.delays[0] <= 60.0
    assert h.codes() == ["controller_unreachable"]


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = time.time()
    assert _retry_after("120", now) == 120.0
    assert _retry_after(" 1.5 ", now) == 1.5
    assert 89 <= (_retry_after(formatdate(now + 90, usegmt=True), now) or 0) <= 90
    assert _retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "nan", "Sun, 99 Foo 2026"):
        assert _retry_after(bad, now) is None


async def test_refused_token_retries_slowly_and_rereads_the_file(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    cfg = cfg_for(tmp_path, controller, token="old-token\n", max_backoff_s=300.0)
    h.secrets.add("old-token")

    def operator(n: int) -> None:
        if n == 3:  # after the third refusal an operator drops in the right token
            cfg.registration_token_file.write_text(TOKEN + "\n")

    h.sleep.hook = operator
    reg = await h.client(cfg).register(registration_body())
    assert reg.host_token
    assert h.codes() == ["registration_refused"] * 3
    assert all(150.0 <= d <= 300.0 for d in h.sleep.delays)  # slow: near the cap, jittered
    auth = [r.headers["authorization"] for r in seen(controller, 4)]
    assert auth == ["Bearer old-token"] * 3 + [f"Bearer {TOKEN}"]


async def test_missing_token_file_is_refused_slowly_without_a_request(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    cfg = cfg_for(tmp_path, controller)
    cfg.registration_token_file.unlink()
    h.sleep.stop_after = 2
    with pytest.raises(StopRetrying):
        await h.client(cfg).register(registration_body())
    assert h.codes() == ["registration_refused"] * 2
    assert "registration-token" in h.errors[0][1]
    assert controller.requests == []
    assert min(h.sleep.delays) >= 150.0


async def test_uid_conflict_retries_slowly(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    controller.conflict_uids.add(UID)
    h.sleep.hook = lambda n: controller.conflict_uids.clear() if n == 2 else None
    await h.client(cfg_for(tmp_path, controller)).register(registration_body())
    assert h.codes() == ["uid_conflict"] * 2
    assert "held by another host" in h.errors[0][1]
    assert all(d >= 150.0 for d in h.sleep.delays)


async def test_bad_request_is_registration_failed(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    body = registration_body()
    del body["hostname"]
    h.sleep.hook = lambda n: body.update(hostname="store-12")  # a fixed agent, say
    await h.client(cfg_for(tmp_path, controller)).register(body)
    assert h.codes() == ["registration_failed"]
    assert "hostname" in h.errors[0][1]
    assert h.sleep.delays[0] >= 150.0


async def test_connection_refused_is_unreachable_with_fast_backoff(
    tmp_path: Path, h: Harness
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = controller_config(tmp_path, f"http://127.0.0.1:{port}", TOKEN)
    h.sleep.stop_after = 4
    with pytest.raises(StopRetrying):
        await h.client(cfg).register(registration_body())
    assert h.codes() == ["controller_unreachable"] * 4
    assert "ConnectError" in h.errors[0][1]
    assert all(d <= 2**i for i, d in enumerate(h.sleep.delays))
    assert h.recovered == 0


async def test_a_stalled_controller_times_out(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    controller.delay_s = 2.0
    h.sleep.stop_after = 1
    started = time.monotonic()
    with pytest.raises(StopRetrying):
        await h.client(cfg_for(tmp_path, controller, timeout_s=0.2)).register(registration_body())
    assert time.monotonic() - started < 1.5
    assert h.codes() == ["controller_unreachable"]
    assert "timed out" in h.errors[0][1]


async def test_secrets_echoed_by_the_server_are_redacted(tmp_path: Path, h: Harness) -> None:
    with CannedServer() as server:
        server.reply = Canned(500, b"upstream said: ", echo_auth=True)
        h.sleep.stop_after = 1
        cfg = controller_config(tmp_path, server.url, TOKEN)
        with pytest.raises(StopRetrying):
            await h.client(cfg).register(registration_body())
    assert h.codes() == ["controller_unreachable"]
    assert "Bearer <redacted>" in h.errors[0][1]


async def test_a_secret_is_hidden_in_a_controller_error_as_everywhere_else(
    tmp_path: Path, h: Harness
) -> None:
    # The registration token struck out as in a log line or a nodeadm event; "reg" is a
    # word of the message, not a secret, and stays.
    said = f"reg {TOKEN} is not known".encode()
    with CannedServer() as server:
        server.reply = Canned(403, b'{"error": "' + said + b'"}')
        h.sleep.stop_after = 1
        with pytest.raises(StopRetrying):
            await h.client(controller_config(tmp_path, server.url, TOKEN)).register(
                registration_body()
            )
    shown = "HTTP 403 from POST /v1/hosts/register: reg <redacted> is not known"
    assert h.errors == [("registration_refused", shown)]
    assert [c.method_name for c in h.log.calls] == ["warning"]
    [fields] = h.log.events("controller.register_failed", level="warning")
    assert fields["error"] == shown


# -- assignment ----------------------------------------------------------------------------


async def test_assignment_changed_unchanged_changed_none(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    one, two = sample_assignment(revision=1), sample_assignment(revision=2)
    controller.assignment = one
    client = h.client(cfg_for(tmp_path, controller))
    reg = await client.register(registration_body())
    assert reg.assignment == one
    first = await client.fetch_assignment(None)
    assert (first.status, first.body, first.etag) == ("changed", one, '"1"')
    same = await client.fetch_assignment(first.etag)
    assert (same.status, same.body, same.etag) == ("unchanged", None, '"1"')
    last = seen(controller, 2, "GET")[-1]
    assert last.headers["if-none-match"] == '"1"'
    assert last.headers["authorization"] == f"Bearer {reg.host_token}"
    controller.set_assignment(UID, two)
    newer = await client.fetch_assignment(same.etag)
    assert (newer.status, newer.body, newer.etag) == ("changed", two, '"2"')
    controller.set_assignment(UID, None)
    none = await client.fetch_assignment(newer.etag)
    assert (none.status, none.body, none.etag) == ("none", None, None)


async def test_poll_reregisters_on_401_and_uses_the_new_token(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    controller.assignment = sample_assignment(revision=3)
    client = h.client(cfg_for(tmp_path, controller))
    old = (await client.register(registration_body())).host_token
    h.secrets.add(old)
    controller.revoke_host_token(UID)
    # The poll loop and a sync-assignment command meet the 401 together: one registration.
    polls = await asyncio.gather(
        client.poll_assignment(registration_body, '"3"'),
        client.poll_assignment(registration_body, '"3"'),
    )
    new = controller.host_token(UID)
    assert new is not None
    assert new != old
    assert client.host_token == new
    assert (h.state_dir / "host_token").read_text() == new
    assert len(controller.registrations) == 2
    assert [p.status for p in polls] == ["changed", "changed"]
    assert sum(p.registration is not None for p in polls) == 1
    auth = [r.headers["authorization"] for r in seen(controller, 4, "GET")]
    assert auth == [f"Bearer {old}"] * 2 + [f"Bearer {new}"] * 2
    assert h.log.events("controller.reregistering", level="info")
    assert h.errors == []


async def test_poll_registers_first_when_it_has_no_host_token(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    poll = await client.poll_assignment(registration_body, None)
    assert poll.status == "none"
    assert poll.registration is not None
    assert poll.registration.uid == UID


async def test_assignment_failures_raise_with_a_code_and_recover(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    await client.register(registration_body())
    controller.fail_next(1, status=503, retry_after=5, path_prefix=f"/v1/hosts/{UID}/assignment")
    with pytest.raises(ControllerError) as caught:
        await client.fetch_assignment(None)
    assert (caught.value.code, caught.value.retry_after) == ("controller_unreachable", 5.0)
    assert h.codes() == ["controller_unreachable"]
    assert h.recovered == 1
    await client.fetch_assignment(None)
    assert h.recovered == 2  # cleared once, after the failure; not on every poll
    await client.fetch_assignment(None)
    assert h.recovered == 2


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b""])
async def test_assignment_that_is_not_an_object_is_bad_assignment(
    tmp_path: Path, h: Harness, body: bytes
) -> None:
    with CannedServer() as server:
        client = h.client(controller_config(tmp_path, server.url, TOKEN), uid=UID)
        server.reply = Canned(200, b'{"uid": "edge-test-1", "host_token": "ht-1"}')
        await client.register(registration_body())
        server.reply = Canned(200, body, {"Content-Type": "application/json", "ETag": '"9"'})
        with pytest.raises(ControllerError) as caught:
            await client.fetch_assignment(None)
    assert caught.value.code == "bad_assignment"
    assert h.codes() == ["bad_assignment"]


async def test_a_huge_reply_is_refused_not_buffered(tmp_path: Path, h: Harness) -> None:
    with CannedServer() as server:
        client = h.client(controller_config(tmp_path, server.url, TOKEN), uid=UID)
        server.reply = Canned(200, b'{"uid": "edge-test-1", "host_token": "ht-1"}')
        await client.register(registration_body())
        server.reply = Canned(200, b" " * (2 * 1024 * 1024))
        with pytest.raises(ControllerError, match="too large"):
            await client.fetch_assignment(None)


# -- diagnostics ---------------------------------------------------------------------------


async def test_upload_diagnostics_stores_bytes_and_retries_transient_failures(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    await client.register(registration_body())
    data = os.urandom(300_000)
    controller.fail_next(2, status=503, path_prefix=f"/v1/hosts/{UID}/diagnostics/")
    await client.upload_diagnostics("bundle-01", data)
    assert controller.bundles["bundle-01"] == data
    put = seen(controller, 3, "PUT")[-1]
    assert (put.method, put.status, put.headers["content-type"]) == ("PUT", 201, "application/gzip")
    assert len(h.sleep.delays) == 2


async def test_upload_gives_up_after_three_attempts(
    tmp_path: Path, h: Harness, controller: Controller
) -> None:
    client = h.client(cfg_for(tmp_path, controller))
    await client.register(registration_body())
    controller.fail_next(5, status=500, path_prefix=f"/v1/hosts/{UID}/diagnostics/")
    with pytest.raises(ControllerError) as caught:
        await client.upload_diagnostics("bundle-02", b"\x1f\x8b")
    assert caught.value.code == "controller_unreachable"
    assert len(seen(controller, 3, "PUT")) == 3
    assert len(h.sleep.delays) == 2
    assert "bundle-02" not in controller.bundles


# -- TLS -----------------------------------------------------------------------------------


def tls_controller(require_client_cert: bool = False) -> Controller:
    return Controller(
        tls=ServerTLS(require_client_cert=require_client_cert), registration_token=TOKEN
    )


async def test_https_with_a_custom_ca(tmp_path: Path, h: Harness) -> None:
    with tls_controller() as ctl:
        assert ctl.tls is not None
        cfg = cfg_for(tmp_path, ctl, ca_file=ctl.tls.write_ca(tmp_path / "ca.pem"))
        client = h.client(cfg)
        assert not client.insecure
        await client.register(registration_body())
        assert (await client.fetch_assignment(None)).status == "none"
    assert h.errors == []


async def test_https_with_the_wrong_ca_is_unreachable_naming_tls(
    tmp_path: Path, h: Harness
) -> None:
    with tls_controller() as ctl:
        cfg = cfg_for(tmp_path, ctl, ca_file=ServerTLS().write_ca(tmp_path / "other-ca.pem"))
        h.sleep.stop_after = 2
        with pytest.raises(StopRetrying):
            await h.client(cfg).register(registration_body())
        assert ctl.registrations == []
    assert h.codes() == ["controller_unreachable"] * 2
    assert "TLS verification" in h.errors[0][1]
    assert "certificate verify failed" in h.errors[0][1]
    assert h.sleep.delays[0] <= 1.0


# The server's alert usually loses to a connection reset; the client must still tell, every time.
@pytest.mark.parametrize("attempt", range(3))
async def test_mtls_without_a_client_cert_is_refused(
    tmp_path: Path, h: Harness, attempt: int
) -> None:
    with tls_controller(require_client_cert=True) as ctl:
        assert ctl.tls is not None
        cfg = cfg_for(tmp_path, ctl, ca_file=ctl.tls.write_ca(tmp_path / "ca.pem"))
        h.sleep.stop_after = 1
        with pytest.raises(StopRetrying):
            await h.client(cfg).register(registration_body())
    assert h.codes() == ["registration_refused"], h.errors
    assert "client certificate" in h.errors[0][1]
    assert h.sleep.delays[0] >= 150.0


async def test_mtls_with_a_client_cert(tmp_path: Path, h: Harness) -> None:
    with tls_controller(require_client_cert=True) as ctl:
        assert ctl.tls is not None
        cert, key = ctl.tls.write_client_cert(tmp_path, "edge-test-1")
        ca = ctl.tls.write_ca(tmp_path / "ca.pem")
        cfg = cfg_for(tmp_path, ctl, ca_file=ca, client_cert_file=cert, client_key_file=key)
        client = h.client(cfg)
        await client.register(registration_body())
        await client.upload_diagnostics("bundle-03", b"\x1f\x8b\x08")
        assert ctl.bundles["bundle-03"] == b"\x1f\x8b\x08"
    assert h.errors == []


async def test_mtls_with_a_client_cert_and_rotation_without_restart(
    tmp_path: Path, h: Harness
) -> None:
    with tls_controller(require_client_cert=True) as ctl:
        assert ctl.tls is not None
        # Start with a certificate from a CA the controller does not trust ...
        cert, key = ServerTLS().write_client_cert(tmp_path, "edge-test-1")
        cfg = cfg_for(
            tmp_path,
            ctl,
            ca_file=ctl.tls.write_ca(tmp_path / "ca.pem"),
            client_cert_file=cert,
            client_key_file=key,
        )
        good_tls = ctl.tls

        def rotate(n: int) -> None:  # ... then an operator installs a good one.
            good_cert, good_key = good_tls.write_client_cert(tmp_path / "new", "edge-test-1")
            os.replace(good_cert, cert)
            os.replace(good_key, key)

        (tmp_path / "new").mkdir()
        h.sleep.hook = rotate
        client = h.client(cfg)
        reg = await client.register(registration_body())
        assert reg.uid == UID
        assert (await client.fetch_assignment(None)).status == "none"
    assert h.codes() == ["registration_refused"]
    assert h.log.events("controller.tls_reloaded", level="info")
