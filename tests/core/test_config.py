"""Config parsing: typed, frozen, every error names its key path; env overrides; CLI exit codes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.config import Config, ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]


def always(_p: Path) -> bool:
    return True


def parse(doc: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(doc, env or {}, readable=always)


LOCAL = {"assignment_file": "/etc/edge-agent/assignment.yaml"}


def test_defaults_match_the_contract() -> None:
    cfg = parse(LOCAL)
    assert cfg.state_dir == Path("/var/lib/edge-agent") and cfg.mqtt is None
    assert cfg.commands.max_bytes == 65536 and cfg.commands.max_ttl_s == 3600
    assert cfg.checks.bind_mounts[0] == "/eks-hybrid" and len(cfg.checks.bind_mounts) == 7
    assert cfg.kubernetes.supported_versions == tuple(f"1.{m}" for m in range(30, 37))
    assert cfg.nodeadm.config_path == Path("/etc/edge-agent/nodeconfig.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.state_dir = Path("/x")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("doc", "key", "words"),
    [
        (
            {**LOCAL, "mqtt": {"url": "http://b"}, "commands": {"allow_unsigned": True}},
            "mqtt.url",
            "must be mqtt:// or mqtts://",
        ),
        (
            {
                **LOCAL,
                "mqtt": {"url": "mqtt://b", "keepalive_s": -1},
                "commands": {"allow_unsigned": True},
            },
            "mqtt.keepalive_s",
            "greater than 0",
        ),
        (
            {
                **LOCAL,
                "mqtt": {"url": "mqtt://b", "protocol": 5},
                "commands": {"allow_unsigned": True},
            },
            "mqtt.protocol",
            "quote it",
        ),
        ({**LOCAL, "mqtt": {"url": "mqtt://b"}}, "commands.public_key_file", "required"),
        ({**LOCAL, "host": {"mode": "kiosk"}}, "host.mode", "one of agent, appliance"),
        ({**LOCAL, "host": {"rooot": "/"}}, "host.rooot", "unknown key"),
        ({**LOCAL, "statedir": "/x"}, "statedir", "unknown key"),
        ({**LOCAL, "join": {"auto": "yes"}}, "join.auto", "true or false"),
        ({**LOCAL, "log": {"level": "loud"}}, "log.level", "one of"),
        ({**LOCAL, "checks": {"min_free_disk_gb": -5}}, "checks.min_free_disk_gb", "at least 0"),
        (
            {**LOCAL, "kubernetes": {"supported_versions": [1.3]}},
            "kubernetes.supported_versions",
            "list of strings",
        ),
        (
            {"controller": {"url": "ftp://x", "registration_token_file": "/t"}},
            "controller.url",
            "http",
        ),
        ({"controller": {"url": "https://x"}}, "controller.registration_token_file", "required"),
        ({}, "controller", "assignment_file"),
    ],
)
def test_errors_name_the_key_path(doc: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(doc)
    assert e.value.key == key and words in str(e.value)
    assert str(e.value).startswith(f"{key}: ")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    doc = {"controller": {"url": "https://c", "registration_token_file": str(tmp_path / "nope")}}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, {})
    assert e.value.key == "controller.registration_token_file" and "cannot read" in str(e.value)


def test_environment_overrides_single_keys_with_yaml_types() -> None:
    env = {
        "EDGE_AGENT__STATE_DIR": "/srv/ea",
        "EDGE_AGENT__JOIN__AUTO": "false",
        "EDGE_AGENT__MQTT__URL": "mqtt://broker:1884",
        "EDGE_AGENT__COMMANDS__ALLOW_UNSIGNED": "true",
        "UNRELATED": "x",
    }
    cfg = parse(LOCAL, env)
    assert cfg.state_dir == Path("/srv/ea") and cfg.join.auto is False
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == (
        "broker",
        1884,
        False,
    )
    with pytest.raises(ConfigError) as e:
        parse(LOCAL, {"EDGE_AGENT__JOIN__AUTOJOIN": "1"})
    assert e.value.key == "join.autojoin"


def test_example_config_holds_every_key_and_parses() -> None:
    doc = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg = parse(doc)
    assert cfg.controller is not None and cfg.mqtt is not None and cfg.mqtt.tls
    for section in (
        "host",
        "log",
        "controller",
        "mqtt",
        "commands",
        "checks",
        "kubernetes",
        "diagnostics",
        "network",
        "nodeadm",
        "join",
        "health",
        "programs",
    ):
        assert section in doc, section


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_cli_exit_78_names_the_key_and_1_for_a_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("assignment_file: /etc/hostname\nmqtt:\n  url: http://x\n")
    r = run_cli("run", "-c", str(bad))
    assert r.returncode == 78 and "mqtt.url: must be mqtt:// or mqtts://" in r.stderr
    r = run_cli("check", "-c", str(bad))
    assert r.returncode == 78
    r = run_cli("run", "-c", str(tmp_path / "later.yaml"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    bad.write_text("host: [unclosed\n")
    r = run_cli("check", "-c", str(bad))
    assert r.returncode == 78 and "not valid YAML" in r.stderr
    assert run_cli("frobnicate").returncode == 2
    r = run_cli("version")
    assert r.returncode == 0 and r.stdout.startswith("edge-agent ")
