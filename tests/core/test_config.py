"""The config schema: typed, frozen, defaults written once, every problem reported by key path."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core import config as config_module
from agent.core import config_rules
from agent.core.config import Config, ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
LOCAL = {"assignment_file": "/etc/edge-agent/assignment.yaml"}
MQTT = {"mqtt": {"url": "mqtt://b"}, "commands": {"allow_unsigned": True}}


def parse(doc: dict[str, Any]) -> Config:
    return parse_config(doc, readable=lambda _p: True)


def with_(section: str, **keys: Any) -> dict[str, Any]:
    return {**LOCAL, section: keys}


def test_defaults_match_the_published_key_table() -> None:
    cfg = parse(LOCAL)
    assert cfg.state_dir == Path("/var/lib/edge-agent") and cfg.mqtt is None
    assert cfg.controller is None and cfg.host.mode == "agent" and cfg.host.root == Path("/")
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")
    assert cfg.commands.max_bytes == 65536 and cfg.commands.max_ttl_s == 3600
    assert cfg.commands.max_skew_s == 300 and cfg.commands.allow_unsigned is False
    assert cfg.checks.bind_mounts[0] == "/eks-hybrid" and len(cfg.checks.bind_mounts) == 7
    assert cfg.checks.refresh_package_index == "auto" and cfg.checks.cni == "cilium"
    assert cfg.kubernetes.supported_versions == tuple(f"1.{m}" for m in range(30, 37))
    assert cfg.nodeadm.config_path == Path("/etc/edge-agent/nodeconfig.yaml")
    assert (cfg.nodeadm.install_timeout_s, cfg.nodeadm.init_timeout_s) == (1800, 1200)
    assert (cfg.join.auto, cfg.join.retry_backoff_s) == (True, 60)
    assert cfg.health.kubelet_healthz_url == "http://127.0.0.1:10248/healthz"
    assert (cfg.programs.firewall_cmd, cfg.programs.ufw) == ("firewall-cmd", "ufw")
    assert (cfg.metrics.listen, cfg.metrics.textfile, cfg.metrics.interval_s) == (None, None, 15)
    assert not cfg.metrics.enabled and cfg.nodeadm.debug_timeout_s == 420
    assert parse(with_("metrics", textfile="/var/lib/ne/edge.prom")).metrics.enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.state_dir = Path("/x")  # type: ignore[misc]


def test_mqtt_url_gives_host_port_and_tls() -> None:
    for url, want in [
        ("mqtt://b", ("b", 1883, False)),
        ("mqtts://b", ("b", 8883, True)),
        ("mqtts://broker.example:9883", ("broker.example", 9883, True)),
    ]:
        m = parse({**LOCAL, **MQTT, "mqtt": {"url": url}}).mqtt
        assert m is not None and (m.host, m.port, m.tls) == want


BAD = [
    ({**LOCAL, **MQTT, "mqtt": {"url": "http://b"}}, "mqtt.url", "must be mqtt:// or mqtts://"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b:99999"}}, "mqtt.url", "bad port"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "keepalive_s": -1}}, "mqtt.keepalive_s", "greater than 0"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "keepalive_s": 2.5}}, "mqtt.keepalive_s", "whole number"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "protocol": 5}}, "mqtt.protocol", "quote it"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "health_qos": 2}}, "mqtt.health_qos", "one of 0, 1"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "topic_prefix": "a/#"}}, "mqtt.topic_prefix", "wildcards"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "client_cert_file": "/c"}}, "mqtt.client_key_file", "go together"),
    ({**LOCAL, **MQTT, "mqtt": {"url": "mqtt://b", "ca_file": "ca.pem"}}, "mqtt.ca_file", "absolute path"),
    ({**LOCAL, **MQTT, "mqtt": {"username": "u"}}, "mqtt.url", "is required"),
    ({**LOCAL, "mqtt": {"url": "mqtt://b"}}, "commands.public_key_file", "required"),
    (with_("host", mode="kiosk"), "host.mode", "one of agent, appliance"),
    (with_("host", rooot="/"), "host.rooot", "unknown key"),
    (with_("host", uid=""), "host.uid", "1-128 characters"),
    (with_("host", labels={"site": 12}), "host.labels", "strings to strings"),
    (with_("host", root="host"), "host.root", "absolute path"),
    ({**LOCAL, "statedir": "/x"}, "statedir", "unknown key"),
    ({**LOCAL, "log": "debug"}, "log", "must be a mapping, got a string"),
    (with_("join", auto="yes"), "join.auto", "true or false"),
    (with_("join", retry_backoff_s="abc"), "join.retry_backoff_s", "must be a number, got a string"),
    (with_("join", retry_backoff_s=True), "join.retry_backoff_s", "must be a number, got a boolean"),
    (with_("log", level="loud"), "log.level", "one of debug, info, warning, error"),
    (with_("checks", min_free_disk_gb=-5), "checks.min_free_disk_gb", "at least 0"),
    (with_("checks", cni="flannel"), "checks.cni", "one of cilium, calico"),
    (with_("checks", bind_mounts=["/a", "b"]), "checks.bind_mounts", "absolute paths, got 'b'"),
    (with_("kubernetes", supported_versions=[1.3]), "kubernetes.supported_versions", "list of strings"),
    (with_("kubernetes", supported_versions=["1.31.2"]), "kubernetes.supported_versions", "look like"),
    (with_("nodeadm", systemd_run="sometimes"), "nodeadm.systemd_run", "one of auto, always, never"),
    (with_("health", kubelet_healthz_url="localhost:10248"), "health.kubelet_healthz_url", "http"),
    (with_("programs", firewall_cmd=""), "programs.firewall_cmd", "must not be empty"),
    (with_("diagnostics", max_bytes=0), "diagnostics.max_bytes", "greater than 0"),
    (with_("metrics", interval_s=0), "metrics.interval_s", "greater than 0"),
    (with_("metrics", textfile="/var/lib/node_exporter/edge.txt"), "metrics.textfile", ".prom"),
    (with_("metrics", textfile="edge.prom"), "metrics.textfile", "absolute path"),
    ({"controller": {"url": "ftp://x", "registration_token_file": "/t"}}, "controller.url", "http"),
    ({"controller": {"url": "https://x"}}, "controller.registration_token_file", "required"),
    ({}, "controller", "unless assignment_file is set"),
]


@pytest.mark.parametrize(("doc", "key", "words"), BAD)
def test_each_mistake_names_its_key_path(doc: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(doc)
    assert [p.key for p in e.value.problems] == [key], e.value.problems
    assert e.value.key == key and words in str(e.value)
    assert str(e.value).startswith(f"{key}: ")


def test_every_mistake_in_a_document_is_reported_at_once() -> None:
    doc = {
        "controller": {"url": "ftp://x", "registration_token_file": "token"},
        "mqtt": {"url": "mqtt://b", "keepalive_s": "30"},
        "join": {"auto": "yes", "retry": 3},
        "metrics": {"listen": "0.0.0.0:9464"},
    }
    with pytest.raises(ConfigError) as e:
        parse(doc)
    keys = [p.key for p in e.value.problems]
    assert keys == [
        "controller.url",
        "controller.registration_token_file",
        "mqtt.keepalive_s",
        "join.auto",
        "join.retry",
        "metrics.listen",
        "commands.public_key_file",  # a rule across sections: judged although mqtt failed
    ]
    assert str(e.value).startswith("7 problems:\n  controller.url: ")


def test_a_document_that_is_not_a_mapping_is_one_problem() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(["controller"], source=Path("/etc/c.yaml"))
    assert str(e.value) == "<root>: the file must hold a mapping, got a list (/etc/c.yaml)"


def test_a_section_that_fails_is_not_judged_absent() -> None:
    # A broken controller section must not add "controller is required" on top.
    with pytest.raises(ConfigError) as e:
        parse({"controller": {"url": "https://c", "registration_token_file": "/t", "x": 1}})
    assert [p.key for p in e.value.problems] == ["controller.x"]


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:9464", "10.1.2.3:9100", None]
)
def test_metrics_listen_accepts_loopback_and_explicit_addresses(listen: str | None) -> None:
    assert parse(with_("metrics", listen=listen)).metrics.listen == listen


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("0.0.0.0:9464", "explicit address"),
        ("[::]:9464", "explicit address"),
        (":9464", "localhost or an IP address"),
        ("metrics.example.com:9464", "localhost or an IP address"),
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:0", "port of 1-65535"),
        (9464, "must be a string"),
    ],
)
def test_metrics_listen_refuses_every_interface_and_names(listen: Any, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(with_("metrics", listen=listen))
    assert e.value.key == "metrics.listen" and words in str(e.value)


def test_file_keys_are_probed_only_when_asked(tmp_path: Path) -> None:
    token = tmp_path / "nope"
    doc = {"controller": {"url": "https://c", "registration_token_file": str(token)}}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, readable=lambda p: p.exists())
    assert e.value.key == "controller.registration_token_file" and "cannot read" in str(e.value)
    cfg = parse_config(doc)
    assert cfg.controller is not None and cfg.controller.registration_token_file == token
    token.write_text("t")
    assert parse_config(doc, readable=lambda p: p.exists()).controller is not None


def test_origins_say_where_a_value_came_from() -> None:
    origins = {"join": "c.yaml, line 9", "join.auto": "environment variable EDGE_AGENT__JOIN__AUTO"}
    doc = {**LOCAL, "join": {"auto": "yes", "retry_backoff_s": -1}}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, origins=origins, source=Path("/etc/c.yaml"))
    where = {p.key: p.where for p in e.value.problems}
    assert where == {
        "join.auto": "environment variable EDGE_AGENT__JOIN__AUTO",
        "join.retry_backoff_s": "c.yaml, line 9",  # its section's line: the closest known
    }
    with pytest.raises(ConfigError) as e:
        parse_config({}, source=Path("/etc/c.yaml"))
    assert str(e.value) == "controller: is required unless assignment_file is set (/etc/c.yaml)"


def _example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    return doc


def test_example_config_holds_every_section_and_parses() -> None:
    doc = _example()
    cfg = parse(doc)
    assert cfg.controller is not None and cfg.mqtt is not None and cfg.mqtt.tls
    sections = [f.name for f in dataclasses.fields(Config) if f.name not in ("state_dir", "source")]
    assert set(sections) - {"assignment_file"} <= set(doc), set(sections) - set(doc)


def test_example_config_shows_the_schema_defaults() -> None:
    """Every value the example spells out is the default, so the two cannot drift apart."""
    doc = _example()
    defaults = Config()
    for section, keys in doc.items():
        if not isinstance(keys, dict) or section in ("controller", "mqtt"):
            continue
        for key, value in keys.items():
            want = getattr(getattr(defaults, section), key)
            if want is None:
                continue  # no default: the example shows a typical value
            got = list(want) if isinstance(want, tuple) else want
            got = str(got) if isinstance(got, Path) else got
            assert value == got, f"{section}.{key}: example {value!r}, default {want!r}"
    assert doc["state_dir"] == str(defaults.state_dir)


def test_config_modules_stay_pure() -> None:
    """The schema is decided without the world: no environment, clock, sockets or processes."""
    banned = {"os", "time", "asyncio", "socket", "subprocess", "yaml"}
    for module in (config_module, config_rules):
        source = Path(str(module.__file__)).read_text()
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in banned, f"{module.__name__} imports {name}"
                assert top != "agent" or name.startswith("agent.core."), name
