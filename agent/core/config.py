"""The agent's configuration: one YAML file parsed once into frozen, typed objects.

Every key of contract §9 lives here with its default. Parsing is pure (it takes the loaded
document, an environment mapping and a file-readability probe), so tests feed it plain dicts.
Every error names the key path (``mqtt.url: must be mqtt:// or mqtts://``); the CLI turns a
`ConfigError` into exit 78. Keys beyond the contract are documented in README ("Extensions").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

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
ENV_PREFIX = "EDGE_AGENT__"
_MINOR = re.compile(r"^1\.\d+$")


class ConfigError(Exception):
    """A configuration error in a file that exists: exit 78, naming the key path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ConfigMissing(Exception):
    """The config file does not exist (yet): exit 1 so systemd keeps retrying."""


@dataclass(frozen=True)
class HostConfig:
    uid: str | None = None
    mode: str = "agent"
    labels: Mapping[str, str] = field(default_factory=dict)
    root: Path = Path("/")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class ControllerConfig:
    url: str
    registration_token_file: Path
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    timeout_s: float = 10.0
    max_backoff_s: float = 300.0
    assignment_poll_s: float = 30.0


@dataclass(frozen=True)
class MqttConfig:
    url: str
    host: str
    port: int
    tls: bool
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    topic_prefix: str = "edge/v1"
    keepalive_s: int = 30
    health_interval_s: float = 30.0
    health_qos: int = 0
    status_interval_s: float = 300.0
    outbox_max_bytes: int = 16 * 1024 * 1024
    max_backoff_s: float = 30.0
    protocol: str = "5"


@dataclass(frozen=True)
class CommandsConfig:
    public_key_file: Path | None = None
    allow_unsigned: bool = False
    max_skew_s: float = 300.0
    max_ttl_s: float = 3600.0
    max_bytes: int = 65536


@dataclass(frozen=True)
class ChecksConfig:
    package_index_max_age_h: float = 24.0
    refresh_package_index: str = "auto"
    bind_mounts: tuple[str, ...] = EKS_BIND_MOUNTS
    min_free_disk_gb: float = 20.0
    # The CNI decides which VXLAN port network.firewall wants open: 8472/udp for Cilium,
    # 4789/udp for Calico (nodeadm init accepts either).
    cni: str = "cilium"


@dataclass(frozen=True)
class KubernetesConfig:
    supported_versions: tuple[str, ...] = SUPPORTED_K8S


@dataclass(frozen=True)
class DiagnosticsConfig:
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class NetworkConfig:
    manage_routes: bool = False


@dataclass(frozen=True)
class NodeadmConfig:
    config_path: Path = Path("/etc/edge-agent/nodeconfig.yaml")
    install_timeout_s: float = 1800.0
    init_timeout_s: float = 1200.0
    # Extensions (not in contract §9): upgrade and uninstall bounds, and whether steps run
    # as transient systemd units ("auto": when systemd is PID 1, see docs/systemd.md).
    upgrade_timeout_s: float = 1800.0
    uninstall_timeout_s: float = 600.0
    systemd_run: str = "auto"
    # nodeadm debug waits up to 5 minutes for a Ready node (never Ready before a CNI runs).
    debug_timeout_s: float = 420.0


@dataclass(frozen=True)
class JoinConfig:
    auto: bool = True
    retry_backoff_s: float = 60.0


@dataclass(frozen=True)
class HealthConfig:
    degraded_after_s: float = 120.0
    kubelet_healthz_url: str = "http://127.0.0.1:10248/healthz"


@dataclass(frozen=True)
class ProgramsConfig:
    nodeadm: str = "nodeadm"
    apt_get: str = "apt-get"
    dnf: str = "dnf"
    systemctl: str = "systemctl"
    ip: str = "ip"
    journalctl: str = "journalctl"
    firewall_cmd: str = "firewall-cmd"
    ufw: str = "ufw"
    # Extensions: programs the contract does not list but the agent runs.
    dpkg: str = "dpkg"
    timedatectl: str = "timedatectl"
    systemd_run: str = "systemd-run"


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
    source: Path | None = None

    def redacted(self) -> dict[str, Any]:
        """A JSON-able view for diagnostics; secrets live in files and are named, not read."""
        import dataclasses

        def conv(v: Any) -> Any:
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if isinstance(v, Mapping):
                return {str(k): conv(x) for k, x in v.items()}
            return v

        out = conv(self)
        mqtt = out.get("mqtt")
        if isinstance(mqtt, dict) and mqtt.get("username"):
            mqtt["username"] = "<set>"
        return dict(out)


