"""The host's assignment (docs/api/openapi.yaml): which cluster to join, with which credentials.

Parsed from the controller's JSON or a local YAML/JSON file into a frozen `Assignment`.
Unknown fields are ignored (the controller may be newer than us); a missing or ill-typed
required field is an `AssignmentError` naming the field, which the lifecycle reports as
``bad_assignment`` without running anything. Versions are strings everywhere: YAML reads
``1.30`` unquoted as the number 1.3, so a number there is refused with a message to quote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.core.errors import AgentError
from agent.core.node_labels import refusal

# ASCII digits only, and fullmatch: `$` lets "1.31\n" through, `\d` fullwidth digits.
_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")


class AssignmentError(AgentError):
    """The assignment is invalid; ``field`` names the offending key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Cluster:
    name: str
    region: str
    vpc_cidr: str
    service_cidr: str | None = None
    kubernetes_version: str | None = None
    api_server_endpoint: str | None = None
    certificate_authority: str | None = None


@dataclass(frozen=True)
class Ssm:
    activation_id: str
    activation_code: str


@dataclass(frozen=True)
class IamRolesAnywhere:
    node_name: str
    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    certificate_path: str
    private_key_path: str


@dataclass(frozen=True)
class Network:
    remote_node_cidrs: tuple[str, ...]
    remote_pod_cidrs: tuple[str, ...] = ()
    vpn_server_ip: str | None = None
    node_ip: str | None = None


@dataclass(frozen=True)
class Kubelet:
    node_labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Assignment:
    revision: int
    cluster: Cluster
    kubernetes_version: str
    credential_provider: str
    network: Network
    ssm: Ssm | None = None
    iam_roles_anywhere: IamRolesAnywhere | None = None
    kubelet: Kubelet = field(default_factory=Kubelet)
    containerd_source: str = "distro"
    drained: bool = False
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def minor(self) -> str:
        """``1.31`` for ``1.31`` and ``1.31.2``: what nodeadm's tracker-less install records."""
        return ".".join(self.kubernetes_version.split(".")[:2])

    @property
    def node_name_hint(self) -> str | None:
        """The node name known before init: the IAM Roles Anywhere node name (SSM learns it)."""
        return self.iam_roles_anywhere.node_name if self.iam_roles_anywhere else None

    def identity(self) -> tuple[str, str, str]:
        """What a change of requires uninstall + fresh join: cluster, region, provider."""
        return (self.cluster.name, self.cluster.region, self.credential_provider)


class _Reader:
    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise AssignmentError(path or "assignment", f"must be an object, got {_kind(data)}")
        self.data: Mapping[str, object] = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def string(self, name: str) -> str:
        v = self.optional(name)
        if v is None:
            raise AssignmentError(self.key(name), "is required")
        if not v:
            raise AssignmentError(self.key(name), "must not be empty")
        return v

    def optional(self, name: str) -> str | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            raise AssignmentError(self.key(name), f"must be a string, got {_kind(v)}")
        return v

    def version(self, name: str) -> str:
        v = self.optional_version(name)
        if v is None:
            raise AssignmentError(self.key(name), "is required")
        return v

    def optional_version(self, name: str) -> str | None:
        v = self.data.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise AssignmentError(
                self.key(name),
                f'must be a string such as "1.31", got the number {v!r}; quote it in YAML '
                "(1.30 unquoted is read as 1.3)",
            )
        s = self.optional(name)
        if s is not None and not _VERSION.fullmatch(s):
            raise AssignmentError(self.key(name), f'must look like "1.31" or "1.31.2", got {s!r}')
        return s

    def strings(self, name: str, *, required: bool = False) -> tuple[str, ...]:
        v = self.data.get(name)
        if v is None:
            if required:
                raise AssignmentError(self.key(name), "is required")
            return ()
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise AssignmentError(self.key(name), "must be a list of strings")
        if required and not v:
            raise AssignmentError(self.key(name), "must not be empty")
        return tuple(v)

    def obj(self, name: str) -> _Reader:
        v = self.data.get(name)
        if v is None:
            raise AssignmentError(self.key(name), "is required")
        return _Reader(v, self.key(name))

    def optional_obj(self, name: str) -> _Reader | None:
        v = self.data.get(name)
        return None if v is None else _Reader(v, self.key(name))


def _kind(v: object) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def parse_assignment(data: object) -> Assignment:
    """Validate a decoded assignment document."""
    top = _Reader(data, "")
    revision = top.data.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise AssignmentError("revision", f"must be an integer, got {_kind(revision)}")
    c = top.obj("cluster")
    cluster = Cluster(
        name=c.string("name"),
        region=c.string("region"),
        vpc_cidr=c.string("vpc_cidr"),
        service_cidr=c.optional("service_cidr"),
        kubernetes_version=c.optional_version("kubernetes_version"),
        api_server_endpoint=c.optional("api_server_endpoint"),
        certificate_authority=c.optional("certificate_authority"),
    )
    provider = top.string("credential_provider")
    if provider not in ("ssm", "iam-ra"):
        raise AssignmentError("credential_provider", f"must be ssm or iam-ra, got {provider!r}")
    ssm = ira = None
    if provider == "ssm":
        s = top.obj("ssm")
        ssm = Ssm(
            activation_id=s.string("activation_id"), activation_code=s.string("activation_code")
        )
    else:
        r = top.obj("iam_roles_anywhere")
        ira = IamRolesAnywhere(
            node_name=r.string("node_name"),
            trust_anchor_arn=r.string("trust_anchor_arn"),
            profile_arn=r.string("profile_arn"),
            role_arn=r.string("role_arn"),
            certificate_path=r.string("certificate_path"),
            private_key_path=r.string("private_key_path"),
        )
    n = top.obj("network")
    network = Network(
        remote_node_cidrs=n.strings("remote_node_cidrs", required=True),
        remote_pod_cidrs=n.strings("remote_pod_cidrs"),
        vpn_server_ip=n.optional("vpn_server_ip"),
        node_ip=n.optional("node_ip"),
    )
    kubelet = Kubelet()
    k = top.optional_obj("kubelet")
    if k is not None:
        labels = k.data.get("node_labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in labels.items()
        ):
            raise AssignmentError("kubelet.node_labels", "must be a map of strings to strings")
        if (problem := refusal(labels)) is not None:
            raise AssignmentError("kubelet.node_labels", problem)
        taints = k.strings("taints")
        for t in taints:
            if not re.match(r"^[^=:\s]+(=[^:\s]*)?:(NoSchedule|PreferNoSchedule|NoExecute)$", t):
                raise AssignmentError("kubelet.taints", f"{t!r} is not key=value:Effect")
        kubelet = Kubelet(node_labels=dict(labels), taints=taints, flags=k.strings("flags"))
    source = top.data.get("containerd_source") or "distro"
    if not isinstance(source, str) or source not in ("distro", "docker", "none"):
        raise AssignmentError(
            "containerd_source", f"must be distro, docker or none, got {source!r}"
        )
    drained = top.data.get("drained", False)
    if drained is None:
        drained = False
    if not isinstance(drained, bool):
        raise AssignmentError("drained", f"must be true or false, got {_kind(drained)}")
    return Assignment(
        revision=revision,
        cluster=cluster,
        kubernetes_version=top.version("kubernetes_version"),
        credential_provider=provider,
        network=network,
        ssm=ssm,
        iam_roles_anywhere=ira,
        kubelet=kubelet,
        containerd_source=source,
        drained=drained,
        raw=dict(top.data),
    )
