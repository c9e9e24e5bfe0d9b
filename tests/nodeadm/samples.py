"""Shared assignments for the nodeadm tests, both `agent.testing.sample_assignment`: an SSM host
with every cluster field and two node labels, and an IAM Roles Anywhere host in another region
whose node IP nodeadm finds itself."""

from __future__ import annotations

import copy
from typing import Any

from agent.testing import ACTIVATION_CODE, ACTIVATION_ID, sample_assignment

__all__ = ["ACTIVATION_CODE", "ACTIVATION_ID", "IRA", "SSM", "doc"]

SSM: dict[str, Any] = sample_assignment(
    revision=3,
    cluster__api_server_endpoint="https://ABCDEF.gr7.us-west-2.eks.amazonaws.com",
    cluster__certificate_authority="LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
    kubelet__node_labels={"site": "store-12", "rack": "a"},
)

IRA: dict[str, Any] = sample_assignment(
    revision=4,
    cluster={"name": "edge-cluster", "region": "eu-west-1", "vpc_cidr": "10.100.0.0/16"},
    credential_provider="iam-ra",
    network={"remote_node_cidrs": ["10.200.0.0/16"]},
    kubelet={},
)


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
