"""The agent's configuration: every key with its default, parsed once into frozen, typed objects.

Each section is a frozen dataclass whose fields are the keys: the annotation is the type (a
``Literal`` lists the choices), the default is written once, beside it, and `rule` metadata
holds bounds and shape checks; `agent.core.config_rules` reads a document by these fields.
`parse_config` is pure: it takes the loaded document, where each value came from, and an
optional file-readability probe; `agent.configfile` reads the file and the environment.
Every problem in a document is reported at once, each naming its key path. Keys beyond the
published key table are marked "extension" below and in config.example.yaml.
"""

# No `from __future__ import annotations` here: the reader takes each field's type from
# `dataclasses.fields`, which must be the type itself, not its text (evaluating the text
# on every parse made it ten times slower).

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.core.config_rules import ConfigError, ConfigMissing, Problem, Reader, kind, rule
from agent.core.redact import scrub

__all__ = [
    "EKS_BIND_MOUNTS",
    "SUPPORTED_K8S",
    "Config",
    "ConfigError",
    "ConfigMissing",
    "Problem",
    "parse_config",
]

EKS_BIND_MOUNTS: tuple[str, ...] = (
    "/eks-hybrid",
    "/etc/aws",
    "/etc/containerd",
    "/etc/eks",
    "/etc/iam",
    "/etc/modules-load.d",
    "/var/lib/amazon",
)
SUPPORTED_K8S: tuple[str, ...] = tuple(f"1.{m}" for m in range(30, 37))
_MINOR = re.compile(r"^1\.\d+$")
POSITIVE = rule(gt=0)
NOT_NEGATIVE = rule(ge=0)


def _http_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, got {url!r}"
    return None


def _uid(uid: str) -> str | None:
    return None if 1 <= len(uid) <= 128 else "must be 1-128 characters"


def _topic_prefix(prefix: str) -> str | None:
    if not prefix or any(c in prefix for c in "#+") or prefix.endswith("/"):
        return "must be a topic without wildcards or a trailing /"
    return None


def _absolute_paths(paths: tuple[str, ...]) -> str | None:
    bad = [p for p in paths if not p.startswith("/")]
    return f"must hold absolute paths, got {bad[0]!r}" if bad else None


def _minors(versions: tuple[str, ...]) -> str | None:
    bad = [v for v in versions if not _MINOR.match(v)]
    return f'entries must look like "1.31", got {bad[0]!r}' if bad else None


def _port(port: int) -> str | None:
    return None if 1 <= port <= 65535 else f"must be a port of 1-65535, got {port}"


def _program(name: str) -> str | None:
    return None if name else "must not be empty"


