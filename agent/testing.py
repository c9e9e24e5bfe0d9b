"""Test doubles for code that drives the agent's parts, shipped with it like `structlog.testing`.

`CapturingLog` stands in for the logger a part is handed (`agent.logs.Log`): structlog's own
`CapturingLogger`, which keeps every call, with lookups by event name, so a test asserts on
what was logged without parsing rendered lines. `sample_assignment` is the one example
assignment of the test suite, the demo and the benchmarks, in its wire form (what the
controller sends, what ``assignment_file`` holds); `sample_assignment_obj` is the same parsed.
Overrides use the wire names: ``revision=2``, ``kubernetes_version="1.32"``, ``drained=True``,
``credential_provider="iam-ra"`` (which swaps the ``ssm`` section for ``iam_roles_anywhere``),
and ``section__key=value`` for a nested field (``cluster__name="c1"``, ``network__node_ip=None``).

The agent itself never imports this module; tests/test_boundaries.py fails if it does.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from structlog.testing import CapturingLogger

from agent.core.assignment import Assignment, parse_assignment

__all__ = [
    "ACTIVATION_CODE",
    "ACTIVATION_ID",
    "CapturingLog",
    "sample_assignment",
    "sample_assignment_obj",
]

# Long and unusual enough that a secret scan of the logs finds it wherever it leaked.
ACTIVATION_CODE = "EXAMPLEactivationCode0123456789"
ACTIVATION_ID = "0a1b2c3d-1111-2222-3333-444455556666"


def _sample() -> dict[str, Any]:
    """The example assignment, built anew each call: no module-level document to mutate."""
    return {
        "revision": 1,
        "cluster": {
            "name": "eks-hybrid-demo",
            "region": "us-west-2",
            "vpc_cidr": "10.100.0.0/16",
            "service_cidr": "172.20.0.0/16",
            "kubernetes_version": "1.31",
        },
        "kubernetes_version": "1.31",
        "credential_provider": "ssm",
        "ssm": {"activation_id": ACTIVATION_ID, "activation_code": ACTIVATION_CODE},
        "network": {
            "remote_node_cidrs": ["10.200.0.0/16"],
            "remote_pod_cidrs": ["192.168.0.0/16"],
            "vpn_server_ip": "172.16.0.1",
            "node_ip": "10.200.1.5",
        },
        "kubelet": {"node_labels": {"site": "store-12"}},
        "containerd_source": "distro",
    }


def _iam_roles_anywhere() -> dict[str, Any]:
    """An example IAM Roles Anywhere section, built anew each call."""
    return {
        "node_name": "store-42-node-1",
        "trust_anchor_arn": "arn:aws:rolesanywhere:us-west-2:111122223333:trust-anchor/ta",
        "profile_arn": "arn:aws:rolesanywhere:us-west-2:111122223333:profile/prof",
        "role_arn": "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole",
        "certificate_path": "/etc/iam/pki/server.pem",
        "private_key_path": "/etc/iam/pki/server.key",
    }


def sample_assignment(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the example assignment, valid for `parse_assignment`, with ``overrides``.

    A top-level name replaces that field whole; ``a__b=value`` sets ``a.b`` (creating ``a``).
    ``credential_provider="iam-ra"`` also replaces the ``ssm`` section with an example
    ``iam_roles_anywhere`` one, unless either is given.
    """
    doc = _sample()
    credentials = {"ssm", "iam_roles_anywhere"} & overrides.keys()
    if overrides.get("credential_provider") == "iam-ra" and not credentials:
        del doc["ssm"]
        doc["iam_roles_anywhere"] = _iam_roles_anywhere()
    for name, value in overrides.items():
        *parents, leaf = name.split("__")
        node = doc
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = copy.deepcopy(value)
    return doc


def sample_assignment_obj(**overrides: Any) -> Assignment:
    """`sample_assignment` parsed: the `Assignment` the agent would act on."""
    return parse_assignment(sample_assignment(**overrides))


class CapturingLog(CapturingLogger):
    """structlog's `CapturingLogger`, which satisfies `agent.logs.Log`, with lookups by event.

    Each call is kept in ``calls`` as ``(method_name, args, kwargs)``: ``log.info("x", a=1)``
    gives ``("info", ("x",), {"a": 1})``.
    """

    def events(self, name: str, *, level: str | None = None) -> list[dict[str, Any]]:
        """The fields of each ``name`` event logged (at ``level``, if given), in order."""
        return [
            c.kwargs for c in self.calls if c.args[:1] == (name,) and level in (None, c.method_name)
        ]

    def dump(self) -> str:
        """Every call as one JSON text: for a failure message, or a scan for a secret."""
        return json.dumps([list(c) for c in self.calls], default=str)