Readable = Callable[[Path], bool]


def _default_readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


class _Section:
    """Reads one mapping, remembers what it consumed, and reports unknown keys by path."""

    def __init__(self, data: Any, path: str, readable: Readable) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path or "<root>", f"must be a mapping, got {_kind(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.readable = readable
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def string(
        self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()
    ) -> Any:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, str):
            hint = " (quote it in YAML)" if isinstance(v, int | float) and choices else ""
            raise ConfigError(self.key(name), f"must be a string, got {_kind(v)}{hint}")
        if choices and v not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {_kind(v)}")
        return v

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float = 0.0,
        integer: bool = False,
        positive: bool = False,
    ) -> Any:
        v = self.raw(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(self.key(name), f"must be a number, got {_kind(v)}")
        if integer and not isinstance(v, int):
            raise ConfigError(self.key(name), "must be a whole number")
        if v < minimum or (positive and v <= 0):
            bound = "greater than 0" if positive else f"at least {minimum:g}"
            raise ConfigError(self.key(name), f"must be {bound}, got {v}")
        return v

    def file(self, name: str, *, required: bool = False) -> Path | None:
        v = self.string(name)
        if v is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return None
        p = Path(v)
        if not p.is_absolute():
            raise ConfigError(self.key(name), f"must be an absolute path, got {v!r}")
        if not self.readable(p):
            raise ConfigError(self.key(name), f"cannot read {v}")
        return p

    def path_value(self, name: str, default: Path) -> Path:
        v = self.string(name)
        if v is None:
            return default
        p = Path(v)
        if not p.is_absolute():
            raise ConfigError(self.key(name), f"must be an absolute path, got {v!r}")
        return p

    def string_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(self.key(name), "must be a list of strings (quote versions)")
        return tuple(v)

    def sub(self, name: str) -> _Section:
        return _Section(self.raw(name), self.key(name), self.readable)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key (check the spelling)")


def _kind(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing",
    }.get(type(v), type(v).__name__)


def apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``EDGE_AGENT__SECTION__KEY`` (or ``EDGE_AGENT__KEY``) values, YAML-typed."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in doc.items()}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not 1 <= len(parts) <= 2:
            raise ConfigError(name, "must be EDGE_AGENT__SECTION__KEY or EDGE_AGENT__KEY")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(name, f"not a YAML value: {e}") from e
        if len(parts) == 1:
            out[parts[0]] = value
            continue
        section = out.get(parts[0])
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(parts[0], "must be a mapping to take an environment override")
        section[parts[1]] = value
        out[parts[0]] = section
    return out


def parse_config(
    doc: Any,
    env: Mapping[str, str] | None = None,
    readable: Readable = _default_readable,
    source: Path | None = None,
) -> Config:
    """Validate a loaded YAML document (plus env overrides) into a `Config`."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError("<root>", f"the file must hold a mapping, got {_kind(doc)}")
    top = _Section(apply_env(dict(doc), env or {}), "", readable)
    cfg = Config(
        host=_host(top.sub("host")),
        state_dir=top.path_value("state_dir", Path("/var/lib/edge-agent")),
        log=_log(top.sub("log")),
        controller=_controller(top.sub("controller")) if top.has("controller") else None,
        assignment_file=top.file("assignment_file"),
        mqtt=_mqtt(top.sub("mqtt")) if top.has("mqtt") else None,
        commands=_commands(top.sub("commands")),
        checks=_checks(top.sub("checks")),
        kubernetes=_kubernetes(top.sub("kubernetes")),
        diagnostics=DiagnosticsConfig(
            max_bytes=_done(
                top.sub("diagnostics"),
                lambda s: s.number("max_bytes", 16 * 1024 * 1024, integer=True, positive=True),
            )
        ),
        network=NetworkConfig(
            manage_routes=_done(top.sub("network"), lambda s: s.boolean("manage_routes", False))
        ),
        nodeadm=_nodeadm(top.sub("nodeadm")),
        join=_join(top.sub("join")),
        health=_health(top.sub("health")),
        programs=_programs(top.sub("programs")),
        source=source,
    )
    for name in ("controller", "mqtt"):
        top.used.add(name)
    top.finish()
    if cfg.controller is None and cfg.assignment_file is None:
        raise ConfigError("controller", "is required unless assignment_file is set")
    if (
        cfg.mqtt is not None
        and cfg.commands.public_key_file is None
        and not cfg.commands.allow_unsigned
    ):
        raise ConfigError(
            "commands.public_key_file", "is required when mqtt is set (commands must be signed)"
        )
    return cfg


def _done(sec: _Section, fn: Callable[[_Section], Any]) -> Any:
    value = fn(sec)
    sec.finish()
    return value


def _host(s: _Section) -> HostConfig:
    labels = s.raw("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError(s.key("labels"), "must be a mapping of strings to strings")
    uid = s.string("uid")
    if uid is not None and not 1 <= len(uid) <= 128:
        raise ConfigError(s.key("uid"), "must be 1-128 characters")
    out = HostConfig(
        uid=uid,
        mode=s.string("mode", "agent", choices=("agent", "appliance")),
        labels=dict(labels),
        root=s.path_value("root", Path("/")),
    )
    s.finish()
    return out


def _log(s: _Section) -> LogConfig:
    out = LogConfig(
        level=s.string("level", "info", choices=("debug", "info", "warning", "error")),
        format=s.string("format", "auto", choices=("auto", "json", "console")),
    )
    s.finish()
    return out


def _http_url(s: _Section, name: str) -> str:
    url = s.string(name)
    if url is None:
        raise ConfigError(s.key(name), "is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(s.key(name), f"must be an http:// or https:// URL, got {url!r}")
    return str(url).rstrip("/")


def _controller(s: _Section) -> ControllerConfig:
    out = ControllerConfig(
        url=_http_url(s, "url"),
        registration_token_file=s.file("registration_token_file", required=True) or Path(),
        ca_file=s.file("ca_file"),
        client_cert_file=s.file("client_cert_file"),
        client_key_file=s.file("client_key_file"),
        timeout_s=s.number("timeout_s", 10.0, positive=True),
        max_backoff_s=s.number("max_backoff_s", 300.0, positive=True),
        assignment_poll_s=s.number("assignment_poll_s", 30.0, positive=True),
    )
    if (out.client_cert_file is None) != (out.client_key_file is None):
        raise ConfigError(
            s.key("client_key_file"), "client_cert_file and client_key_file go together"
        )
    s.finish()
    return out


def _mqtt(s: _Section) -> MqttConfig:
    url = s.string("url")
    if url is None:
        raise ConfigError(s.key("url"), "is required")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(s.key("url"), f"bad port in {url!r}") from e
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(s.key("url"), "must be mqtt:// or mqtts://")
    tls = parts.scheme == "mqtts"
    out = MqttConfig(
        url=url,
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=s.string("username"),
        password_file=s.file("password_file"),
        ca_file=s.file("ca_file"),
        client_cert_file=s.file("client_cert_file"),
        client_key_file=s.file("client_key_file"),
        topic_prefix=s.string("topic_prefix", "edge/v1"),
        keepalive_s=s.number("keepalive_s", 30, integer=True, positive=True),
        health_interval_s=s.number("health_interval_s", 30.0, positive=True),
        health_qos=s.number("health_qos", 0, integer=True),
        status_interval_s=s.number("status_interval_s", 300.0, positive=True),
        outbox_max_bytes=s.number(
            "outbox_max_bytes", 16 * 1024 * 1024, integer=True, positive=True
        ),
        max_backoff_s=s.number("max_backoff_s", 30.0, positive=True),
        protocol=s.string("protocol", "5", choices=("5", "3.1.1")),
    )
    if out.health_qos not in (0, 1):
        raise ConfigError(s.key("health_qos"), "must be 0 or 1")
    if (
        not out.topic_prefix
        or any(c in out.topic_prefix for c in "#+")
        or out.topic_prefix.endswith("/")
    ):
        raise ConfigError(
            s.key("topic_prefix"), "must be a topic without wildcards or a trailing /"
        )
    if (out.client_cert_file is None) != (out.client_key_file is None):
        raise ConfigError(
            s.key("client_key_file"), "client_cert_file and client_key_file go together"
        )
    s.finish()
    return out


def _commands(s: _Section) -> CommandsConfig:
    out = CommandsConfig(
        public_key_file=s.file("public_key_file"),
        allow_unsigned=s.boolean("allow_unsigned", False),
        max_skew_s=s.number("max_skew_s", 300.0),
        max_ttl_s=s.number("max_ttl_s", 3600.0, positive=True),
        max_bytes=s.number("max_bytes", 65536, integer=True, positive=True),
    )
    s.finish()
    return out


def _checks(s: _Section) -> ChecksConfig:
    mounts = s.string_list("bind_mounts", EKS_BIND_MOUNTS)
    for m in mounts:
        if not m.startswith("/"):
            raise ConfigError(s.key("bind_mounts"), f"must hold absolute paths, got {m!r}")
    out = ChecksConfig(
        package_index_max_age_h=s.number("package_index_max_age_h", 24.0, positive=True),
        refresh_package_index=s.string("refresh_package_index", "auto", choices=("auto", "never")),
        bind_mounts=mounts,
        min_free_disk_gb=s.number("min_free_disk_gb", 20.0),
        cni=s.string("cni", "cilium", choices=("cilium", "calico")),
    )
    s.finish()
    return out


def _kubernetes(s: _Section) -> KubernetesConfig:
    versions = s.string_list("supported_versions", SUPPORTED_K8S)
    for v in versions:
        if not _MINOR.match(v):
            raise ConfigError(
                s.key("supported_versions"), f'entries must look like "1.31", got {v!r}'
            )
    s.finish()
    return KubernetesConfig(supported_versions=versions)


def _nodeadm(s: _Section) -> NodeadmConfig:
    out = NodeadmConfig(
        config_path=s.path_value("config_path", Path("/etc/edge-agent/nodeconfig.yaml")),
        install_timeout_s=s.number("install_timeout_s", 1800.0, positive=True),
        init_timeout_s=s.number("init_timeout_s", 1200.0, positive=True),
        upgrade_timeout_s=s.number("upgrade_timeout_s", 1800.0, positive=True),
        uninstall_timeout_s=s.number("uninstall_timeout_s", 600.0, positive=True),
        systemd_run=s.string("systemd_run", "auto", choices=("auto", "always", "never")),
        debug_timeout_s=s.number("debug_timeout_s", 420.0, positive=True),
    )
    s.finish()
    return out


def _join(s: _Section) -> JoinConfig:
    out = JoinConfig(
        auto=s.boolean("auto", True),
        retry_backoff_s=s.number("retry_backoff_s", 60.0, positive=True),
    )
    s.finish()
    return out


def _health(s: _Section) -> HealthConfig:
    url = s.string("kubelet_healthz_url", "http://127.0.0.1:10248/healthz")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(s.key("kubelet_healthz_url"), f"must be an http(s) URL, got {url!r}")
    out = HealthConfig(
        degraded_after_s=s.number("degraded_after_s", 120.0), kubelet_healthz_url=url
    )
    s.finish()
    return out


def _programs(s: _Section) -> ProgramsConfig:
    defaults = ProgramsConfig()
    values = {}
    for name in (
        "nodeadm",
        "apt_get",
        "dnf",
        "systemctl",
        "ip",
        "journalctl",
        "firewall_cmd",
        "ufw",
        "dpkg",
        "timedatectl",
        "systemd_run",
    ):
        v = s.string(name, getattr(defaults, name))
        if not v:
            raise ConfigError(s.key(name), "must not be empty")
        values[name] = v
    s.finish()
    return ProgramsConfig(**values)


def load_config(
    path: Path, env: Mapping[str, str] | None = None, readable: Readable = _default_readable
) -> Config:
    """Read and validate the file; `ConfigMissing` when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigMissing(f"config file {path} does not exist (yet)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("<file>", f"cannot read {path}: {e}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("<file>", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from e
    return parse_config(doc, env, readable, source=path)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
