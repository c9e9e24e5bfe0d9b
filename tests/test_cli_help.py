"""The command line's help teaches: every option says what it does and its default, `check
--help` lists every check id of the registry, and a bare `edge-agent` prints the help."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from agent.checks.registry import CHECKS
from tests.support import ROOT

COMMANDS = ("run", "check", "status", "nodeconfig")


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
    )


def test_bare_command_prints_the_help() -> None:
    r = _agent()
    assert r.returncode == 2
    assert "the following arguments are required" not in r.stderr
    assert r.stdout.startswith("usage: edge-agent")
    for cmd in (*COMMANDS, "version"):
        assert re.search(rf"^\s+{cmd}\b", r.stdout, re.M), cmd
    assert "exit codes:" in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_option_has_help_and_a_default(cmd: str) -> None:
    r = _agent(cmd, "--help")
    assert r.returncode == 0, r.stderr
    options = r.stdout.split("options:", 1)[1].split("\n\n", 1)[0]
    # One entry per option: a line starting with "-", its help following.
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    assert len(entries) >= 2, options
    for entry in entries:
        if entry.lstrip().startswith("-h, --help"):
            continue
        text = " ".join(entry.split())
        assert "(default:" in text, f"{cmd}: no default in {text!r}"
    assert "/etc/edge-agent/config.yaml" in " ".join(options.split())


def test_check_help_lists_every_check_id_with_its_title() -> None:
    r = _agent("check", "--help")
    assert r.returncode == 0
    listed = re.findall(r"^  ([a-z_]+(?:\.[a-z_]+)?)  +(\S.*)$", r.stdout, re.M)
    assert [(c.id, c.title) for c in CHECKS] == [(i, t.strip()) for i, t in listed]
