"""The agent against the devtools controller (docs/api/openapi.yaml, docs/architecture.md): `edge-agent run` registers,
rides out a failing controller, takes a replaced registration token without a restart,
polls the assignment with its ETag, upgrades only once the controller has drained the node,
ignores an older revision, and uploads a diagnostics bundle that holds no secret.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import stat
import tarfile
import time

from agent.testing import ACTIVATION_CODE, sample_assignment
from tests.e2e.conftest import Site, SiteFactory


def _arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def test_registers_with_a_full_body_and_keeps_the_host_token(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    ctl = site.controller
    assert ctl.registrations, "the controller got no registration"
    body = ctl.registrations[0]
    assert body["uid"] == site.uid
    assert body["mode"] == "agent"
    assert body["hostname"] == "edge-host"
    assert body["os"] == {
        "id": "ubuntu",
        "version_id": "22.04",
        "pretty_name": "Ubuntu 22.04.4 LTS",
    }
    assert body["arch"] == _arch()
    assert body["labels"] == {"site": "test"}
    assert isinstance(body["addresses"], list)
    assert all(isinstance(a, str) and a for a in body["addresses"])
    assert isinstance(body["agent_version"], str) and body["agent_version"]
    reg = next(r for r in ctl.requests if r.path == "/v1/hosts/register")
    assert reg.headers["authorization"] == f"Bearer {ctl.registration_token}"
    # The host token it got back is kept 0600 in state_dir and used for the assignment.
    token_file = site.host.state / "host_token"
    assert token_file.read_text().strip() == ctl.host_token(site.uid)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ctl.wait_count("GET", f"/v1/hosts/{site.uid}/assignment", 1, 5)
    polls = [r for r in ctl.requests if r.path.endswith("/assignment")]
    assert polls[0].headers["authorization"] == f"Bearer {ctl.host_token(site.uid)}"
    regs = site.cmd.wait_for(lambda: site.cmd.events("registration"), 5)
    assert any(e.get("state") == "registered" for e in regs)


def test_5xx_is_retried_until_the_controller_recovers(site_factory: SiteFactory) -> None:
    s = site_factory(start=False)
    s.controller.fail_next(3, 503)
    s.start()
    st = s.host.wait_phase("joined", 30)
    assert st["last_error"] is None
    regs = [r.status for r in s.controller.requests if r.path == "/v1/hosts/register"]
    # Three refusals, then exactly one success: bounded, and no registration storm after it.
    assert regs == [503, 503, 503, 200], regs
    errors = s.cmd.events("error")
    assert any(e.get("code") == "controller_unreachable" for e in errors), errors


def test_refused_token_is_re_read_until_the_operator_fixes_it(site_factory: SiteFactory) -> None:
    s = site_factory(token="not-the-right-token")
    st = s.wait_status(
        lambda st: (st.get("last_error") or {}).get("code") == "registration_refused"
    )
    assert st["phase"] == "registering"
    assert s.controller.registrations == []
    attempts = s.controller.count("POST", "/v1/hosts/register")
    # The operator replaces the token file; the running agent picks it up on its next try.
    s.token_file.write_text(s.controller.registration_token + "\n")
    st = s.host.wait_phase("joined", 30)
    assert st["last_error"] is None
    assert s.host.proc is not None and s.host.proc.poll() is None
    assert len(s.controller.registrations) == 1
    assert attempts >= 1
    refused = [e for e in s.cmd.events("registration") if e.get("code") == "registration_refused"]
    assert refused, "the refusal must show as a registration event"


def test_a_refused_host_token_makes_the_agent_register_again(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    ctl = site.controller
    old = ctl.host_token(site.uid)
    since = time.time()
    ctl.revoke_host_token(site.uid)
    assert ctl.wait_for(lambda: len(ctl.registrations) == 2, 10), "no registration after a 401"
    new = ctl.host_token(site.uid)
    assert new and new != old
    path = f"/v1/hosts/{site.uid}/assignment"
    assert ctl.wait_for(
        lambda: any(
            r.path == path
            and r.status in (200, 304)
            and r.ts > since
            and r.headers.get("authorization") == f"Bearer {new}"
            for r in ctl.requests
        ),
        10,
    )
    refused = [r for r in ctl.requests if r.path == path and r.status == 401]
    assert refused, "the revoked token was never refused"
    # Re-registration shows in events, and the host keeps its phase throughout.
    again = site.cmd.wait_for(
        lambda: [
            r.json()
            for r in site.cmd.records("events")
            if r.ts > since and r.json().get("type") == "registration"
        ],
        5,
    )
    assert again and again[0].get("state") == "registered", site.cmd.events("registration")
    assert site.host.status()["phase"] == "joined"
    assert [
        r for r in site.cmd.records("events") if r.ts > since and r.json()["type"] == "phase"
    ] == []
    assert (site.host.state / "host_token").read_text().strip() == new


def test_assignment_is_polled_with_its_etag(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    ctl = site.controller
    path = f"/v1/hosts/{site.uid}/assignment"
    assert ctl.wait_for(
        lambda: sum(1 for r in ctl.requests if r.path == path and r.status == 304) >= 2, 10
    ), [(r.status, r.headers.get("if-none-match")) for r in ctl.requests if r.path == path]
    polls = [r for r in ctl.requests if r.path == path]
    assert polls[0].status == 200 and "if-none-match" not in polls[0].headers
    for r in polls[1:]:
        if r.status == 304:
            assert r.headers.get("if-none-match") == '"1"'


def test_upgrade_waits_for_drain_then_runs(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    newer = sample_assignment(revision=2, kubernetes_version="1.32")
    newer["cluster"] = {**newer["cluster"], "kubernetes_version": "1.32"}
    site.controller.set_assignment(site.uid, newer)
    st = site.wait_status(
        lambda st: (st.get("last_error") or {}).get("code") == "awaiting_drain", 15
    )
    assert st["phase"] == "joined" and st["kubernetes_version"] == "1.31"
    assert st["assignment_revision"] == 2 and st["target_kubernetes_version"] == "1.32"
    time.sleep(1.5)  # a poll or two more: still nothing run
    assert site.host.status()["phase"] == "joined"
    assert site.host.nodeadm_calls("upgrade") == []

    since = time.time()
    site.controller.set_assignment(site.uid, {**newer, "revision": 3, "drained": True})
    assert site.cmd.wait_phase("upgrading", 15, since=since)
    assert site.cmd.wait_phase("joined", 30, since=since)
    st = site.wait_status(lambda st: st["phase"] == "joined" and st["kubernetes_version"] == "1.32")
    assert st["last_error"] is None and st["assignment_revision"] == 3
    upgrades = site.host.nodeadm_calls("upgrade")
    assert len(upgrades) == 1
    assert upgrades[0][1] == "1.32"
    assert "pod-validation,node-validation" in upgrades[0]


def test_an_older_revision_is_ignored_with_an_event(site_factory: SiteFactory) -> None:
    s = site_factory(host_assignment=sample_assignment(revision=5))
    s.host.wait_phase("joined", 30)
    older = sample_assignment(revision=4)
    older["cluster"] = {**older["cluster"], "name": "another-cluster"}
    s.controller.set_assignment(s.uid, {**older, "drained": True})
    ignored = s.cmd.wait_for(
        lambda: [e for e in s.cmd.events("assignment") if e.get("action") == "ignored"], 10
    )
    assert ignored, s.cmd.events("assignment")
    assert ignored[0]["revision"] == 4 and ignored[0]["current"] == 5
    st = s.host.status()
    assert st["phase"] == "joined" and st["assignment_revision"] == 5
    assert s.host.nodeadm_calls("uninstall") == []


def test_collect_diagnostics_uploads_a_redacted_bundle(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    reply = site.run("collect-diagnostics", {}, timeout=30)
    assert reply["state"] == "succeeded", reply
    result = reply["result"]
    assert result["uploaded"] is True
    data = site.controller.bundles[result["bundle_id"]]
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    put = [r for r in site.controller.requests if r.method == "PUT"]
    assert put and put[0].status == 201
    assert put[0].headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        texts = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert {"status.json", "config.json", "checks.json", "state.json"} <= set(names), names
    assert any(n.startswith("logs/nodeadm-install.log") for n in names), names
    assert json.loads(texts["status.json"])["phase"] == "joined"
    secrets = [*site.secrets(), ACTIVATION_CODE]
    for name, blob in texts.items():
        for secret in secrets:
            assert secret.encode() not in blob, f"{name} holds a secret"
