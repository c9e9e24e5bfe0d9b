"""The nspawn harness itself: a container boots with systemd as PID 1, runs commands, keeps
its files over a reboot (with a new boot id), and reports a command's real exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.nspawn import CommandFailed, Machine, Tree


def test_boots_runs_and_reboots(tree: Tree, tmp_path: Path) -> None:
    with Machine.boot(tree.root, tmp_path / "m") as m:
        assert m.run(["systemctl", "is-system-running"], check=False).stdout.strip() in (
            "running",
            "degraded",
        )
        assert m.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        assert m.show("dbus.service", "ActiveState") == {"ActiveState": "active"}
        boot1 = m.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout
        first_pid1 = m.pid1
        m.run(["sh", "-c", "echo kept > /var/tmp/marker"])
        with pytest.raises(CommandFailed, match="oops") as failed:
            m.run(["sh", "-c", "echo oops >&2; exit 7"])
        assert failed.value.result.returncode == 7
        m.reboot()
        assert m.pid1 != first_pid1
        assert m.run(["cat", "/var/tmp/marker"]).stdout == "kept\n"
        assert m.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout != boot1
        assert m.journal("-b", "-1", "-n", "1"), "the first boot's journal is gone"
    assert m.poweroff() == 0
