"""The README's main-job command: the demo runs end to end, says what it simulated, and its
results come out as JSON; scripts/demo installs no test tools for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_brings_the_host_to_joined_and_stops_cleanly() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "devtools.demo", "--delay", "0.02", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    screen = r.stderr
    assert r.returncode == 0, r.stdout + screen
    for phase in ("registering", "preflight", "installing", "joining", "joined"):
        assert f"-> {phase}" in screen
    assert "nodeadm install Installing kubelet..." in screen
    assert "ping result   {'pong': True" in screen
    assert "rejected bad_signature" in screen
    assert "availability  offline" in screen and "agent exited with 0" in screen
    assert "stand-ins" in screen

    results = json.loads(r.stdout)  # stdout holds the results and nothing else
    assert results["ok"] is True and results["joined"] is True
    assert results["phases"][-1] == "joined" and "installing" in results["phases"]
    assert results["commands"]["ping"]["state"] == "succeeded"
    assert results["commands"]["ping"]["result"]["pong"] is True
    assert results["commands"]["run-checks"]["state"] == "succeeded"
    assert results["commands"]["unsigned uninstall"] == {
        "state": "rejected",
        "error": "bad_signature",
        "result": None,
    }
    assert results["agent_exit_code"] == 0
    assert results["status"]["running"] is False and results["status"]["phase"] == "joined"
    assert results["status_exit_code"] == 3
    assert all(results["messages"][t] > 0 for t in ("availability", "status", "events"))


def test_scripts_demo_uses_a_runtime_venv_without_test_tools() -> None:
    script = (ROOT / "scripts" / "demo").read_text()
    assert "make_venv demo" in script and "make_venv test" not in script
    extras = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    demo = extras.split("demo = [", 1)[1].split("]", 1)[0]
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "trustme", "jsonschema"):
        assert tool not in demo
