"""``system.swap``, ``system.disk``, ``system.systemd`` and ``system.clock``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.checks.system import STA_UNSYNC, TIME_ERROR, judge_kernel_clock, parse_swaps
from agent.core.checks import CheckStatus
from devtools.fakehost import calls, make_host, set_ntp_synced
from tests.checks.helpers import config, context, fake_programs, one, script


def host(tmp_path: Path, **kw: Any) -> Path:
    root = tmp_path / "host"
    make_host(root, **kw)
    return root


async def test_no_swap_passes(tmp_path: Path) -> None:
    r = await one(context(config(tmp_path, host(tmp_path))), "system.swap")
    assert r.status is CheckStatus.PASS
    assert r.message == "no swap is active"


async def test_partition_swap_fails_with_the_exact_remedy(tmp_path: Path) -> None:
    r = await one(context(config(tmp_path, host(tmp_path, swap="partition"))), "system.swap")
    assert r.status is CheckStatus.FAIL
    assert r.message == "partition swap /dev/sda2 is active: nodeadm init fails on it"
    assert r.remedy == "swapoff /dev/sda2 and remove it from /etc/fstab"
    assert r.details == {"partitions": ["/dev/sda2"], "files": []}


async def test_file_swap_warns(tmp_path: Path) -> None:
    r = await one(context(config(tmp_path, host(tmp_path, swap="file"))), "system.swap")
    assert r.status is CheckStatus.WARN
    assert "file swap /swap.img is active: nodeadm init turns it off" in r.message


async def test_zram_counts_as_partition_swap(tmp_path: Path) -> None:
    root = host(tmp_path)
    (root / "proc/swaps").write_text(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/zram0                              partition\t4019196\t\t0\t\t100\n"
        "/var/my\\040swap                         file\t\t1048572\t\t0\t\t-2\n"
    )
    r = await one(context(config(tmp_path, root)), "system.swap")
    assert r.status is CheckStatus.FAIL
    assert "zram" in r.remedy
    assert r.details["files"] == ["/var/my swap"]


def test_parse_swaps_skips_the_header() -> None:
    assert parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []


async def test_unreadable_swaps_warns(tmp_path: Path) -> None:
    root = host(tmp_path)
    (root / "proc/swaps").unlink()
    r = await one(context(config(tmp_path, root)), "system.swap")
    assert r.status is CheckStatus.WARN
    assert "cannot tell" in r.message


async def test_disk_space(tmp_path: Path) -> None:
    root = host(tmp_path)
    ok = await one(context(config(tmp_path, root, checks={"min_free_disk_gb": 0})), "system.disk")
    assert ok.status is CheckStatus.PASS
    assert ok.details["free_bytes"] > 0
    short = await one(
        context(config(tmp_path, root, checks={"min_free_disk_gb": 100000})), "system.disk"
    )
    assert short.status is CheckStatus.FAIL
    assert "GB free under /var/lib (needs 100000 GB)" in short.message


async def test_systemd(tmp_path: Path) -> None:
    r = await one(context(config(tmp_path, host(tmp_path))), "system.systemd")
    assert r.status is CheckStatus.PASS
    (tmp_path / "other").mkdir()
    root = tmp_path / "other/host"
    make_host(root, systemd=False)
    r = await one(context(config(tmp_path / "other", root)), "system.systemd")
    assert r.status is CheckStatus.FAIL
    assert "does not run systemd" in r.message


async def test_clock_synchronised(tmp_path: Path) -> None:
    root = host(tmp_path)
    cfg = config(tmp_path, root, programs=fake_programs(tmp_path, root))
    r = await one(context(cfg), "system.clock")
    assert r.status is CheckStatus.PASS
    assert r.details["source"] == "timedatectl"
    assert [c["argv"] for c in calls(root, "timedatectl")] == [["show", "-p", "NTPSynchronized"]]


async def test_clock_not_synchronised_warns(tmp_path: Path) -> None:
    root = host(tmp_path)
    set_ntp_synced(root, False)
    cfg = config(tmp_path, root, programs=fake_programs(tmp_path, root))
    r = await one(context(cfg), "system.clock")
    assert r.status is CheckStatus.WARN
    assert "NTPSynchronized=no" in r.message
    assert "timedatectl set-ntp true" in r.remedy


async def test_clock_falls_back_to_the_kernel_when_timedatectl_cannot_answer(
    tmp_path: Path,
) -> None:
    root = host(tmp_path)
    for program in (
        str(tmp_path / "no-timedatectl"),
        # In a container without the host's D-Bus:
        script(tmp_path / "bin/timedatectl", 'echo "Failed to connect to bus" >&2; exit 1'),
    ):
        cfg = config(tmp_path, root, programs={"timedatectl": program})
        r = await one(context(cfg), "system.clock")
        # The real kernel answers: synchronised or not, the verdict says where it came from.
        assert r.status in (CheckStatus.PASS, CheckStatus.WARN), r
        assert r.details["source"] == "adjtimex"
        assert "adjtimex" in r.message


def test_kernel_clock_judgement() -> None:
    assert judge_kernel_clock(0, 0)
    assert not judge_kernel_clock(TIME_ERROR, 0)
    assert not judge_kernel_clock(0, STA_UNSYNC)
    assert judge_kernel_clock(1, 0x2001)  # TIME_INS with PLL and NANO bits: synchronised
