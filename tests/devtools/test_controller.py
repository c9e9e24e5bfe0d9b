"""The fake controller answers docs/api/openapi.yaml the way the agent will meet it.

Every test talks HTTP (or HTTPS with trustme certificates) to the real server thread
through httpx: registration and its failure codes, assignment polling with ETags, injected
failures with Retry-After, diagnostics uploads, mTLS refusal and slow answers.
"""

from __future__ import annotations

import gzip
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.testing import sample_assignment
from devtools.controller import Controller, ServerTLS

ASSIGNMENT: dict[str, Any] = sample_assignment(revision=3)


def body(uid: str = "edge-test-1") -> dict[str, Any]:
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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def controller() -> Iterator[Controller]:
    with Controller() as ctl:
        yield ctl


@pytest.fixture
def http(controller: Controller) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=controller.url, timeout=5) as client:
        yield client


def register(http: httpx.Client, controller: Controller, uid: str = "edge-test-1") -> str:
    answer = http.post(
        "/v1/hosts/register", json=body(uid), headers=bearer(controller.registration_token)
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["host_token"])


def test_register_answers_same_host_token_each_time(
    controller: Controller, http: httpx.Client
) -> None:
    first = http.post(
        "/v1/hosts/register", json=body(), headers=bearer(controller.registration_token)
    )
    assert first.status_code == 200
    assert first.json()["uid"] == "edge-test-1"
    assert first.json()["assignment"] is None
    again = register(http, controller)
    assert again == first.json()["host_token"]
    assert len(controller.registrations) == 2
    assert controller.registrations[0]["hostname"] == "store-12"


def test_register_refuses_wrong_and_rotated_tokens(
    controller: Controller, http: httpx.Client
) -> None:
    assert http.post("/v1/hosts/register", json=body()).status_code == 401
    assert http.post("/v1/hosts/register", json=body(), headers=bearer("nope")).status_code == 401
    old = controller.registration_token
    controller.registration_token = "rotated"
    assert http.post("/v1/hosts/register", json=body(), headers=bearer(old)).status_code == 401
    assert (
        http.post("/v1/hosts/register", json=body(), headers=bearer("rotated")).status_code == 200
    )


@pytest.mark.parametrize(
    "change",
    [
        {"uid": "Edge/Bad"},
        {"uid": None},
        {"mode": "robot"},
        {"os": "ubuntu"},
        {"addresses": "10.0.0.1"},
        {"labels": {"a": 1}},
        {"hostname": ""},
    ],
)
def test_register_validates_the_body(
    controller: Controller, http: httpx.Client, change: dict[str, Any]
) -> None:
    answer = http.post(
        "/v1/hosts/register",
        json=body() | change,
        headers=bearer(controller.registration_token),
    )
    assert answer.status_code == 400
    assert answer.json()["error"]
    assert controller.registrations == []


def test_register_refuses_non_json(controller: Controller, http: httpx.Client) -> None:
    answer = http.post(
        "/v1/hosts/register", content=b"{", headers=bearer(controller.registration_token)
    )
    assert answer.status_code == 400


def test_conflicting_uid_gets_409(controller: Controller, http: httpx.Client) -> None:
    controller.conflict_uids.add("edge-clone")
    answer = http.post(
        "/v1/hosts/register", json=body("edge-clone"), headers=bearer(controller.registration_token)
    )
    assert answer.status_code == 409


def test_assignment_204_then_200_with_etag_then_304(
    controller: Controller, http: httpx.Client
) -> None:
    token = register(http, controller)
    url = "/v1/hosts/edge-test-1/assignment"
    assert http.get(url, headers=bearer(token)).status_code == 204

    controller.assignment = ASSIGNMENT
    answer = http.get(url, headers=bearer(token))
    assert answer.status_code == 200
    assert answer.headers["ETag"] == '"3"'
    assert answer.json() == ASSIGNMENT

    unchanged = http.get(url, headers=bearer(token) | {"If-None-Match": '"3"'})
    assert unchanged.status_code == 304
    assert unchanged.content == b""

    controller.assignment = ASSIGNMENT | {"revision": 4}
    newer = http.get(url, headers=bearer(token) | {"If-None-Match": '"3"'})
    assert newer.status_code == 200
    assert newer.headers["ETag"] == '"4"'
    assert newer.json()["revision"] == 4

    registered = http.post(
        "/v1/hosts/register", json=body(), headers=bearer(controller.registration_token)
    )
    assert registered.json()["assignment"]["revision"] == 4


def test_per_host_assignment_overrides_the_default(
    controller: Controller, http: httpx.Client
) -> None:
    controller.assignment = ASSIGNMENT
    controller.set_assignment("edge-other", None)
    token = register(http, controller, "edge-other")
    assert http.get("/v1/hosts/edge-other/assignment", headers=bearer(token)).status_code == 204


def test_assignment_refuses_wrong_and_revoked_tokens(
    controller: Controller, http: httpx.Client
) -> None:
    controller.assignment = ASSIGNMENT
    token = register(http, controller)
    url = "/v1/hosts/edge-test-1/assignment"
    assert http.get(url, headers=bearer("wrong")).status_code == 401
    assert http.get(url).status_code == 401
    assert http.get("/v1/hosts/edge-unknown/assignment", headers=bearer(token)).status_code == 401

    controller.revoke_host_token("edge-test-1")
    assert http.get(url, headers=bearer(token)).status_code == 401
    fresh = register(http, controller)
    assert fresh != token
    assert http.get(url, headers=bearer(fresh)).status_code == 200
    assert http.get(url, headers=bearer(token)).status_code == 401
    # Once re-registered, the new token is stable again.
    assert register(http, controller) == fresh


