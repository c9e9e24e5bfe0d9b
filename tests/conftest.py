"""Session-wide: no log written by any test may hold a secret the tests handed out.

When the session ends, every log under pytest's base temporary directory (the agent's
`agent.out`/`agent.log`, nodeadm's `logs/nodeadm-*.log` and their rotations, Mosquitto's log
and output, the stand-ins' call logs) is searched for every secret the tests used: the
activation codes of `tests/support.py` and `tests/nodeadm/samples.py`, the devtools
controller's registration tokens (`regtoken-…`), and whatever the tests left in the files
that are *meant* to hold secrets: registration token files, `host_token` files in state
directories, and the assignments and token files each agent `config.yaml` names. Tests can
add more through the `secret_registry` fixture. Files meant to hold secrets (configs, token
files, assignments, the NodeConfig, state) are read for their secrets, never scanned. A leak
fails the session, naming the file and the kind of secret.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Shorter values would match by accident (one test's activation code is "x").
MIN_SECRET_LEN = 12
MAX_LOG_BYTES = 64 * 1024 * 1024
REGISTRATION_TOKEN = re.compile(rb"regtoken-[0-9a-f]{10}")
_ROTATED = re.compile(r"\.log\.\d+$")
_LOG_NAMES = frozenset({"agent.out", "agent.log", "mosquitto.out"})


@dataclass(frozen=True)
class Leak:
    path: Path
    kind: str

    def __str__(self) -> str:
        return f"{self.path}: holds the {self.kind}"


def is_log(path: Path) -> bool:
    """Files that are logs: what an operator, a journal or a bug report would show."""
    name = path.name
    return (
        name in _LOG_NAMES
        or name.endswith((".log", ".jsonl"))
        or bool(_ROTATED.search(name))
        or (name.endswith(".out") and "mosquitto" in name)
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def discover_secrets(root: Path) -> dict[str, str]:
    """Secret value -> kind, from the files under `root` that hold secrets by design."""
    found: dict[str, str] = {}

    def add(value: Any, kind: str) -> None:
        if isinstance(value, str) and len(value.strip()) >= MIN_SECRET_LEN:
            found.setdefault(value.strip(), kind)

    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name == "registration-token":
            add(_read_text(path), "registration token")
        elif path.name == "host_token":
            add(_read_text(path), "host token")
        elif path.name == "config.yaml":
            _from_agent_config(path, add)
    return found


def _from_agent_config(path: Path, add: Any) -> None:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return
    if not isinstance(doc, dict):
        return
    ctl = doc.get("controller")
    if isinstance(ctl, dict) and isinstance(ctl.get("registration_token_file"), str):
        add(_read_text(Path(ctl["registration_token_file"])), "registration token")
    state_dir = doc.get("state_dir")
    if isinstance(state_dir, str):
        add(_read_text(Path(state_dir) / "host_token"), "host token")
    mqtt = doc.get("mqtt")
    if isinstance(mqtt, dict) and isinstance(mqtt.get("password_file"), str):
        add(_read_text(Path(mqtt["password_file"])), "broker password")
    if isinstance(doc.get("assignment_file"), str):
        with contextlib.suppress(OSError, yaml.YAMLError, UnicodeDecodeError):
            a = yaml.safe_load(Path(doc["assignment_file"]).read_text())
            if isinstance(a, dict) and isinstance(a.get("ssm"), dict):
                add(a["ssm"].get("activation_code"), "activation code")


def known_secrets() -> dict[str, str]:
    """The fixed secrets the test suite uses."""
    from agent.testing import ACTIVATION_CODE

    return {ACTIVATION_CODE: "activation code"}


def scan_logs(root: Path, secrets: Mapping[str, str]) -> list[Leak]:
    """Every log under `root` holding one of `secrets` (value -> kind) or a registration token."""
    needles = [(v.encode(), kind) for v, kind in secrets.items() if len(v) >= MIN_SECRET_LEN]
    leaks: list[Leak] = []
    for path in sorted(root.rglob("*")):
        if not is_log(path) or not path.is_file():
            continue
        try:
            with path.open("rb") as f:
                data = f.read(MAX_LOG_BYTES)
        except OSError:
            continue
        kinds = {kind for needle, kind in needles if needle in data}
        if REGISTRATION_TOKEN.search(data):
            kinds.add("registration token")
        leaks.extend(Leak(path, kind) for kind in sorted(kinds))
    return leaks


@pytest.fixture(scope="session")
def secret_registry() -> dict[str, str]:
    """Secret value -> kind; tests add the secrets they make up so the final scan knows them."""
    return {}


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log(
    tmp_path_factory: pytest.TempPathFactory, secret_registry: dict[str, str]
) -> Iterator[None]:
    yield
    base = tmp_path_factory.getbasetemp()
    secrets = {**known_secrets(), **discover_secrets(base), **secret_registry}
    leaks = scan_logs(base, secrets)
    if leaks:
        pytest.fail(
            "secrets leaked into logs written during this session:\n"
            + "\n".join(f"  {leak}" for leak in leaks),
            pytrace=False,
        )
