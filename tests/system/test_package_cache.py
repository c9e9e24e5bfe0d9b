"""The cache of built packages (tests/system/package.py) does not grow without end: a build
removes the entries nobody used for a week, and never one in use or one being built."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from tests.system.package import UNUSED_FOR_S, prune


def entry(debs: Path, name: str, age_s: float, now: float) -> Path:
    d = debs / name
    (d / "wheelhouse").mkdir(parents=True)
    (d / "edge-agent_0.1.0_amd64.deb").write_bytes(b"deb")
    (debs / f".{name}.lock").touch()
    os.utime(d, (now - age_s, now - age_s))
    return d


def test_a_build_prunes_what_nobody_used_for_a_week(tmp_path: Path) -> None:
    now = time.time()
    old = entry(tmp_path, "0123456789abcdef", UNUSED_FOR_S + 60, now)
    used = entry(tmp_path, "fedcba9876543210", UNUSED_FOR_S - 60, now)
    building = tmp_path / ".build-aaaaaaaaaaaaaaaa.x1y2"
    building.mkdir()
    os.utime(building, (now - 2 * UNUSED_FOR_S, now - 2 * UNUSED_FOR_S))
    assert prune(tmp_path, now=now) == ["0123456789abcdef"]
    assert not old.exists()
    assert (used / "edge-agent_0.1.0_amd64.deb").is_file()
    assert (tmp_path / ".fedcba9876543210.lock").exists()
    assert building.is_dir()


def test_an_entry_locked_elsewhere_is_left_alone(tmp_path: Path) -> None:
    now = time.time()
    busy = entry(tmp_path, "0123456789abcdef", UNUSED_FOR_S + 60, now)
    with (tmp_path / ".0123456789abcdef.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a build or prune in another process
        assert prune(tmp_path, now=now) == []
    assert busy.is_dir()
    assert prune(tmp_path, now=now) == ["0123456789abcdef"]
