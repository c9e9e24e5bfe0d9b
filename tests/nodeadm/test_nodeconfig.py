"""The NodeConfig rendered from an assignment: fields, kubelet flags, refusals, redaction."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from agent.core.assignment import parse_assignment
from agent.core.nodeconfig import dump_nodeconfig, redact_nodeconfig, render_nodeconfig
from agent.host.nodeconfig_file import write_nodeconfig
from tests.nodeadm.samples import ACTIVATION_CODE, ACTIVATION_ID, IRA, SSM, doc


def test_ssm_renders_cluster_credentials_and_flags() -> None:
    out = render_nodeconfig(parse_assignment(SSM))
    assert out["apiVersion"] == "node.eks.aws/v1alpha1"
    assert out["kind"] == "NodeConfig"
    assert out["spec"]["cluster"] == {
        "name": "eks-hybrid-demo",
        "region": "us-west-2",
        "apiServerEndpoint": "https://ABCDEF.gr7.us-west-2.eks.amazonaws.com",
        "certificateAuthority": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
        "cidr": "172.20.0.0/16",
    }
    assert out["spec"]["hybrid"] == {
        "ssm": {"activationCode": ACTIVATION_CODE, "activationId": ACTIVATION_ID}
    }
    assert out["spec"]["kubelet"]["flags"] == [
        "--node-labels=rack=a,site=store-12",
        "--node-ip=10.200.1.5",
    ]


def test_optional_cluster_fields_and_empty_kubelet_are_left_out() -> None:
    a = doc(SSM, cluster={"name": "c", "region": "us-east-1", "vpc_cidr": "10.0.0.0/16"})
    a = doc(a, network={"remote_node_cidrs": ["10.200.0.0/16"]}, kubelet={})
    out = render_nodeconfig(parse_assignment(a))
    assert out["spec"]["cluster"] == {"name": "c", "region": "us-east-1"}
    assert "kubelet" not in out["spec"]


def test_iam_roles_anywhere_renders_credentials_file_and_paths() -> None:
    out = render_nodeconfig(parse_assignment(IRA))
    assert out["spec"]["hybrid"] == {
        "enableCredentialsFile": True,
        "iamRolesAnywhere": {
            "nodeName": "store-42-node-1",
            "trustAnchorArn": "arn:aws:rolesanywhere:us-west-2:111122223333:trust-anchor/ta",
            "profileArn": "arn:aws:rolesanywhere:us-west-2:111122223333:profile/prof",
            "roleArn": "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole",
            "certificatePath": "/etc/iam/pki/server.pem",
            "privateKeyPath": "/etc/iam/pki/server.key",
        },
    }
    assert out["spec"]["cluster"] == {"name": "edge-cluster", "region": "eu-west-1"}


def test_taints_and_user_flags_come_after_ours() -> None:
    a = doc(
        IRA,
        kubelet={
            "node_labels": {"b": "2", "a": "1"},
            "taints": ["edge=true:NoSchedule", "gpu:NoExecute"],
            "flags": ["--max-pods=58"],
        },
    )
    flags = render_nodeconfig(parse_assignment(a))["spec"]["kubelet"]["flags"]
    assert flags == [
        "--node-labels=a=1,b=2",
        "--register-with-taints=edge=true:NoSchedule,gpu:NoExecute",
        "--max-pods=58",
    ]


@pytest.mark.parametrize(
    "flag", ["--hostname-override=node-1", "-hostname-override=x", "--hostname-override"]
)
def test_hostname_override_is_refused_by_name(flag: str) -> None:
    a = doc(SSM, kubelet={"flags": ["--max-pods=10", flag]})
    with pytest.raises(ValueError, match="hostname-override"):
        render_nodeconfig(parse_assignment(a))


def test_node_ip_flag_must_agree_with_the_network_section() -> None:
    same = doc(SSM, kubelet={"flags": ["--node-ip=10.200.1.5"]})
    assert render_nodeconfig(parse_assignment(same))["spec"]["kubelet"]["flags"] == [
        "--node-ip=10.200.1.5"
    ]
    other = doc(SSM, kubelet={"flags": ["--node-ip=10.200.9.9"]})
    with pytest.raises(ValueError, match="node_ip"):
        render_nodeconfig(parse_assignment(other))


def test_redaction_hides_only_the_activation_code() -> None:
    original = render_nodeconfig(parse_assignment(SSM))
    shown = redact_nodeconfig(original)
    assert shown["spec"]["hybrid"]["ssm"] == {
        "activationCode": "<redacted>",
        "activationId": ACTIVATION_ID,
    }
    assert original["spec"]["hybrid"]["ssm"]["activationCode"] == ACTIVATION_CODE
    assert ACTIVATION_CODE not in dump_nodeconfig(shown).decode()
    ira = render_nodeconfig(parse_assignment(IRA))
    assert redact_nodeconfig(ira) == ira


def test_dump_round_trips_in_document_order() -> None:
    original = render_nodeconfig(parse_assignment(SSM))
    data = dump_nodeconfig(original)
    assert data.startswith(b"apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n")
    assert yaml.safe_load(data) == original


def test_write_is_atomic_0600_and_creates_a_0755_parent(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "edge-agent" / "nodeconfig.yaml"
    write_nodeconfig(path, parse_assignment(SSM))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert yaml.safe_load(path.read_bytes()) == render_nodeconfig(parse_assignment(SSM))
    write_nodeconfig(path, parse_assignment(IRA))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["nodeconfig.yaml"]


def test_a_refused_assignment_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nodeconfig.yaml"
    with pytest.raises(ValueError, match="hostname-override"):
        write_nodeconfig(
            path, parse_assignment(doc(SSM, kubelet={"flags": ["--hostname-override=x"]}))
        )
    assert not path.exists()


def test_labels_kubelet_refuses_are_refused_in_the_assignment() -> None:
    # kubelet (cmd/kubelet/app/options, IsKubeletLabel) refuses these at start; aws/eks-hybrid
    # v1.0.20 internal/kubelet/config.go passes --node-labels through unchecked.
    from agent.core.assignment import AssignmentError

    for key in ("node-role.kubernetes.io/worker", "example.k8s.io/x", "kubernetes.io/role"):
        labels = {"site": "store-12", key: "true"}
        with pytest.raises(AssignmentError, match=r"kubelet\.node_labels") as e:
            parse_assignment(doc(SSM, kubelet={"node_labels": labels}))
        assert f"{key}: kubelet refuses" in str(e.value)
    allowed = {
        "topology.kubernetes.io/zone": "store-12",
        "node.kubernetes.io/exclude-from-external-load-balancers": "true",
        "kubelet.kubernetes.io/x": "y",
        "kubernetes.io/hostname": "h",
        "example.com/kubernetes.io": "ok",
    }
    a = parse_assignment(doc(SSM, kubelet={"node_labels": allowed}))
    assert render_nodeconfig(a)["spec"]["kubelet"]["flags"][0].startswith("--node-labels=")
    flag = parse_assignment(
        doc(SSM, kubelet={"flags": ["--node-labels=node-role.kubernetes.io/edge="]})
    )
    with pytest.raises(ValueError, match=r"node-role\.kubernetes\.io/edge: kubelet refuses"):
        render_nodeconfig(flag)
