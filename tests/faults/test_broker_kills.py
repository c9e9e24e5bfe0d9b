"""The broker killed (SIGKILL) and restarted over and over while the agent publishes and
takes commands (docs/api/asyncapi.yaml, docs/controller.md): no QoS 1 message is lost by the agent, and every command
runs exactly once, with exactly one final reply.

A persistent commander (its broker session outlives the kills) plays the controller and
sends signed commands throughout, `ping` and `run-checks` of two checks, whenever it is
connected. Mosquitto saves its database on every change, but only after it has sent the
PUBACK: a kill in between loses messages it acknowledged, which no publisher can prevent
(the agent's duty ends at the PUBACK, docs/api/asyncapi.yaml). The broker logs every packet here, so
`devtools.brokerlog` tells from its own log which messages it acknowledged and lost; only
those are excused, per topic, and nothing else may be missing.

What the agent produced is known without trusting what arrived:
- the agent's log says which commands it ran (`command.finished`), each at most once;
- each command it ran ends in one final reply, and one `accepted` reply;
- each `run-checks` it ran made one `check` event per check;
- each status it published it also wrote to `status.json` (what `edge-agent status` shows):
  a sampler reads that file every few tens of milliseconds, and every status seen there
  must arrive, including those queued while the broker was away;
- every `seq` it drew went to a status, an event, a reply or a health sample; health is the
  only thing allowed to be missing (never queued), so the missing numbers are bounded by the
  health samples taken while it was disconnected.
All counts are de-duplicated by `seq`. A final reply the broker lost is then recovered the
way a controller would: the same envelope sent again gets the recorded reply, marked
`duplicate`, and the command does not run again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from devtools import brokerlog
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
        self.envelopes: dict[str, dict[str, Any]] = {}
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
            self.envelopes[env["id"]] = env
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
    # Save on every change, and log every packet for devtools.brokerlog.
    s.broker.extra_config = ("autosave_interval 1", "autosave_on_changes true", "log_type all")
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

    # What the broker acknowledged and then lost in its kills, by its own log.
    log = s.broker.log_path.read_text(errors="replace")
    killed = sum(run.killed for run in brokerlog.runs(log)[:-1])
    assert killed == KILLS, f"the broker log shows {killed} killed runs, not {KILLS}"
    commander = f"cmdr-{s.uid}"
    broker_lost = brokerlog.unsaved_acks(log, s.uid, subscriber=commander)
    broker_lost_commands = brokerlog.unsaved_acks(log, commander, subscriber=s.uid)["commands"]

    def finals(cid: str, duplicate: bool = False) -> dict[int, dict[str, Any]]:
        return {
            r["seq"]: r
            for r in s.cmd.replies(cid)
            if r["state"] in FINAL_STATES and r["duplicate"] is duplicate
        }

    def unanswered() -> list[str]:
        return [cid for cid in sender.sure if not finals(cid)]

    s.cmd.wait_for(lambda: not unanswered(), 10)
    finished: dict[str, list[dict[str, Any]]] = {}
    for line in s.host.log_lines():
        if line.get("event") == "command.finished":
            finished.setdefault(str(line["command_id"]), []).append(line)
    for cid, lines in finished.items():
        assert len(lines) == 1, f"{cid} ran {len(lines)} times: {lines}"
        assert lines[0]["state"] == "succeeded", lines[0]
    ran = {cid: name for cid, name in sent.items() if cid in finished}

    silent = unanswered()
    reply_lost = [cid for cid in silent if cid in ran]
    never_ran = [cid for cid in silent if cid not in ran]
    assert len(never_ran) <= broker_lost_commands, (
        f"{len(never_ran)} acknowledged commands never ran, and the broker lost only "
        f"{broker_lost_commands} commands: {never_ran[:5]}"
    )
    # Each command that ran owes an `accepted` and a final reply, once each.
    replies_missing = 0
    for cid in ran:
        got = finals(cid)
        assert len(got) <= 1, f"{cid} has {len(got)} final replies: {list(got.values())}"
        accepted = {r["seq"] for r in s.cmd.replies(cid) if r["state"] == "accepted"}
        assert len(accepted) <= 1, f"{cid}: {len(accepted)} accepted replies"
        if got:
            assert next(iter(got.values()))["state"] == "succeeded", got
        replies_missing += (not got) + (not accepted)
    assert replies_missing <= broker_lost["replies"], (
        f"{replies_missing} replies of commands that ran never came, and the broker lost "
        f"only {broker_lost['replies']}; no final reply for {reply_lost[:5]}"
    )

    # Every check a run-checks ran is one check event (seq de-duplicates), but those the
    # broker lost.
    check_events = {e["seq"] for e in s.cmd.events("check") if e["seq"] > first_seq}
    expected = len(CHECKS) * sum(1 for name in ran.values() if name == "run-checks")
    assert expected - broker_lost["events"] <= len(check_events) <= expected, (
        f"{len(check_events)} check events for {expected} checks run "
        f"(the broker lost {broker_lost['events']} events)"
    )
    # Every status the agent published (as far as the sampler saw) arrived.
    statuses = {st["seq"] for st in s.cmd.statuses()}
    made = {n for n in sampler.seen if n > first_seq}
    offline = [n for n in made if any(a <= sampler.seen[n] <= b for a, b in outages)]
    assert len(made) >= 2 * KILLS and len(offline) >= KILLS, (
        f"the sampler saw only {len(made)} statuses, {len(offline)} while the broker was away"
    )
    lost = sorted(made - statuses)
    assert len(lost) <= broker_lost["status"], (
        f"{len(lost)} of {len(made)} statuses never arrived (the broker lost "
        f"{broker_lost['status']}): {lost[:5]}"
    )
    # Every seq drawn since the faults began went out, but for health while disconnected.
    seen = {
        r.json()["seq"]
        for suffix in ("status", "events", "replies", "health")
        for r in s.cmd.records(suffix)
        if isinstance(r.json().get("seq"), int)
    }
    last = max(seen)
    missing = [n for n in range(first_seq, last) if n not in seen]
    bound = disconnected / HEALTH_S + 2 * KILLS + sum(broker_lost.values())
    assert len(missing) <= bound, (
        f"{len(missing)} seq numbers never arrived; health missed while disconnected "
        f"accounts for at most {bound:.0f}"
    )

    # The controller's remedy for a reply it never got: the same envelope again. The ledger
    # answers with the recorded final reply, marked duplicate, without running it again.
    for cid in silent:
        s.cmd.send(sender.envelopes[cid], timeout=5)
    for cid in reply_lost:
        again = s.cmd.wait_for(lambda cid=cid: finals(cid, duplicate=True), 10)
        assert again and next(iter(again.values()))["state"] == "succeeded", (cid, again)
    for cid in never_ran:
        got = s.cmd.wait_for(lambda cid=cid: finals(cid), 10)
        assert got and next(iter(got.values()))["state"] == "succeeded", (cid, got)
    runs_now = [
        ln["command_id"] for ln in s.host.log_lines() if ln.get("event") == "command.finished"
    ]
    for cid in silent:
        assert runs_now.count(cid) == 1, f"{cid} ran {runs_now.count(cid)} times"
