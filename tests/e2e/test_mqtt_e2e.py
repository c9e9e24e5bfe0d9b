"""Availability and the outbox as the controller sees them (docs/api/asyncapi.yaml): `edge-agent run`
against a real Mosquitto, observed by a paho commander. Online is retained with a session
number; the will and a clean stop say offline for that same session; a late offline of an
older session is answered with online at once; and everything published while the broker
was away arrives once it is back, in order, once, even across a restart of the agent.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from devtools.commander import Commander
from tests.e2e.conftest import Site, SiteFactory

JOIN_PHASES = ["registering", "awaiting_assignment", "preflight", "installing", "joining", "joined"]


def _online(site: Site, since: float = 0.0) -> list[dict[str, Any]]:
    return [
        r.json()
        for r in site.cmd.records("availability")
        if r.ts >= since and r.json().get("state") == "online"
    ]


def test_online_is_retained_with_a_session_number(site: Site) -> None:
    online = site.cmd.wait_for(lambda: _online(site), 10)
    assert online, site.cmd.availability()
    session = online[-1]["session"]
    assert type(session) is int and session >= 1
    assert online[-1]["ts"].endswith("Z")
    # A consumer that arrives later still learns the host is online: the message is retained.
    health = site.cmd.wait_for(lambda: site.cmd.records("health"), 5)
    assert health and not health[-1].retain
    assert set(health[-1].json()) >= {
        "uid", "ts", "seq", "uptime_s", "cpu_percent", "load", "memory", "disks", "net",
        "services", "kubelet_healthz",
    }  # fmt: skip
    late = Commander(site.broker.port, uid=site.uid, prefix=site.prefix)
    try:
        got = late.wait_for(lambda: late.records("availability"), 5)
        assert got and got[0].retain
        assert got[0].json()["state"] == "online" and got[0].json()["session"] == session
    finally:
        late.close()


def test_clean_stop_and_crash_say_offline_for_their_own_session(site: Site) -> None:
    first = site.cmd.wait_for(lambda: _online(site), 10)[-1]["session"]
    # SIGTERM: the agent publishes offline itself and exits 0.
    assert site.host.stop(signal.SIGTERM) == 0
    offline = [m for m in site.cmd.availability() if m.get("state") == "offline"]
    assert offline and offline[-1]["session"] == first, site.cmd.availability()
    # Published by the agent at its stop, not the will (whose ts is the connect time).
    assert offline[-1]["ts"] > _online(site)[-1]["ts"]

    since = time.time()
    site.start()
    online = site.cmd.wait_for(lambda: _online(site, since), 15)
    assert online, site.cmd.availability()
    second = online[-1]["session"]
    assert second > first
    # SIGKILL: nothing runs in the agent; the broker publishes the will for this session.
    site.host.kill()
    will = site.cmd.wait_for(
        lambda: [
            r.json()
            for r in site.cmd.records("availability")
            if r.ts >= since and r.json().get("state") == "offline"
        ],
        10,
    )
    assert will, site.cmd.availability()
    assert will[-1]["session"] == second
    assert will[-1]["ts"] <= online[-1]["ts"], "the will's ts is its connection's connect time"
    retained = Commander(site.broker.port, uid=site.uid, prefix=site.prefix)
    try:
        got = retained.wait_for(lambda: retained.records("availability"), 5)
        assert got and got[0].json() == will[-1] and got[0].retain
    finally:
        retained.close()


def test_a_stale_offline_is_answered_with_online_at_once(site: Site) -> None:
    current = site.cmd.wait_for(lambda: _online(site), 10)[-1]["session"]
    site.host.wait_phase("joined", 30)  # quiet, so the answer is not lost in the join's traffic
    for retain in (True, False):
        since = time.time()
        stale = {"state": "offline", "session": current - 1 if current > 1 else 0, "ts": "x"}
        site.cmd.publish("availability", json.dumps(stale), retain=retain)
        again = site.cmd.wait_for(lambda since=since: _online(site, since), 3)
        assert again, f"no online after a stale offline (retain={retain})"
        assert again[-1]["session"] == current
        assert time.time() - since < 3
    # Contract v1.1: any availability message but the agent's own `online` is answered, an
    # `offline` with a later session too (retained, it would show the host offline to every
    # late subscriber); tests/faults/test_hostile_broker_peer.py covers the rest of the rule.
    since = time.time()
    site.cmd.publish("availability", json.dumps({"state": "offline", "session": current + 5}))
    again = site.cmd.wait_for(lambda: _online(site, since), 3)
    assert again and again[-1]["session"] == current


def test_status_is_republished_at_its_interval_and_no_more_often(
    site_factory: SiteFactory,
) -> None:
    interval = 12.0
    s = site_factory(config={"mqtt": {"status_interval_s": interval}})
    s.host.wait_phase("joined", 30)
    time.sleep(2.0)  # the join's last changes (checks, first health verdict) settle

    def times() -> list[float]:
        return [r.ts for r in s.cmd.records("status")]

    last = times()[-1]
    # Nothing changes on a quiet joined host: the next status is the periodic one.
    assert s.cmd.wait_for(lambda: times()[-1] > last, interval + 3), "no periodic status"
    following = times()[-1]
    assert following - last >= interval - 1.0, (
        f"status republished after {following - last:.1f}s, interval {interval}s"
    )
    body = s.cmd.statuses()[-1]
    assert body["phase"] == "joined" and body["seq"] > s.cmd.statuses()[-2]["seq"]


def _phase_events(site: Site) -> list[dict[str, Any]]:
    return site.cmd.events("phase")


def _assert_delivered_once_in_order(site: Site) -> None:
    events = site.cmd.messages("events")
    seqs = [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs)), "an event was delivered twice"
    assert seqs == sorted(seqs), "events arrived out of order"
    phases = [e["to"] for e in _phase_events(site)]
    assert phases[: len(JOIN_PHASES)] == JOIN_PHASES, phases
    # Retained copies replayed to the commander when it subscribes again are not duplicates.
    statuses = [r.json()["seq"] for r in site.cmd.records("status") if not r.retain]
    assert len(statuses) == len(set(statuses)), "a status was delivered twice"


def test_the_whole_join_is_delivered_after_the_broker_comes_back(
    site_factory: SiteFactory,
) -> None:
    s = site_factory(broker_up=False, persistence=True, persistent_commander=True)
    s.host.wait_phase("joined", 30)
    assert s.cmd.messages("events") == []
    s.broker.restart()
    assert s.cmd.wait_for(lambda: any(e.get("to") == "joined" for e in _phase_events(s)), 20), (
        s.host.output()[-2000:]
    )
    _assert_delivered_once_in_order(s)
    assert s.cmd.wait_for(lambda: _online(s), 5)
    # The retained status is the current one.
    assert s.cmd.wait_for(lambda: s.cmd.statuses() and s.cmd.statuses()[-1]["phase"] == "joined", 5)


def test_messages_waiting_in_the_outbox_survive_an_agent_restart(
    site_factory: SiteFactory,
) -> None:
    s = site_factory(broker_up=False, persistence=True, persistent_commander=True)
    s.host.wait_phase("joined", 30)
    assert s.host.stop() == 0
    assert s.cmd.messages("events") == []
    s.broker.restart()
    assert s.cmd.wait_connected(10)
    time.sleep(0.5)
    assert s.cmd.messages("events") == []  # nobody to publish them yet
    s.start()
    assert s.cmd.wait_for(lambda: any(e.get("to") == "joined" for e in _phase_events(s)), 20), (
        s.host.output()[-2000:]
    )
    _assert_delivered_once_in_order(s)
    # What the second run publishes comes after, with higher seq.
    pong = s.run("ping")
    assert pong["state"] == "succeeded"
    assert pong["seq"] > max(e["seq"] for e in s.cmd.messages("events"))
