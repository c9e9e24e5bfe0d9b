"""Atomic writes never write through what sits at the temporary name."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agent.state.atomic import write_bytes


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "state.json"
    _tmp_name(target).symlink_to(victim)
    write_bytes(target, b"new state")
    assert victim.read_bytes() == b"untouched"
    assert target.read_bytes() == b"new state"
    assert not target.is_symlink()
    assert not _tmp_name(target).exists()


def test_a_stale_temp_file_from_a_crash_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    stale = _tmp_name(target)
    stale.write_bytes(b"half a write from a process that died")
    stale.chmod(0o666)
    write_bytes(target, b"whole", mode=0o600)
    assert target.read_bytes() == b"whole"
    assert target.stat().st_mode & 0o777 == 0o600
    assert not stale.exists()
