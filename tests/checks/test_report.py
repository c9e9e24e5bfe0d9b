"""The terminal table and the contract's JSON shape for preflight results."""

from __future__ import annotations

import json

from agent.checks import render_table, to_json
from agent.core.checks import CheckResult, CheckStatus

RESULTS = [
    CheckResult("os.supported", "Operating system is supported", CheckStatus.PASS, "Ubuntu 22.04.4 LTS on x86_64", "use a supported OS", 3, {"id": "ubuntu"}),
    CheckResult("system.swap", "No partition swap", CheckStatus.FAIL, "partition swap /dev/sda2 is active: nodeadm init fails on it", "swapoff /dev/sda2 and remove it from /etc/fstab", 1),
    CheckResult("system.clock", "Clock is synchronised", CheckStatus.WARN, "the clock is not NTP-synchronised", "timedatectl set-ntp true", 12),
    CheckResult("credentials", "Node credentials are usable", CheckStatus.SKIP, "no assignment yet"),
    CheckResult("nodeadm.binary", "nodeadm is installed", CheckStatus.ERROR, "timed out after 30 s", "run it again", 30001),
]  # fmt: skip


def test_to_json_has_the_contract_shape() -> None:
    doc = to_json(RESULTS)
    assert set(doc) == {"checks", "summary"}
    assert doc["summary"] == {"passed": 1, "warned": 1, "failed": 1, "skipped": 1, "errored": 1}
    first = doc["checks"][0]
    assert set(first) == {"id", "title", "status", "message", "remedy", "duration_ms", "details"}
    assert first["status"] == "pass"
    assert first["remedy"] == ""
    assert first["details"] == {"id": "ubuntu"}
    assert doc["checks"][1]["remedy"] == "swapoff /dev/sda2 and remove it from /etc/fstab"
    json.dumps(doc)  # JSON-able as is


def test_render_table_without_color() -> None:
    text = render_table(RESULTS, color=False)
    lines = text.splitlines()
    assert lines[0] == "PASS   os.supported    Ubuntu 22.04.4 LTS on x86_64"
    assert (
        lines[1]
        == "FAIL   system.swap     partition swap /dev/sda2 is active: nodeadm init fails on it"
    )
    assert lines[2] == "                       -> swapoff /dev/sda2 and remove it from /etc/fstab"
    assert lines[3].startswith("WARN   system.clock")
    assert lines[4].strip() == "-> timedatectl set-ntp true"
    assert lines[5] == "SKIP   credentials     no assignment yet"
    assert lines[6].startswith("ERROR  nodeadm.binary  timed out after 30 s")
    assert lines[7].strip() == "-> run it again"
    assert lines[-1] == (
        "5 checks: 1 passed, 1 warned, 1 failed, 1 skipped, 1 errored; install and init are "
        "blocked by system.swap, nodeadm.binary"
    )
    assert "\033[" not in text


def test_render_table_with_color_and_when_nothing_blocks() -> None:
    text = render_table(RESULTS[:1], color=True)
    assert "\033[32mPASS " in text
    assert "\033[0m" in text
    assert text.splitlines()[-1] == "1 check: 1 passed, 0 warned, 0 failed, 0 skipped, 0 errored"
    assert render_table([], color=False).strip().startswith("0 checks")
