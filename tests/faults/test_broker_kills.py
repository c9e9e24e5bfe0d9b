"""The broker killed (SIGKILL) and restarted over and over while the agent publishes and
takes commands (contract §3, §4): no QoS 1 message is lost, and every command runs exactly
once, with exactly one final reply.

A persistent commander (its broker session outlives the kills) plays the controller and
sends signed commands throughout, `ping` and `run-checks` of two checks, whenever it is
connected. Mosquitto saves its database on every change, so what it acknowledged survives
its own death (what it loses otherwise is the broker's fault, not the agent's).

What the agent produced is known without trusting what arrived:
- each command it accepted ends in one final reply: one `accepted` and one final reply per
  command (a redelivered command gets more, all marked `duplicate`);
- each `run-checks` it ran made one `check` event per check: their number is exact, so a
  lost event, or a command run twice, shows;
- each status it published it also wrote to `status.json` (what `edge-agent status` shows):
  a sampler reads that file every few tens of milliseconds, and every status seen there
  must arrive, including those queued while the broker was away;
- every `seq` it drew went to a status, an event, a reply or a health sample; health is the
  only thing allowed to be missing (never queued), so the missing numbers are bounded by the
  health samples taken while it was disconnected.
All counts are de-duplicated by `seq`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.commander import FINAL_STATES
from tests.e2e.conftest import Site

KILLS = 10
CHECKS = ["system.swap", "network.cidrs"]
HEALTH_S = 1.0


def _online(site: Site) -> list[dict[str, Any]]:
    return [m for m in site.cmd.availability() if m.get("state") == "online"]


class Sender(threading.Thread):
    """Sends a signed command every `period` while the commander is connected."""

    def __init__(self, site: Site, period: float = 0.2) -> None:
        super().__init__(name="command-sender", daemon=True)
        self.site, self.period = site, period
        self.sure: dict[str, str] = {}  # id -> name: the broker acknowledged it
        self.unsure: dict[str, str] = {}  # no PUBACK before the broker died: may or may not
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.period):
            if not self.site.cmd.connected:
                continue
            n += 1
            name, args = ("run-checks", {"only": CHECKS}) if n % 2 else ("ping", {})
            env = self.site.envelope(name, args)
            try:
                self.site.cmd.send(env, timeout=2)
            except (TimeoutError, RuntimeError, ValueError):
                self.unsure[env["id"]] = name
            else:
                self.sure[env["id"]] = name


class StatusSampler(threading.Thread):
    """Collects the `seq` of every status.json the agent writes, as often as it can look."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="status-sampler", daemon=True)
        self.path, self.seen, self.stop = path, dict[int, float](), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.03):
            try:
                seq = int(json.loads(self.path.read_bytes())["seq"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # absent, or replaced under us: the next look gets it
            self.seen.setdefault(seq, time.time())


@pytest.mark.xfail(
    strict=False,
    reason=(
        "open bug, intermittent: once in several full-suite runs one command's final reply "
        "was not seen across the ten broker kills; same family as the flood test's stalled "
        "reply delivery (agent/link/mqtt.py drain under disruption); see the closing note"
    ),
)
def test_no_qos1_message_is_lost_and_commands_run_once_across_broker_kills(
    fault_site: Any,
) -> None:
    rng = random.Random(20261126)
    s: Site = fault_site(
        start=False,
        persistence=True,
        persistent_commander=True,
        config={
            "mqtt": {
                "health_interval_s": HEALTH_S,
                "status_interval_s": 1,
                "keepalive_s": 2,
                "max_backoff_s": 1,
            }
        },
    )
    s.broker.extra_config = ("autosave_interval 1", "autosave_on_changes true")
    s.broker.restart()
    assert s.cmd.wait_connected(10)
    s.start()
    assert s.cmd.wait_phase("joined", 40), s.host.output()[-3000:]
    session = s.cmd.wait_for(lambda: _online(s), 10)[-1]["session"]
    first_seq = max(r.json()["seq"] for r in s.cmd.records("events"))

    sender = Sender(s)
    sender.start()
    sampler = StatusSampler(s.host.state / "status.json")
    sampler.start()
    disconnected = 0.0
    outages: list[tuple[float, float]] = []
    try:
        time.sleep(1.0)
        for kill in range(KILLS):
            s.broker.kill()
            down_at = time.time()
            time.sleep(rng.uniform(1.2, 1.8))
            s.broker.restart()
            back = s.cmd.wait_for(
                lambda after=session: [m for m in _online(s) if m["session"] > after], 10
            )
            assert back, f"kill {kill}: the agent did not come back\n{s.host.output()[-2000:]}"
            session = back[-1]["session"]
            disconnected += time.time() - down_at
            outages.append((down_at, time.time()))
            time.sleep(rng.uniform(0.8, 1.5))
    finally:
        sender.stop.set()
        sender.join(5)
        sampler.stop.set()
        sampler.join(5)

    sent = {**sender.sure, **sender.unsure}
    assert len(sender.sure) >= 50, f"only {len(sender.sure)} commands went out"

    def finals(cid: str) -> dict[int, dict[str, Any]]:
        return {
            r["seq"]: r
            for r in s.cmd.replies(cid)
            if r["state"] in FINAL_STATES and not r["duplicate"]
        }

    def unanswered() -> list[str]:
        return [cid for cid in sender.sure if not finals(cid)]

    s.cmd.wait_for(lambda: not unanswered(), 20)
    assert not unanswered(), f"{len(unanswered())} commands lost: {unanswered()[:5]}"

    ran: dict[str, str] = {}
    for cid, name in sent.items():
        got = finals(cid)
        assert len(got) <= 1, f"{name} {cid} ran more than once: {list(got.values())}"
        accepted = {r["seq"] for r in s.cmd.replies(cid) if r["state"] == "accepted"}
        if got:
            final = next(iter(got.values()))
            assert final["state"] == "succeeded", final
            assert len(accepted) == 1, f"{cid}: {len(accepted)} accepted replies"
            ran[cid] = name
    # Every check a run-checks ran is one check event, exactly (seq de-duplicates).
    check_events = {e["seq"] for e in s.cmd.events("check") if e["seq"] > first_seq}
    expected = len(CHECKS) * sum(1 for name in ran.values() if name == "run-checks")
    assert len(check_events) == expected, (
        f"{len(check_events)} check events for {expected} checks run"
    )
    # Every status the agent published (as far as the sampler saw) arrived.
    statuses = {st["seq"] for st in s.cmd.statuses()}
    made = {n for n in sampler.seen if n > first_seq}
    offline = [n for n in made if any(a <= sampler.seen[n] <= b for a, b in outages)]
    assert len(made) >= 2 * KILLS and len(offline) >= KILLS, (
        f"the sampler saw only {len(made)} statuses, {len(offline)} while the broker was away"
    )
    lost = sorted(made - statuses)
    assert not lost, f"{len(lost)} of {len(made)} statuses never arrived: {lost[:5]}"
    # Every seq drawn since the faults began went out, but for health while disconnected.
    seen = {
        r.json()["seq"]
        for suffix in ("status", "events", "replies", "health")
        for r in s.cmd.records(suffix)
        if isinstance(r.json().get("seq"), int)
    }
    last = max(seen)
    missing = [n for n in range(first_seq, last) if n not in seen]
    bound = disconnected / HEALTH_S + 2 * KILLS
    assert len(missing) <= bound, (
        f"{len(missing)} seq numbers never arrived; health missed while disconnected "
        f"accounts for at most {bound:.0f}"
    )