def test_fail_next_injects_status_and_retry_after(
    controller: Controller, http: httpx.Client
) -> None:
    controller.fail_next(2, status=503, retry_after=2)
    controller.fail_next(1, status=429, retry_after=0.5, path_prefix="/v1/hosts/edge-test-1/")
    for _ in range(2):
        answer = http.post(
            "/v1/hosts/register", json=body(), headers=bearer(controller.registration_token)
        )
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "2"
    token = register(http, controller)

    limited = http.get("/v1/hosts/edge-test-1/assignment", headers=bearer(token))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "0.5"
    assert http.get("/v1/hosts/edge-test-1/assignment", headers=bearer(token)).status_code == 204

    controller.fail_next(1, status=500)
    plain = http.post("/v1/hosts/register", json=body())
    assert plain.status_code == 500
    assert "Retry-After" not in plain.headers
    assert [r.status for r in controller.requests if r.method == "POST"] == [503, 503, 200, 500]


def test_diagnostics_upload_is_stored(controller: Controller, http: httpx.Client) -> None:
    token = register(http, controller)
    bundle = gzip.compress(b"tar bytes")
    url = "/v1/hosts/edge-test-1/diagnostics/01JDXBUNDLE"
    gz = {"Content-Type": "application/gzip"}
    answer = http.put(url, content=bundle, headers=bearer(token) | gz)
    assert answer.status_code == 201
    assert controller.bundles == {"01JDXBUNDLE": bundle}

    assert http.put(url, content=bundle, headers=gz).status_code == 401
    wrong_type = {"Content-Type": "application/octet-stream"}
    assert http.put(url, content=bundle, headers=bearer(token) | wrong_type).status_code == 415


def test_diagnostics_upload_accepts_chunked_bodies(
    controller: Controller, http: httpx.Client
) -> None:
    token = register(http, controller)

    def chunks() -> Iterator[bytes]:
        yield b"part one;"
        yield b"part two"

    answer = http.put(
        "/v1/hosts/edge-test-1/diagnostics/b2",
        content=chunks(),
        headers=bearer(token) | {"Content-Type": "application/gzip"},
    )
    assert answer.status_code == 201
    assert controller.bundles["b2"] == b"part one;part two"


def test_healthz_follows_its_knob(controller: Controller, http: httpx.Client) -> None:
    ok = http.get("/healthz")
    assert (ok.status_code, ok.text) == (200, "ok")
    controller.healthz_status = 500
    assert http.get("/healthz").status_code == 500


def test_requests_are_recorded_and_counted(controller: Controller, http: httpx.Client) -> None:
    token = register(http, controller)
    http.get("/v1/hosts/edge-test-1/assignment", headers=bearer(token))
    http.get("/nowhere")
    assert controller.count("POST", "/v1/hosts/register") == 1
    assert controller.count("GET", "/v1/hosts/") == 1
    assert controller.count() == 3
    last = controller.requests[-1]
    assert (last.method, last.path, last.status) == ("GET", "/nowhere", 404)
    assignment_get = controller.requests[1]
    assert assignment_get.headers["authorization"] == f"Bearer {token}"
    assert controller.wait_count("GET", "/nowhere", 1, timeout=0.1)
    assert not controller.wait_count("GET", "/nowhere", 2, timeout=0.1)


def test_delay_makes_clients_time_out(controller: Controller) -> None:
    controller.delay_s = 0.5
    with (
        httpx.Client(base_url=controller.url, timeout=0.1) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/healthz")
    controller.delay_s = 0
    with httpx.Client(base_url=controller.url, timeout=2) as client:
        assert client.get("/healthz").status_code == 200


def test_stop_ends_keep_alive_connections() -> None:
    controller = Controller().start()
    with httpx.Client(base_url=controller.url, timeout=2) as client:
        assert client.get("/healthz").status_code == 200
        controller.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/healthz")


def test_https_with_server_certificate_only() -> None:
    tls = ServerTLS()
    with Controller(tls=tls) as controller:
        assert controller.url.startswith("https://127.0.0.1:")
        context = tls.client_context(client_cert=False)
        with httpx.Client(base_url=controller.url, verify=context, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
        with (
            httpx.Client(base_url=controller.url, timeout=5) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get("/healthz")


def test_mtls_refuses_a_client_without_certificate(tmp_path: Any) -> None:
    tls = ServerTLS(require_client_cert=True)
    with Controller(tls=tls) as controller:
        with httpx.Client(
            base_url=controller.url, verify=tls.client_context(), timeout=5
        ) as client:
            assert client.get("/healthz").status_code == 200

        # The agent loads the files it is configured with; those must work too.
        ca = tls.write_ca(tmp_path / "ca.pem")
        cert, key = tls.write_client_cert(tmp_path, "edge-files")
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        with httpx.Client(base_url=controller.url, verify=context, timeout=5) as client:
            assert client.get("/healthz").status_code == 200

        # TLS 1.3 reports the refusal on the first read, sometimes as a raw SSLError that
        # httpx does not wrap.
        bare = tls.client_context(client_cert=False)
        with (
            httpx.Client(base_url=controller.url, verify=bare, timeout=5) as client,
            pytest.raises((httpx.TransportError, ssl.SSLError)),
        ):
            client.get("/healthz")
        assert controller.wait_count("GET", "/healthz", 2, timeout=1)
        assert controller.count("GET", "/healthz") == 2
        assert controller.wait_for(lambda: controller.tls_failures >= 1, timeout=2)
