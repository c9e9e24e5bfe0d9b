"""The agent's real traffic conforms to docs/api: what it sends the controller, what it
publishes on every topic, and which assignments it accepts or refuses.

Every e2e test already checks everything its agent published (tests/e2e/conftest.py); the
test here makes sure one run covers every topic, every reply state and several event types,
and that the checker does catch a drift. The assignment schema and the agent's own parser
must agree on what is valid: a table of good and bad assignments goes through both.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.assignment import AssignmentError, parse_assignment
from agent.testing import sample_assignment
from devtools.commander import Received
from tests.api.schemas import API, mqtt_drift, validate
from tests.e2e.conftest import Site, SiteFactory


def _post_register(site: Site, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 - loopback, the devtools controller
        f"{site.controller.url}/v1/hosts/register",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {site.controller.registration_token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as answer:  # noqa: S310
        return dict(json.loads(answer.read()))


def test_a_run_covers_every_topic_and_all_of_it_conforms(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    assert site.run("ping")["state"] == "succeeded"
    got = site.run("get-status")
    assert validate("status", got["result"]) == []
    assert site.run("run-checks", {"only": ["system.swap"]})["state"] == "succeeded"
    assert site.run("no-such-command")["error"]["code"] == "unknown_command"
    assert site.run("ping", issued_at=1_600_000_000.0)["error"]["code"] == "expired"
    site.cmd.wait_for(site.cmd.health, 10)

    records, own = site.cmd.history()
    seen = {r.suffix for r in records}
    assert {"availability", "status", "health", "events", "replies"} <= seen
    states = {r.json().get("state") for r in records if r.suffix == "replies"}
    assert {"accepted", "succeeded", "rejected"} <= states
    types = {r.json().get("type") for r in records if r.suffix == "events"}
    assert {"phase", "check", "nodeadm", "registration", "assignment"} <= types
    assert mqtt_drift(records, own) == []
    # The envelopes the agent executed conform to the command schema; the refused one too
    # (it is well formed, only expired).
    sent = [json.loads(payload) for suffix, payload in own if suffix == "commands"]
    assert len(sent) == 5
    for envelope in sent:
        assert validate("command", envelope) == []

    # What the controller received and answered.
    assert site.controller.registrations
    for body in site.controller.registrations:
        assert validate("register-request", body) == []
    answer = _post_register(site, site.controller.registrations[0])
    assert validate("register-response", answer) == []


def test_the_drift_check_catches_an_undocumented_field_and_a_wrong_qos() -> None:
    good = {"state": "online", "session": 3, "ts": "2026-12-04T18:00:00.000Z"}
    drifted = {**good, "extra": 1}
    records = [
        Received(0.0, "edge-a", "availability", json.dumps(good).encode(), False, 1),
        Received(0.0, "edge-a", "availability", json.dumps(drifted).encode(), False, 1),
        Received(0.0, "edge-a", "status", b"{}", False, 0),
        Received(0.0, "edge-a", "metrics", b"{}", False, 1),
    ]
    problems = mqtt_drift(records, set())
    assert any("'extra' was unexpected" in p for p in problems)
    assert any("status: QoS 0" in p for p in problems)
    assert any("status <root>: 'uid' is a required property" in p for p in problems)
    assert any("metrics: a topic the documents do not list" in p for p in problems)
    # What a test published itself is not the agent's.
    assert mqtt_drift(records[1:2], {("availability", records[1].payload)}) == []


def test_a_refused_assignment_is_refused_by_the_schema_too(site_factory: SiteFactory) -> None:
    s = site_factory()
    s.host.wait_phase("joined", 30)
    bad = sample_assignment(revision=2, kubernetes_version=1.3)
    assert validate("assignment", bad) != []
    s.controller.set_assignment(s.uid, bad)
    st = s.wait_status(lambda st: (st.get("last_error") or {}).get("code") == "bad_assignment")
    assert st["assignment_revision"] == 1
    assert validate("assignment", s.controller.assignment_for(s.uid)) != []
    # The one it accepted conforms, and so does the status it left behind.
    assert validate("assignment", sample_assignment()) == []
    stripped = {k: v for k, v in st.items() if k not in ("running", "pid", "running_since")}
    assert validate("status", stripped) == []


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    a = copy.deepcopy(base or sample_assignment())
    *parents, last = path.split(".")
    node = a
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return a


_DELETE = object()
IAM_RA = sample_assignment(credential_provider="iam-ra")

ACCEPTED = {
    "full": sample_assignment(),
    "iam-ra": IAM_RA,
    "unknown fields ignored": _with("future_field", {"x": 1}),
    "patch version": _with("kubernetes_version", "1.31.2"),
    "nulls for optionals": _with("kubelet", None, _with("network.node_ip", None)),
    "drained": _with("drained", True),
    "containerd docker": _with("containerd_source", "docker"),
}
REFUSED = {
    "version as a number": _with("kubernetes_version", 1.3),
    "version not a version": _with("kubernetes_version", "latest"),
    "revision a string": _with("revision", "3"),
    "revision a boolean": _with("revision", True),
    "no cluster name": _with("cluster.name", _DELETE),
    "empty region": _with("cluster.region", ""),
    "unknown provider": _with("credential_provider", "password"),
    "ssm without its object": _with("ssm", _DELETE),
    "iam-ra without its object": _with("iam_roles_anywhere", _DELETE, IAM_RA),
    "no remote node cidrs": _with("network.remote_node_cidrs", []),
    "a cidr that is not a string": _with("network.remote_node_cidrs", [10]),
    "bad taint": _with("kubelet.taints", ["dedicated"]),
    "label not a string": _with("kubelet.node_labels", {"a": 1}),
    "containerd source unknown": _with("containerd_source", "podman"),
    "drained yes": _with("drained", "yes"),
    "not an object": ["revision", 1],
}


def _agent_accepts(doc: Any) -> bool:
    try:
        parse_assignment(doc)
    except AssignmentError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_schema_and_agent_accept_the_same(name: str) -> None:
    assert _agent_accepts(ACCEPTED[name])
    assert validate("assignment", ACCEPTED[name]) == []


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_schema_and_agent_refuse_the_same(name: str) -> None:
    assert not _agent_accepts(REFUSED[name])
    assert validate("assignment", REFUSED[name]) != []


def test_the_shipped_assignment_example_is_valid() -> None:
    path = Path(API).parent / "assignment.example.yaml"
    doc = yaml.safe_load(path.read_text())
    assert validate("assignment", doc) == []
    a = parse_assignment(doc)
    assert a.kubernetes_version == "1.31" and a.credential_provider == "ssm"
