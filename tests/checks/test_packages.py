"""``packages.index_fresh`` and the package index refresh, against made-up hosts and fake apt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.core.checks import CheckStatus
from agent.core.config import Config
from agent.host.hostroot import HostRoot
from agent.host.packages import PackageIndexError, index_age, refresh_package_index
from devtools.fakehost import calls, hold_dpkg_lock, make_host
from tests.checks.helpers import age, assignment, config, context, fake_programs, one

DAY = 86400


def host(tmp_path: Path, *, index_age_s: float | None = 3 * DAY, **kw: Any) -> Path:
    root = tmp_path / "host"
    make_host(root, index_age_s=index_age_s, **kw)
    return root


def apt_config(
    tmp_path: Path, root: Path, env: dict[str, str] | None = None, **sections: Any
) -> Config:
    return config(tmp_path, root, programs=fake_programs(tmp_path, root, env), **sections)


def updates(root: Path) -> int:
    return sum(1 for c in calls(root, "apt-get") if "update" in c["argv"])


async def test_fresh_index_passes_without_refreshing(tmp_path: Path) -> None:
    root = host(tmp_path, index_age_s=600)
    r = await one(context(apt_config(tmp_path, root), allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.PASS, r
    assert "10 min ago" in r.message
    assert r.details["manager"] == "apt"
    assert r.details["refreshed"] is False
    assert updates(root) == 0


async def test_stale_with_refresh_never_fails_and_runs_nothing(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root, checks={"refresh_package_index": "never"})
    r = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.FAIL
    assert "3 d 0 h ago" in r.message
    assert "fresher than 24 h" in r.message
    assert "refresh_package_index is never" in r.message
    assert "apt-get update" in r.remedy
    assert updates(root) == 0


async def test_stale_without_permission_to_change_fails(tmp_path: Path) -> None:
    root = host(tmp_path)
    r = await one(context(apt_config(tmp_path, root), allow_changes=False), "packages.index_fresh")
    assert r.status is CheckStatus.FAIL
    assert updates(root) == 0


async def test_stale_with_auto_refreshes_once_then_passes(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root)
    r = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.PASS, r
    assert r.details["refreshed"] is True
    assert [c["argv"] for c in calls(root, "apt-get")] == [["update"]]
    record = json.loads((cfg.state_dir / "package-index.json").read_text())
    assert record["manager"] == "apt"
    assert record["refreshed_at"] > time.time() - 60
    # Fresh now: the next preflight does not refresh again.
    again = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert again.status is CheckStatus.PASS
    assert again.details["refreshed"] is False
    assert updates(root) == 1


async def test_frozen_mirror_passes_on_the_agents_own_record(tmp_path: Path) -> None:
    root = host(tmp_path)
    frozen = {"FAKEHOST_APT_MIRROR_MTIME": str(time.time() - 30 * DAY)}
    cfg = apt_config(tmp_path, root, frozen)
    r = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.PASS, r
    assert r.details["source"] == "state_dir/package-index.json"
    lists = index_age(HostRoot(root), tmp_path / "nowhere", "apt").newest
    assert lists is not None
    assert time.time() - lists > DAY
    # A later preflight (a restarted agent, say) still counts the record.
    later = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert later.status is CheckStatus.PASS
    assert updates(root) == 1


async def test_failed_refresh_fails_with_the_apt_error_and_waits_an_hour(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root, {"FAKEHOST_APT_FAIL": "1"})
    first = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert first.status is CheckStatus.FAIL
    assert "Temporary failure resolving 'archive.ubuntu.com'" in first.message
    assert "fix the package sources" in first.remedy
    # The next preflight within the hour (a join retry) does not run apt again.
    second = await one(
        context(cfg, allow_changes=True, now=time.time() + 600), "packages.index_fresh"
    )
    assert second.status is CheckStatus.FAIL
    assert "at most once an hour" in second.message
    assert "Temporary failure resolving" in second.message
    assert updates(root) == 1
    # An hour later the agent may try again.
    await one(context(cfg, allow_changes=True, now=time.time() + 3700), "packages.index_fresh")
    assert updates(root) == 2


async def test_nothing_left_to_install_skips(tmp_path: Path) -> None:
    root = host(tmp_path, index_age_s=30 * DAY, installed=True)
    cfg = apt_config(tmp_path, root)
    a = assignment()
    r = await one(
        context(cfg, a, installed_minor="1.31", allow_changes=True), "packages.index_fresh"
    )
    assert r.status is CheckStatus.SKIP
    assert "nothing left to install" in r.message
    assert updates(root) == 0
    # Another version is still to install: judged (and refreshed) as usual.
    r = await one(
        context(cfg, a, installed_minor="1.30", allow_changes=True), "packages.index_fresh"
    )
    assert r.status is CheckStatus.PASS
    assert r.details["refreshed"] is True


async def test_appliance_mode_skips_and_never_refreshes(tmp_path: Path) -> None:
    # A provider image ships with its apt lists removed and installs nothing at run time.
    root = host(tmp_path, index_age_s=None, mode="appliance")
    cfg = apt_config(tmp_path, root, host={"mode": "appliance"})
    r = await one(context(cfg, assignment(), allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.SKIP, r
    assert "appliance mode" in r.message
    assert updates(root) == 0


async def test_never_refreshed_index_fails(tmp_path: Path) -> None:
    root = host(tmp_path, index_age_s=None)
    r = await one(context(apt_config(tmp_path, root)), "packages.index_fresh")
    assert r.status is CheckStatus.FAIL
    assert "never refreshed" in r.message
    assert "/var/lib/apt/lists" in r.message


async def test_update_success_stamp_counts_and_lock_and_partial_do_not(tmp_path: Path) -> None:
    root = host(tmp_path)
    lists = root / "var/lib/apt/lists"
    (lists / "lock").touch()
    (lists / "partial/half_Packages").write_text("x")
    cfg = apt_config(tmp_path, root)
    r = await one(context(cfg), "packages.index_fresh")
    assert r.status is CheckStatus.FAIL
    stamp = root / "var/lib/apt/periodic/update-success-stamp"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    age(stamp, 7200)
    r = await one(context(cfg), "packages.index_fresh")
    assert r.status is CheckStatus.PASS
    assert r.details["source"] == "/var/lib/apt/periodic/update-success-stamp"


async def test_dnf_hosts_use_the_dnf_cache_and_makecache(tmp_path: Path) -> None:
    root = host(tmp_path, os_id="rhel", version_id="9.4", index_age_s=2 * DAY)
    r = await one(context(apt_config(tmp_path, root), allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.PASS
    assert r.details["manager"] == "dnf"
    assert [c["argv"] for c in calls(root, "dnf")] == [["makecache", "--refresh"]]


async def test_refresh_waits_for_a_held_lock_then_succeeds(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root)
    hold_dpkg_lock(root, 0.5)  # unattended-upgrades, done in half a second
    result = await refresh_package_index(
        cfg, HostRoot(root), cfg.state_dir, lock_wait_s=10, retry_delay_s=0.05
    )
    assert result.manager == "apt"
    assert result.duration_s >= 0.4
    assert updates(root) >= 2
    assert (cfg.state_dir / "package-index.json").exists()


async def test_refresh_gives_up_on_a_lock_held_too_long(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root)
    hold_dpkg_lock(root, None)
    start = time.monotonic()
    with pytest.raises(PackageIndexError) as info:
        await refresh_package_index(
            cfg, HostRoot(root), cfg.state_dir, lock_wait_s=0.5, retry_delay_s=0.05
        )
    assert time.monotonic() - start < 5
    assert info.value.lock_held
    assert "Could not get lock" in info.value.tail
    assert "still held after waiting 0.5 s" in str(info.value)
    assert not (cfg.state_dir / "package-index.json").exists()


async def test_forced_refresh_ignores_the_hourly_limit(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root)
    await one(context(cfg, allow_changes=True), "packages.index_fresh")
    for _ in range(2):
        await refresh_package_index(cfg, HostRoot(root), cfg.state_dir)
    assert updates(root) == 3


async def test_refresh_of_a_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = config(tmp_path, root, programs={"apt_get": str(tmp_path / "no-such-apt-get")})
    with pytest.raises(PackageIndexError, match="no-such-apt-get update failed: cannot run"):
        await refresh_package_index(cfg, HostRoot(root), cfg.state_dir)


async def test_preflight_waits_politely_for_a_held_lock(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = apt_config(tmp_path, root)
    hold_dpkg_lock(root, 0.3)
    r = await one(context(cfg, allow_changes=True), "packages.index_fresh")
    assert r.status is CheckStatus.PASS, r
    assert r.details["refreshed"] is True
    assert updates(root) == 2
