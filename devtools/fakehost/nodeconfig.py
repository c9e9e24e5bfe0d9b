"""NodeConfig as the fake nodeadm reads it: the `-c` URI, strict decoding, static validation.

nodeadm decodes the NodeConfig strictly (an unknown field is an error, a wrong type is an error) and
then runs its hybrid validator (aws/eks-hybrid v1.0.20: internal/node/hybrid/validator.go). This
module does the same, with nodeadm's error texts where they are known, so an agent that renders a
bad NodeConfig fails here as it would on a real host. IAM Roles Anywhere files are read under the
fake root.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

API_VERSION = "node.eks.aws/v1alpha1"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

ANY = "any"
STR = "string"
BOOL = "bool"
STRINGS = "[]string"
MAP = "map"
# The JSON field names of hybrid nodeadm's internal NodeConfig (aws/eks-hybrid v1.0.20
# internal/api/types.go), which file:// sources decode strictly into: nested dicts are
# structs, strings leaf types. EC2 nodeadm's fields (featureGates, containerd's
# baseRuntimeSpec, localStorage's mountPath and disabledMounts) are not there: hybrid
# nodeadm refuses them as unknown.
SCHEMA: dict[str, Any] = {
    "apiVersion": STR,
    "kind": STR,
    "metadata": MAP,
    "status": {
        "instance": {
            "id": STR,
            "region": STR,
            "type": STR,
            "availabilityZone": STR,
            "mac": STR,
            "privateDnsName": STR,
        },
        "hybrid": {"nodeName": STR},
        "default": {"sandboxImage": STR},
    },
    "spec": {
        "cluster": {
            "name": STR,
            "region": STR,
            "apiServerEndpoint": STR,
            "certificateAuthority": STR,
            "cidr": STR,
            "enableOutpost": BOOL,
            "id": STR,
        },
        "containerd": {"config": STR},
        "instance": {"localStorage": {"strategy": STR}},
        "kubelet": {"config": MAP, "flags": STRINGS},
        "hybrid": {
            "enableCredentialsFile": BOOL,
            "ssm": {"activationCode": STR, "activationId": STR},
            "iamRolesAnywhere": {
                "nodeName": STR,
                "trustAnchorArn": STR,
                "profileArn": STR,
                "roleArn": STR,
                "awsConfigPath": STR,
                "certificatePath": STR,
                "privateKeyPath": STR,
            },
        },
    },
}
IRA_DEFAULTS = {
    "awsConfigPath": "/etc/aws/hybrid/config",
    "certificatePath": "/etc/iam/pki/server.pem",
    "privateKeyPath": "/etc/iam/pki/server.key",
}


class ConfigError(Exception):
    """The NodeConfig could not be read, decoded or validated; the text is nodeadm's error."""


@dataclass(frozen=True)
class NodeConfig:
    """The decoded document plus the facts the fake acts on."""

    doc: dict[str, Any]
    source: str

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.doc.get("spec") or {})

    def section(self, *keys: str) -> dict[str, Any]:
        value: Any = self.spec
        for key in keys:
            value = (value or {}).get(key)
        return dict(value or {})

    @property
    def cluster(self) -> dict[str, Any]:
        return self.section("cluster")

    @property
    def provider(self) -> str:
        return "ssm" if self.section("hybrid").get("ssm") is not None else "iam-ra"

    @property
    def ssm(self) -> dict[str, Any]:
        return self.section("hybrid", "ssm")

    @property
    def iam_ra(self) -> dict[str, Any]:
        return IRA_DEFAULTS | self.section("hybrid", "iamRolesAnywhere")

    @property
    def kubelet_flags(self) -> list[str]:
        return list(self.section("kubelet").get("flags") or [])

    def flag_value(self, flag: str) -> str:
        """The last `--flag=value` among the kubelet flags, as nodeadm's extractFlagValue."""
        value = ""
        for arg in self.kubelet_flags:
            if arg.startswith(f"--{flag}="):
                value = arg.removeprefix(f"--{flag}=")
        return value


