"""The NodeConfig nodeadm reads, rendered from the host's `Assignment` (docs/architecture.md).

`render_nodeconfig` is a pure translation into nodeadm's ``node.eks.aws/v1alpha1`` document:
cluster, hybrid credentials (SSM activation or IAM Roles Anywhere) and kubelet flags built
from the assignment's labels, taints and node IP. It refuses what nodeadm's strict validator
would refuse later on the host, so a bad assignment fails here with a clear message rather
than minutes into a join. `dump_nodeconfig` serialises it, `redact_nodeconfig` makes a copy
safe to show (the activation code is a credential). Writing it to the host is
agent/host/nodeconfig_file.py's job.
"""

from __future__ import annotations

from typing import Any

import yaml

from agent.core.assignment import Assignment
from agent.core.node_labels import refusal
from agent.core.redact import scrub

API_VERSION = "node.eks.aws/v1alpha1"
KIND = "NodeConfig"


def _flag_name(flag: str) -> str:
    """``hostname-override`` for ``--hostname-override=x``, ``-hostname-override`` and so on.

    Go's flag package accepts one or two dashes, so both spellings name the same flag.
    """
    return flag.lstrip("-").split("=", 1)[0].strip()


def _kubelet_flags(a: Assignment) -> list[str]:
    user = list(a.kubelet.flags)
    names = {_flag_name(f): f for f in user}
    if "hostname-override" in names:
        # nodeadm sets --hostname-override itself (to the SSM instance id or IRA node name)
        # and its static validation rejects the whole NodeConfig when a user sets it.
        raise ValueError(
            f"kubelet.flags: {names['hostname-override']!r} is not allowed: nodeadm sets "
            "--hostname-override itself and refuses a NodeConfig that sets it"
        )
    for flag in user:
        if _flag_name(flag) == "node-labels":
            keys = [kv.split("=", 1)[0] for kv in flag.split("=", 1)[-1].split(",") if kv]
            if (problem := refusal(keys)) is not None:
                raise ValueError(f"kubelet.flags {flag!r}: {problem}")
    derived: list[str] = []
    labels = a.kubelet.node_labels
    if labels:
        derived.append("--node-labels=" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)))
    if a.kubelet.taints:
        derived.append("--register-with-taints=" + ",".join(a.kubelet.taints))
    node_ip = a.network.node_ip
    if node_ip:
        given = names.get("node-ip")
        if given is not None and given.split("=", 1)[-1].strip() != node_ip:
            # nodeadm validates --node-ip as a single IPv4; two different values would leave
            # the node's identity to flag ordering, so the assignment must agree with itself.
            raise ValueError(f"kubelet.flags: {given!r} contradicts network.node_ip {node_ip!r}")
        if given is None:
            derived.append(f"--node-ip={node_ip}")
    # Ours first, the assignment's own flags last: nodeadm appends user flags after its
    # own and kubelet lets the last occurrence win, so an explicit flag stays in charge.
    return derived + user


def render_nodeconfig(a: Assignment) -> dict[str, Any]:
    """The NodeConfig document for ``a``; `ValueError` when nodeadm would refuse it."""
    cluster: dict[str, Any] = {"name": a.cluster.name, "region": a.cluster.region}
    if a.cluster.api_server_endpoint:
        cluster["apiServerEndpoint"] = a.cluster.api_server_endpoint
    if a.cluster.certificate_authority:
        cluster["certificateAuthority"] = a.cluster.certificate_authority
    if a.cluster.service_cidr:
        cluster["cidr"] = a.cluster.service_cidr
    hybrid: dict[str, Any]
    if a.credential_provider == "ssm":
        if a.ssm is None:
            raise ValueError("ssm: is required when credential_provider is ssm")
        hybrid = {
            "ssm": {
                "activationCode": a.ssm.activation_code,
                "activationId": a.ssm.activation_id,
            }
        }
    elif a.credential_provider == "iam-ra":
        ira = a.iam_roles_anywhere
        if ira is None:
            raise ValueError("iam_roles_anywhere: is required when credential_provider is iam-ra")
        hybrid = {
            # The credentials file lets kubelet's exec plugins and the ECR provider share
            # one refreshed set of credentials (aws_signing_helper_update.service).
            "enableCredentialsFile": True,
            "iamRolesAnywhere": {
                "nodeName": ira.node_name,
                "trustAnchorArn": ira.trust_anchor_arn,
                "profileArn": ira.profile_arn,
                "roleArn": ira.role_arn,
                "certificatePath": ira.certificate_path,
                "privateKeyPath": ira.private_key_path,
            },
        }
    else:
        raise ValueError(f"credential_provider: unknown provider {a.credential_provider!r}")
    spec: dict[str, Any] = {"cluster": cluster, "hybrid": hybrid}
    flags = _kubelet_flags(a)
    if flags:
        spec["kubelet"] = {"flags": flags}
    return {"apiVersion": API_VERSION, "kind": KIND, "spec": spec}


def dump_nodeconfig(doc: dict[str, Any]) -> bytes:
    """YAML bytes in the document's own key order (apiVersion, kind, spec), as people write it."""
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.encode("utf-8")


def redact_nodeconfig(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to show, for logs, diagnostics and the CLI: the SSM ``activationCode``
    (and any other secret-named key) masked by `agent.core.redact`'s rules."""
    shown: dict[str, object] = scrub(doc, ())
    return shown