def _listen(text: str) -> str | None:
    """``host:port`` on a loopback or explicit address: never every interface by accident."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f'must be "host:port" with a port of 1-65535, got {text!r}'
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"the host must be localhost or an IP address, got {host!r}"
    if address.is_unspecified:
        return f"the host must be an explicit address, not {host} (every interface)"
    return None


def _prom(path: Path) -> str | None:
    # node_exporter's textfile collector reads only *.prom; any other name is silently unseen.
    return None if path.suffix == ".prom" else f"must end in .prom, got {str(path)!r}"


def _pair(values: Mapping[str, object]) -> Iterator[tuple[str, str]]:
    if (values.get("client_cert_file") is None) != (values.get("client_key_file") is None):
        yield "client_key_file", "client_cert_file and client_key_file go together"


def _program_field(default: str) -> str:
    return field(default=default, metadata=rule(check=_program))


@dataclass(frozen=True)
class HostConfig:
    uid: str | None = field(default=None, metadata=rule(check=_uid))
    mode: Literal["agent", "appliance"] = "agent"
    labels: Mapping[str, str] = field(default_factory=dict)
    root: Path = Path("/")


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class ControllerConfig:
    url: str = field(metadata=rule(check=_http_url))
    registration_token_file: Path
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    timeout_s: float = field(default=10.0, metadata=POSITIVE)
    max_backoff_s: float = field(default=300.0, metadata=POSITIVE)
    assignment_poll_s: float = field(default=30.0, metadata=POSITIVE)

    @staticmethod
    def complete(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
        if "url" in values:
            values["url"] = values["url"].rstrip("/")
        yield from _pair(values)


@dataclass(frozen=True)
class MqttConfig:
    url: str
    host: str = field(metadata=rule(derived=True))
    port: int = field(metadata=rule(derived=True))
    tls: bool = field(metadata=rule(derived=True))
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    topic_prefix: str = field(default="edge/v1", metadata=rule(check=_topic_prefix))
    keepalive_s: int = field(default=30, metadata=POSITIVE)
    health_interval_s: float = field(default=30.0, metadata=POSITIVE)
    health_qos: Literal[0, 1] = 0
    status_interval_s: float = field(default=300.0, metadata=POSITIVE)
    outbox_max_bytes: int = field(default=16 * 1024 * 1024, metadata=POSITIVE)
    max_backoff_s: float = field(default=30.0, metadata=POSITIVE)
    protocol: Literal["5", "3.1.1"] = "5"

    @staticmethod
    def complete(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """The broker's host, port and TLS come from the URL."""
        yield from _pair(values)
        url = values.get("url")
        if url is None:
            return
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            yield "url", f"bad port in {url!r}"
            return
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            yield "url", "must be mqtt:// or mqtts://"
            return
        tls = parts.scheme == "mqtts"
        values |= {"host": parts.hostname, "port": port or (8883 if tls else 1883), "tls": tls}


@dataclass(frozen=True)
class CommandsConfig:
    public_key_file: Path | None = None
    allow_unsigned: bool = False
    max_skew_s: float = field(default=300.0, metadata=NOT_NEGATIVE)
    max_ttl_s: float = field(default=3600.0, metadata=POSITIVE)
    max_bytes: int = field(default=65536, metadata=POSITIVE)


@dataclass(frozen=True)
class ChecksConfig:
    package_index_max_age_h: float = field(default=24.0, metadata=POSITIVE)
    refresh_package_index: Literal["auto", "never"] = "auto"
    bind_mounts: tuple[str, ...] = field(
        default=EKS_BIND_MOUNTS, metadata=rule(check=_absolute_paths)
    )
    min_free_disk_gb: float = field(default=20.0, metadata=NOT_NEGATIVE)
    # The CNI's VXLAN port (UDP) network.firewall expects open: 8472 is Cilium's, 4789 Calico's.
    vxlan_port: int = field(default=8472, metadata=rule(check=_port))


@dataclass(frozen=True)
class KubernetesConfig:
    supported_versions: tuple[str, ...] = field(default=SUPPORTED_K8S, metadata=rule(check=_minors))


@dataclass(frozen=True)
class DiagnosticsConfig:
    max_bytes: int = field(default=16 * 1024 * 1024, metadata=POSITIVE)


@dataclass(frozen=True)
class NetworkConfig:
    manage_routes: bool = False


@dataclass(frozen=True)
class NodeadmConfig:
    config_path: Path = Path("/etc/edge-agent/nodeconfig.yaml")
    install_timeout_s: float = field(default=1800.0, metadata=POSITIVE)
    init_timeout_s: float = field(default=1200.0, metadata=POSITIVE)
    # Extensions: upgrade and uninstall bounds, and whether steps run as transient systemd
    # units ("auto": when systemd is PID 1, see docs/systemd.md).
    upgrade_timeout_s: float = field(default=1800.0, metadata=POSITIVE)
    uninstall_timeout_s: float = field(default=600.0, metadata=POSITIVE)
    systemd_run: Literal["auto", "always", "never"] = "auto"
    # Extension: nodeadm debug waits up to 5 minutes for a Ready node (never Ready before a
    # CNI runs), so its bound sits above that.
    debug_timeout_s: float = field(default=420.0, metadata=POSITIVE)


@dataclass(frozen=True)
class JoinConfig:
    auto: bool = True
    retry_backoff_s: float = field(default=60.0, metadata=POSITIVE)


