"""The doubles shipped in agent/testing.py: the sample assignment parses and takes overrides,
and the capturing logger keeps what it was told."""

from __future__ import annotations

from agent.testing import (
    ACTIVATION_CODE,
    CapturingLog,
    sample_assignment,
    sample_assignment_obj,
)


def test_the_sample_parses_as_an_ssm_host() -> None:
    a = sample_assignment_obj()
    assert (a.revision, a.kubernetes_version, a.credential_provider) == (1, "1.31", "ssm")
    assert a.ssm is not None and a.ssm.activation_code == ACTIVATION_CODE
    assert a.iam_roles_anywhere is None and not a.drained


def test_overrides_replace_fields_and_reach_nested_ones() -> None:
    a = sample_assignment_obj(
        revision=7, kubernetes_version="1.32", drained=True, cluster__name="c1", kubelet__taints=[]
    )
    assert (a.revision, a.kubernetes_version, a.drained, a.cluster.name) == (7, "1.32", True, "c1")
    assert a.cluster.region == "us-west-2" and a.kubelet.node_labels == {"site": "store-12"}
    assert sample_assignment(cluster={"name": "x"})["cluster"] == {"name": "x"}


def test_iam_roles_anywhere_swaps_the_credentials_section() -> None:
    doc = sample_assignment(credential_provider="iam-ra")
    assert "ssm" not in doc
    a = sample_assignment_obj(credential_provider="iam-ra", iam_roles_anywhere__node_name="store-9")
    assert a.iam_roles_anywhere is not None and a.node_name_hint == "store-9"


def test_each_sample_is_a_fresh_copy() -> None:
    first = sample_assignment()
    first["network"]["remote_node_cidrs"].append("10.0.0.0/8")
    assert sample_assignment()["network"]["remote_node_cidrs"] == ["10.200.0.0/16"]


def test_the_capturing_log_keeps_each_call_in_order() -> None:
    log = CapturingLog()
    log.info("a.started", n=1)
    log.warning("a.slow", n=2)
    log.info("a.slow", n=3)
    assert log.events("a.slow") == [{"n": 2}, {"n": 3}]
    assert log.events("a.slow", level="info") == [{"n": 3}]
    assert log.events("a.missing") == []
    assert [c.method_name for c in log.calls] == ["info", "warning", "info"]
    assert '"a.started"' in log.dump()
