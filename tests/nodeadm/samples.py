"""Shared assignments for the nodeadm tests: one SSM host, one IAM Roles Anywhere host."""

from __future__ import annotations

import copy
from typing import Any

ACTIVATION_CODE = "EXAMPLEactivationCode0123456789"
ACTIVATION_ID = "0a1b2c3d-1111-2222-3333-444455556666"

SSM: dict[str, Any] = {
    "revision": 3,
    "cluster": {
        "name": "eks-hybrid-demo",
        "region": "us-west-2",
        "vpc_cidr": "10.100.0.0/16",
        "service_cidr": "172.20.0.0/16",
        "api_server_endpoint": "https://ABCDEF.gr7.us-west-2.eks.amazonaws.com",
        "certificate_authority": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
    },
    "kubernetes_version": "1.31",
    "credential_provider": "ssm",
    "ssm": {"activation_id": ACTIVATION_ID, "activation_code": ACTIVATION_CODE},
    "network": {"remote_node_cidrs": ["10.200.0.0/16"], "node_ip": "10.200.1.5"},
    "kubelet": {"node_labels": {"site": "store-12", "rack": "a"}, "taints": [], "flags": []},
}

IRA: dict[str, Any] = {
    "revision": 4,
    "cluster": {"name": "edge-cluster", "region": "eu-west-1", "vpc_cidr": "10.100.0.0/16"},
    "kubernetes_version": "1.31",
    "credential_provider": "iam-ra",
    "iam_roles_anywhere": {
        "node_name": "store-42-node-1",
        "trust_anchor_arn": "arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/ta",
        "profile_arn": "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/prof",
        "role_arn": "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole",
        "certificate_path": "/etc/iam/pki/server.pem",
        "private_key_path": "/etc/iam/pki/server.key",
    },
    "network": {"remote_node_cidrs": ["10.200.0.0/16"]},
}


def doc(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with changes at ``__``-separated paths (``kubelet__flags=[...]``)."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out
