"""A step's transient unit: its one fixed name, the systemd-run command line, and the exit code
read from systemd's Result/ExecMainStatus (what `systemd-run --wait` would return)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host.nodeadm_unit import UnitState, step_unit, systemd_run_argv


def test_a_step_has_one_fixed_unit_name() -> None:
    assert step_unit("install") == "edge-agent-nodeadm-install.service"


def test_the_unit_is_type_exec_and_kept_until_its_result_is_read() -> None:
    argv = systemd_run_argv("systemd-run", step_unit("init"), Path("/s/l.log"), ["nodeadm"], {})
    assert argv[:5] == ["systemd-run", "--unit", "edge-agent-nodeadm-init.service", "--wait",
                        "--quiet"]  # fmt: skip
    assert "Type=exec" in argv and "Type=oneshot" not in argv
    assert "--collect" not in argv


@pytest.mark.parametrize(
    ("result", "status", "expected"),
    [
        ("success", 0, 0),
        ("exit-code", 3, 3),
        ("exit-code", 2, 2),
        ("signal", 15, 255),
        ("core-dump", 6, 255),
        ("timeout", 0, 1),
        ("exit-code", 0, 1),
        ("resources", 0, 1),
    ],
)
def test_exit_code_is_what_systemd_run_would_say(result: str, status: int, expected: int) -> None:
    state = UnitState(loaded=True, active="failed", result=result, main_code=1, main_status=status)
    assert state.exit_code() == expected
    assert not state.running


def test_running_states() -> None:
    for active in ("active", "activating", "deactivating", "reloading"):
        assert UnitState(True, active, "success", 0, 0).running
    assert not UnitState(False, "inactive", "success", 0, 0).running