def load(uri: str, *, cwd: Path | None = None) -> NodeConfig:
    """Read and strictly decode the NodeConfig named by a `-c` URI."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ConfigError(f"unsupported scheme: {uri.partition(':')[0] if ':' in uri else ''}")
    if scheme == "imds":
        # Hybrid hosts have no instance metadata service; this is what nodeadm then reports.
        raise ConfigError(
            "operation error ec2imds: GetUserData, request canceled, context deadline exceeded"
        )
    if scheme != "file":
        raise ConfigError(f"unsupported scheme: {scheme}")
    # file:///abs/path is absolute; file://root/x.yaml is the relative path root/x.yaml.
    path = Path(rest) if rest.startswith("/") else (cwd or Path.cwd()) / rest
    if path.is_dir():
        raise ConfigError(f"read {rest}: is a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"open {rest}: no such file or directory") from None
    except OSError as exc:
        raise ConfigError(f"open {rest}: {exc.strerror}") from None
    return decode(text, source=uri)


def decode(text: str, *, source: str = "") -> NodeConfig:
    """Strictly decode NodeConfig YAML."""
    # PyYAML costs a noticeable share of a fake run's start-up; only config readers pay it.
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"failed to decode NodeConfig: {exc}".replace("\n", " ")) from None
    if not isinstance(doc, dict):
        raise ConfigError("failed to decode NodeConfig: Object 'Kind' is missing in document")
    kind = doc.get("kind")
    if not kind:
        raise ConfigError("failed to decode NodeConfig: Object 'Kind' is missing in document")
    if doc.get("apiVersion") != API_VERSION or kind != "NodeConfig":
        raise ConfigError(
            f'failed to decode NodeConfig: no kind "{kind}" is registered for version '
            f'"{doc.get("apiVersion")}" in scheme "pkg/runtime/scheme.go:100"'
        )
    _check(doc, SCHEMA, "")
    return NodeConfig(doc, source)


def _check(value: Any, schema: Any, path: str) -> None:
    if value is None:
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            _type_error(value, "struct", path)
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            if key not in schema:
                # sigs.k8s.io/yaml UnmarshalStrict over encoding/json: the field, not its path.
                raise ConfigError(
                    f'error unmarshaling JSON: while decoding JSON: json: unknown field "{key}"'
                )
            _check(child, schema[key], child_path)
        return
    expected = {STR: str, BOOL: bool, MAP: dict}.get(schema)
    if expected is not None and not isinstance(value, expected):
        _type_error(value, schema, path)
    if schema == STRINGS and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        _type_error(value, schema, path)


def _type_error(value: Any, expected: str, path: str) -> None:
    got = {bool: "bool", int: "number", float: "number", str: "string", list: "array"}.get(
        type(value), "object"
    )
    raise ConfigError(
        f"failed to decode NodeConfig: json: cannot unmarshal {got} into Go struct field "
        f"{path} of type {expected}"
    )


def validate(config: NodeConfig, root: Path, *, now: datetime | None = None) -> None:
    """nodeadm's static hybrid validation (aws/eks-hybrid v1.0.20:
    internal/node/hybrid/validator.go); raise ConfigError on the first fault."""
    cluster = config.cluster
    if not cluster.get("name"):
        raise ConfigError("Name is missing in cluster configuration")
    if not cluster.get("region"):
        raise ConfigError("Region is missing in cluster configuration")
    ca = cluster.get("certificateAuthority")
    if ca:
        try:
            base64.b64decode(ca, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                "failed to decode NodeConfig: illegal base64 data in spec.cluster.certificateAuthority"
            ) from None
    override = config.flag_value("hostname-override")
    if override:
        raise ConfigError(
            "hostname-override kubelet flag is not supported for hybrid nodes but found "
            f"override: {override}"
        )
    hybrid = config.section("hybrid")
    has_ssm = hybrid.get("ssm") is not None
    has_ira = hybrid.get("iamRolesAnywhere") is not None
    if not has_ssm and not has_ira:
        raise ConfigError(
            "Either IAMRolesAnywhere or SSM must be provided for hybrid node configuration"
        )
    if has_ssm and has_ira:
        raise ConfigError(
            "Only one of IAMRolesAnywhere or SSM must be provided for hybrid node configuration"
        )
    if has_ssm:
        _validate_ssm(config.ssm)
    else:
        _validate_iam_ra(config.iam_ra, root, now or datetime.now(timezone.utc))
    if any(a.startswith("--node-ip=") for a in config.kubelet_flags):
        _validate_node_ip(config.flag_value("node-ip"))


def _validate_ssm(ssm: dict[str, Any]) -> None:
    code = ssm.get("activationCode") or ""
    activation_id = ssm.get("activationId") or ""
    if not code:
        raise ConfigError("ActivationCode is missing in hybrid ssm configuration")
    if not activation_id:
        raise ConfigError("ActivationID is missing in hybrid ssm configuration")
    # nodeadm prints the activation code itself here (the agent scrubs it from what it keeps).
    if not 20 <= len(code) <= 250:
        raise ConfigError(f"invalid ActivationCode format: {code}. Must be 20-250 characters")
    if not UUID.match(activation_id):
        raise ConfigError(
            f"invalid ActivationID format: {activation_id}. Must be in format: "
            "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        )


def _validate_iam_ra(ira: dict[str, Any], root: Path, now: datetime) -> None:
    for key, label in (
        ("roleArn", "RoleARN"),
        ("profileArn", "ProfileARN"),
        ("trustAnchorArn", "TrustAnchorARN"),
    ):
        if not ira.get(key):
            raise ConfigError(f"{label} is missing in hybrid iam roles anywhere configuration")
    node_name = ira.get("nodeName") or ""
    if not node_name:
        raise ConfigError("NodeName can't be empty in hybrid iam roles anywhere configuration")
    if len(node_name) > 64:
        raise ConfigError(
            "NodeName can't be longer than 64 characters in hybrid iam roles anywhere configuration"
        )
    cert_path = str(ira["certificatePath"])
    key_path = str(ira["privateKeyPath"])
    cert_file = root / cert_path.lstrip("/")
    if not cert_file.is_file():
        raise ConfigError(f"IAM Roles Anywhere certificate {cert_path} not found")
    if not (root / key_path.lstrip("/")).is_file():
        raise ConfigError(f"IAM Roles Anywhere private key {key_path} not found")
    not_before, not_after = certificate_validity(cert_file.read_bytes(), cert_path)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    if now < not_before or now > not_after:
        relation = (
            f"before {not_before.strftime(stamp)}"
            if now < not_before
            else f"after {not_after.strftime(stamp)}"
        )
        raise ConfigError(
            f"validating IAM Roles Anywhere certificate {cert_path}: x509: certificate has "
            f"expired or is not yet valid: current time {now.strftime(stamp)} is {relation}; "
            "check the host clock (clock skew) and the certificate's validity period"
        )


def _validate_node_ip(value: str) -> None:
    # internal/network/utils.go ExtractNodeIPFromFlags (run by node-ip-validation).
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is None:
        raise ConfigError(f"invalid ip {value} in --node-ip flag. only 1 IPv4 address is allowed")
    if address.version != 4:
        raise ConfigError(f"invalid IPv6 address {value} in --node-ip flag. only IPv4 is supported")


def certificate_validity(pem: bytes, name: str) -> tuple[datetime, datetime]:
    """notBefore and notAfter of the first PEM certificate, read from its DER by hand."""
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ConfigError(f"parsing IAM Roles Anywhere certificate {name}: no PEM data found")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
        certificate = _children(der, 0, len(der))[0]
        tbs = _children(der, certificate[1], certificate[2])[0]
        fields = _children(der, tbs[1], tbs[2])
        # TBSCertificate: [0] version (optional), serial, signature, issuer, validity, ...
        index = 4 if fields[0][0] == 0xA0 else 3
        validity = fields[index]
        times = _children(der, validity[1], validity[2])
        return _der_time(der, times[0]), _der_time(der, times[1])
    except (binascii.Error, ValueError, IndexError):
        raise ConfigError(
            f"parsing IAM Roles Anywhere certificate {name}: x509: malformed certificate"
        ) from None


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, content start, content end) of each DER element between start and end."""
    items = []
    pos = start
    while pos < end:
        tag = der[pos]
        length = der[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(der[pos : pos + count], "big")
            pos += count
        if pos + length > end:
            raise ValueError("truncated DER")
        items.append((tag, pos, pos + length))
        pos += length
    return items


def _der_time(der: bytes, item: tuple[int, int, int]) -> datetime:
    tag, start, end = item
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 50-99 are 19xx
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)