@dataclass(frozen=True)
class HealthConfig:
    degraded_after_s: float = field(default=120.0, metadata=NOT_NEGATIVE)
    kubelet_healthz_url: str = field(
        default="http://127.0.0.1:10248/healthz", metadata=rule(check=_http_url)
    )


@dataclass(frozen=True)
class ProgramsConfig:
    nodeadm: str = _program_field("nodeadm")
    apt_get: str = _program_field("apt-get")
    dnf: str = _program_field("dnf")
    systemctl: str = _program_field("systemctl")
    ip: str = _program_field("ip")
    journalctl: str = _program_field("journalctl")
    firewall_cmd: str = _program_field("firewall-cmd")
    ufw: str = _program_field("ufw")
    # Extensions: programs the published key table does not list but the agent runs.
    dpkg: str = _program_field("dpkg")
    timedatectl: str = _program_field("timedatectl")
    systemd_run: str = _program_field("systemd-run")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition: off unless ``listen`` or ``textfile`` is set."""

    listen: str | None = field(default=None, metadata=rule(check=_listen))
    textfile: Path | None = field(default=None, metadata=rule(check=_prom))
    interval_s: float = field(default=15.0, metadata=POSITIVE)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.textfile is not None


@dataclass(frozen=True)
class Config:
    host: HostConfig = field(default_factory=HostConfig)
    state_dir: Path = Path("/var/lib/edge-agent")
    log: LogConfig = field(default_factory=LogConfig)
    controller: ControllerConfig | None = None
    assignment_file: Path | None = None
    mqtt: MqttConfig | None = None
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    nodeadm: NodeadmConfig = field(default_factory=NodeadmConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    programs: ProgramsConfig = field(default_factory=ProgramsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: Path | None = field(default=None, metadata=rule(derived=True))

    @staticmethod
    def complete(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """Rules across sections. A key that failed to parse is absent from ``values``; it
        was set to something, so "absent" counts as set and its rules are still judged."""
        if values.get("controller", ...) is None and values.get("assignment_file", ...) is None:
            yield "controller", "is required unless assignment_file is set"
        commands: CommandsConfig | None = values.get("commands")
        signed = commands is None or commands.public_key_file or commands.allow_unsigned
        if values.get("mqtt", ...) is not None and not signed:
            yield (
                "commands.public_key_file",
                "is required when mqtt is set (commands must be signed)",
            )

    def redacted(self) -> dict[str, object]:
        """A JSON-able view for diagnostics; secrets live in files and are named, not read.

        A secret-named key (a host label called ``token``, say) is masked by
        `agent.core.redact`'s rules; the MQTT username is only said to be set.
        """

        def conv(v: object) -> object:
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if isinstance(v, Mapping):
                return {str(k): conv(x) for k, x in v.items()}
            return v

        out = scrub({f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}, ())
        mqtt = out.get("mqtt")
        if isinstance(mqtt, dict) and mqtt.get("username"):
            mqtt["username"] = "<set>"
        return out


def parse_config(
    doc: object,
    *,
    readable: Callable[[Path], bool] | None = None,
    source: Path | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Validate a loaded document into a `Config`, or raise one `ConfigError` naming every
    problem. ``origins`` maps key paths to where their values came from (a file and line,
    an environment variable); ``readable`` probes each ``*_file`` when given."""
    if doc is not None and not isinstance(doc, Mapping):
        where = str(source) if source is not None else None
        raise ConfigError("<root>", f"the file must hold a mapping, got {kind(doc)}", where)
    reader = Reader(readable=readable)
    cfg: Config | None = reader.section(Config, doc, "")
    if reader.problems or cfg is None:
        raise ConfigError.of(_placed(p, origins or {}, source) for p in reader.problems)
    return dataclasses.replace(cfg, source=source)


def _placed(p: Problem, origins: Mapping[str, str], source: Path | None) -> Problem:
    """The problem with where its value came from: the key's own origin, else its section's."""
    key = p.key
    while key:
        if key in origins:
            return Problem(p.key, p.message, origins[key])
        key = key.rpartition(".")[0]
    return Problem(p.key, p.message, str(source) if source is not None else None)
