"""Which config sections a SIGHUP reload applies and which need a restart, one row per
section: every section of `Config` must appear here, so a new one cannot go unsorted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import Config, parse_config
from agent.core.reload import LIVE, NEEDS_RESTART, config_change

BASE: dict[str, Any] = {
    "mqtt": {"url": "mqtt://broker.example:1883"},
    "controller": {"url": "https://ctl.example", "registration_token_file": "/t"},
    "commands": {"public_key_file": "/k.pem"},
}

# (section, a change to it, the name the reload reports, live?)
ROWS: list[tuple[str, dict[str, Any], str, bool]] = [
    ("assignment_file", {"assignment_file": "/a.yaml"}, "assignment_file", True),
    ("checks", {"checks": {"min_free_disk_gb": 5}}, "checks", True),
    ("commands", {"commands": {"public_key_file": "/other.pem"}}, "commands", True),
    ("commands", {"commands": {"allow_unsigned": True}}, "commands", True),
    ("commands", {"commands": {"max_bytes": 4096}}, "commands.max_bytes", False),
    ("commands", {"commands": {"max_ttl_s": 60}}, "commands.max_ttl_s", False),
    ("commands", {"commands": {"max_skew_s": 900}}, "commands.max_skew_s", False),
    ("diagnostics", {"diagnostics": {"max_bytes": 1024}}, "diagnostics", True),
    ("health", {"health": {"degraded_after_s": 5}}, "health", True),
    ("join", {"join": {"auto": False}}, "join", True),
    ("kubernetes", {"kubernetes": {"supported_versions": ["1.31"]}}, "kubernetes", True),
    ("log", {"log": {"level": "debug"}}, "log.level", True),
    ("log", {"log": {"format": "json"}}, "log.format", False),
    ("network", {"network": {"manage_routes": True}}, "network", True),
    ("nodeadm", {"nodeadm": {"init_timeout_s": 5}}, "nodeadm", True),
    ("programs", {"programs": {"nodeadm": "/opt/nodeadm"}}, "programs", True),
    ("controller", {"controller": {"assignment_poll_s": 5}}, "controller", False),
    ("host", {"host": {"labels": {"site": "b"}}}, "host", False),
    ("metrics", {"metrics": {"interval_s": 5}}, "metrics", False),
    ("mqtt", {"mqtt": {"keepalive_s": 10}}, "mqtt", False),
    ("state_dir", {"state_dir": "/var/lib/other"}, "state_dir", False),
]


def config(over: dict[str, Any]) -> Config:
    doc: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for k, v in over.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) and k in doc else v
    return parse_config(doc, readable=lambda _p: True, source=Path("/etc/edge-agent.yaml"))


@pytest.mark.parametrize(("section", "over", "name", "live"), ROWS)
def test_each_section_is_applied_or_needs_a_restart(
    section: str, over: dict[str, Any], name: str, live: bool
) -> None:
    old, new = config({}), config(over)
    assert getattr(old, section) != getattr(new, section)
    change = config_change(old, new)
    assert change.live == ((name,) if live else ())
    assert change.needs_restart == (() if live else (name,))


def test_every_section_has_a_row_and_a_verdict() -> None:
    sections = {f.name for f in dataclasses.fields(Config)} - {"source"}
    assert {row[0] for row in ROWS} == sections
    names = {row[2] for row in ROWS}
    assert names == LIVE | NEEDS_RESTART


def test_nothing_changed_reports_nothing_and_the_source_is_no_setting() -> None:
    old = config({})
    change = config_change(old, dataclasses.replace(old, source=Path("/elsewhere.yaml")))
    assert change.live == () and change.needs_restart == ()


def test_a_reload_reports_several_sections_at_once() -> None:
    change = config_change(
        config({}),
        config({"log": {"level": "debug", "format": "json"}, "mqtt": {"keepalive_s": 9}}),
    )
    assert change.live == ("log.level",)
    assert change.needs_restart == ("log.format", "mqtt")
