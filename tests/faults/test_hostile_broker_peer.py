"""Anyone who can publish on the broker cannot take the agent's link or memory down.

A real agent, a real Mosquitto and the devtools commander as the hostile peer: garbage and
forged messages on the agent's own availability topic (ignored, or answered with `online` at
a bounded pace, never a reconnect), and a flood of large unsigned commands (bounded memory,
every message answered or counted as dropped, a genuine ping still answered).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Site, SiteFactory

RSS_HEADROOM_KB = 60 * 1024


def _vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _joined(site_factory: SiteFactory) -> tuple[Site, int, int]:
    """A joined site, its agent's pid and its availability session."""
    site = site_factory()
    site.host.wait_phase("joined", 30)
    assert site.host.proc is not None
    online = site.cmd.wait_for(lambda: _onlines(site), 10)
    return site, site.host.proc.pid, online[-1]["session"]


def _onlines(site: Site, since: float = 0.0) -> list[dict[str, Any]]:
    """The agent's `online` messages since `since` (not the forged ones the test sends)."""
    out = []
    for r in site.cmd.records("availability"):
        try:
            doc = json.loads(r.payload)
        except (ValueError, RecursionError):  # the garbage this file sends
            continue
        ours = isinstance(doc, dict) and doc.get("ts") != "forged"
        if r.ts >= since and ours and doc.get("state") == "online":
            out.append(doc)
    return out


def _connects(site: Site) -> int:
    return sum(1 for line in site.host.log_lines() if line.get("event") == "mqtt.connected")


def test_garbage_on_the_availability_topic_is_ignored_and_logged_once(
    site_factory: SiteFactory,
) -> None:
    site, _, session = _joined(site_factory)
    since = time.time()
    for _ in range(3):
        site.cmd.publish("availability", b"[" * 3000)
        site.cmd.publish("availability", b"\xff\xfe not json")
    assert site.run("ping", timeout=5)["state"] == "succeeded"
    time.sleep(1.0)
    assert _connects(site) == 1, "the garbage cost a reconnect"
    assert _onlines(site, since) == [], "garbage is ignored, not answered"
    logged = [
        line for line in site.host.log_lines() if line.get("event") == "mqtt.availability_garbage"
    ]
    assert len(logged) == 1, logged
    assert site.host.proc is not None and site.host.proc.poll() is None
    assert session == site.cmd.wait_for(lambda: _onlines(site), 1)[-1]["session"]


def test_a_retained_offline_of_a_later_session_is_overwritten_with_online(
    site_factory: SiteFactory,
) -> None:
    site, _, session = _joined(site_factory)
    since = time.time()
    forged = {"state": "offline", "session": session + 7, "ts": "forged"}
    site.cmd.publish("availability", forged, retain=True)
    again = site.cmd.wait_for(lambda: _onlines(site, since), 3)
    assert again and again[-1]["session"] == session
    # What a controller subscribing now finds retained is the agent's own `online`.
    late = site.connect_commander()
    retained = late.wait_for(lambda: late.records("availability"), 5)
    assert retained and retained[-1].retain
    assert retained[-1].json()["state"] == "online"
    assert retained[-1].json()["session"] == session


def test_corrections_are_paced_to_one_a_second(site_factory: SiteFactory) -> None:
    site, _, session = _joined(site_factory)
    since = time.time()
    for i in range(40):
        other = {"state": "online", "session": session + 100 + i, "ts": "forged"}
        site.cmd.publish("availability", other, wait=False)
    time.sleep(3.5)
    answers = _onlines(site, since)
    span = time.time() - since
    assert answers, "no correction at all"
    assert len(answers) <= span + 1, f"{len(answers)} corrections in {span:.1f} s"
    assert all(a["session"] == session for a in answers)
    assert _connects(site) == 1


def _junk(site: Site, i: int, pad: int) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    stamp = "%Y-%m-%dT%H:%M:%S.000Z"
    return {
        "id": f"junk-{i:05d}",
        "name": "ping",
        "args": {"pad": "x" * pad},
        "uid": site.uid,
        "issued_at": now.strftime(stamp),
        "expires_at": (now + timedelta(minutes=5)).strftime(stamp),
    }


def _dropped(site: Site) -> int:
    events = [e for e in site.cmd.events("error") if e.get("code") == "commands_dropped"]
    return sum(int(re.match(r"(\d+) ", str(e["message"])).group(1)) for e in events)  # type: ignore[union-attr]


def test_a_flood_of_large_junk_is_counted_and_a_genuine_ping_gets_through(
    site_factory: SiteFactory,
) -> None:
    _flood(site_factory, check_rss=False)


@pytest.mark.xfail(
    reason="open: 3,000 x 60 KB still grows the peak RSS by 84-89 MB; the messages wait in "
    "aiomqtt's own queue (backstop 4,096) before the read loop takes them, and a smaller "
    "backstop drops silently, genuine commands too",
    strict=False,
)
def test_a_flood_of_large_junk_keeps_the_peak_rss_within_60_mb(
    site_factory: SiteFactory,
) -> None:
    _flood(site_factory, check_rss=True)


def _flood(site_factory: SiteFactory, *, check_rss: bool) -> None:
    site, pid, _ = _joined(site_factory)
    hwm = _vm_kb(pid, "VmHWM")
    n = 3000
    junk_ids = {f"junk-{i:05d}" for i in range(n)}
    for i in range(n):
        site.cmd.send(_junk(site, i, 60_000), wait=False)
    # Gets through: answered within the 30 s an operator would wait, not dropped with the junk.
    # How fast it gets through on an idle machine is a benchmark's business, not a test's.
    ping = site.send("ping")
    reply = site.cmd.final_reply(ping, 30)
    assert reply is not None and reply["state"] == "succeeded", site.host.output()[-2000:]

    def answered() -> int:
        return len({r["command_id"] for r in site.cmd.messages("replies")} & junk_ids)

    site.cmd.wait_for(lambda: answered() + _dropped(site) >= n, 60)
    assert answered() + _dropped(site) == n, (answered(), _dropped(site))
    assert site.host.proc is not None and site.host.proc.poll() is None
    grown = _vm_kb(pid, "VmHWM") - hwm
    assert not check_rss or grown < RSS_HEADROOM_KB, f"peak RSS grew by {grown} KiB"
    assert _connects(site) == 1
