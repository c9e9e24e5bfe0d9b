"""Loading the config file: every problem at once, each with its file and line or the
environment variable it came from; the command line's exit codes (78 bad, 1 missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.configfile import load_config
from agent.core.config import ConfigError, ConfigMissing

ROOT = Path(__file__).resolve().parents[1]
GOOD = "assignment_file: /etc/hostname\njoin:\n  auto: true\n"
# Two mistakes, on lines 3 and 5.
TWO_MISTAKES = """\
assignment_file: /etc/hostname
join:
  retry_backoff_s: soon
log:
  levle: debug
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, env or {})
    return [str(p) for p in e.value.problems]


def test_every_problem_names_its_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_MISTAKES)
    assert problems(path) == [
        f"join.retry_backoff_s: must be a number, got a string ({path}, line 3)",
        f"log.levle: unknown key (check the spelling) ({path}, line 5)",
    ]


def test_a_bad_environment_override_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"EDGE_AGENT__JOIN__RETRY_BACKOFF_S": "abc", "EDGE_AGENT__JOIN__AUTO": "false"}
    assert problems(path, env) == [
        "join.retry_backoff_s: must be a number, got a string "
        "(environment variable EDGE_AGENT__JOIN__RETRY_BACKOFF_S)"
    ]
    cfg = load_config(path, {**env, "EDGE_AGENT__JOIN__RETRY_BACKOFF_S": "90"})
    assert cfg.join.retry_backoff_s == 90 and cfg.join.auto is False


def test_environment_overrides_single_keys_and_whole_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {
        "EDGE_AGENT__STATE_DIR": "/srv/ea",
        "EDGE_AGENT__MQTT__URL": "mqtt://broker:1884",
        "EDGE_AGENT__COMMANDS__ALLOW_UNSIGNED": "true",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env)
    assert cfg.state_dir == Path("/srv/ea") and cfg.source == path
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == (
        "broker",
        1884,
        False,
    )


@pytest.mark.parametrize(
    ("env", "want"),
    [
        (
            {"EDGE_AGENT__JOIN__AUTOJOIN": "1"},
            "join.autojoin: unknown key (check the spelling) "
            "(environment variable EDGE_AGENT__JOIN__AUTOJOIN)",
        ),
        (
            {"EDGE_AGENT__A__B__C": "1"},
            "EDGE_AGENT__A__B__C: must be EDGE_AGENT__SECTION__KEY or EDGE_AGENT__KEY",
        ),
        (
            {"EDGE_AGENT__STATE_DIR__X": "1"},
            "state_dir: must be a mapping to take an environment override "
            "(environment variable EDGE_AGENT__STATE_DIR__X)",
        ),
    ],
)
def test_environment_mistakes_are_named(tmp_path: Path, env: dict[str, str], want: str) -> None:
    path = write(tmp_path, "assignment_file: /etc/hostname\nstate_dir: /var/lib/ea\n")
    assert problems(path, env) == [want]


def test_a_section_made_by_the_environment_is_blamed_on_it(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"EDGE_AGENT__MQTT__KEEPALIVE_S": "15", "EDGE_AGENT__COMMANDS__ALLOW_UNSIGNED": "true"}
    assert problems(path, env) == [
        "mqtt.url: is required (environment variable EDGE_AGENT__MQTT__KEEPALIVE_S)"
    ]


def test_a_section_replaced_from_the_environment_forgets_the_files_lines(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"EDGE_AGENT__JOIN": "{auto: maybe}"}
    assert problems(path, env) == [
        "join.auto: must be true or false, got a string (environment variable EDGE_AGENT__JOIN)"
    ]


def test_a_yaml_error_names_the_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "assignment_file: /etc/hostname\nhost:\n  labels: [unclosed\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: line 4, column 1: not valid YAML: ")


def test_a_duplicate_key_is_a_problem_not_a_silent_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path, "assignment_file: /etc/hostname\njoin:\n  auto: true\n  auto: false\n")
    assert problems(path) == [f"join.auto: duplicate key (first at line 3) ({path}, line 4)"]


def test_unreadable_files_are_config_errors_only_when_probed(tmp_path: Path) -> None:
    token = tmp_path / "registration-token"
    text = f"controller:\n  url: https://c.example\n  registration_token_file: {token}\n"
    path = write(tmp_path, text)
    assert problems(path) == [
        f"controller.registration_token_file: cannot read {token} ({path}, line 3)"
    ]
    cfg = load_config(path, {}, readable=None)
    assert cfg.controller is not None and cfg.controller.registration_token_file == token


def test_a_missing_file_is_not_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigMissing, match="does not exist"):
        load_config(tmp_path / "later.yaml")
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"join: \xff\n")
    assert problems(binary) == [f"{binary}: not UTF-8 text: invalid start byte at byte 6"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("cmd", ["run", "check"])
def test_cli_reports_both_mistakes_and_exits_78(tmp_path: Path, cmd: str) -> None:
    path = write(tmp_path, TWO_MISTAKES)
    r = cli(cmd, "-c", str(path))
    assert r.returncode == 78, r.stderr
    assert "configuration error: 2 problems:" in r.stderr
    assert f"join.retry_backoff_s: must be a number, got a string ({path}, line 3)" in r.stderr
    assert f"log.levle: unknown key (check the spelling) ({path}, line 5)" in r.stderr


def test_cli_names_the_environment_variable_and_the_yaml_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    r = cli("check", "-c", str(path), env={"EDGE_AGENT__JOIN__RETRY_BACKOFF_S": "abc"})
    assert r.returncode == 78
    assert "(environment variable EDGE_AGENT__JOIN__RETRY_BACKOFF_S)" in r.stderr
    assert str(path) not in r.stderr
    path.write_text("host: [unclosed\n")
    r = cli("run", "-c", str(path))
    assert r.returncode == 78 and f"{path}: line 2, column 1: not valid YAML" in r.stderr
    r = cli("run", "-c", str(tmp_path / "later.yaml"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_check_with_the_example_config_reports_missing_secrets_as_a_check() -> None:
    example = str(ROOT / "config.example.yaml")
    r = cli("run", "-c", example)
    assert r.returncode == 78 and "controller.registration_token_file: cannot read" in r.stderr
    r = cli("check", "-c", example, "--json", "--only", "config.files")
    assert r.returncode == 1, r.stderr
    [result] = json.loads(r.stdout)["checks"]
    assert result["id"] == "config.files" and result["status"] == "fail"
    assert "controller.registration_token_file /etc/edge-agent/registration-token" in (
        result["message"]
    )
    assert "commands.public_key_file /etc/edge-agent/controller-signing.pub" in result["message"]
    assert "registration token" in result["remedy"]
