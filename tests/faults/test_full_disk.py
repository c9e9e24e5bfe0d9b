"""A full state disk (docs/api/asyncapi.yaml, the README CLI): the agent keeps running, sheds health first (health is
never queued), keeps its QoS 1 messages as long as it can (in memory once the disk refuses
them), says so in its status (`last_error.code = "state_storage_full"`), and recovers once
space is back; even a SIGTERM on a full disk is a clean stop. `state_dir` is a 512 KiB tmpfs
that the test fills to the last byte while the broker is down, so the outbox has to grow.
Also: the `seq` counter goes on numbering when it cannot record its reservations, without a
restart ever reusing a number; and commands arriving while the disk is full each still get a
final reply (`rejected` with `busy`: a command that cannot be recorded must not run).
"""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.state.store import SeqCounter
from devtools.commander import FINAL_STATES as FINAL
from tests.e2e.conftest import Site
from tests.faults.conftest import fill

JOIN_PHASES = ["registering", "awaiting_assignment", "preflight", "installing", "joining", "joined"]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _storage_statuses(site: Site) -> list[dict[str, Any]]:
    return [
        st
        for st in site.cmd.statuses()
        if (st.get("last_error") or {}).get("code") == "state_storage_full"
    ]


def _small_site(fault_site: Any, small_disk: Any, **kw: Any) -> Site:
    s: Site = fault_site(
        start=False,
        persistence=True,
        persistent_commander=True,
        config={"mqtt": {"status_interval_s": 1, "health_interval_s": 1}},
        **kw,
    )
    small_disk(s.host.state)
    s.start()
    return s


def test_a_full_state_disk_sheds_health_keeps_the_rest_and_says_so(
    small_disk: Any, fault_site: Any
) -> None:
    s = _small_site(fault_site, small_disk, broker_up=False)
    s.host.wait_phase("joined", 40)
    filler = fill(s.host.state)
    full_at = time.time()
    time.sleep(3.5)  # statuses every second, health every second, all refused by the disk
    assert s.host.proc is not None and s.host.proc.poll() is None, s.host.output()[-3000:]
    st = s.host.status()  # the command line still answers (from what is on disk)
    assert st.get("phase") == "joined", st
    assert "state.storage_failed" in s.host.output()

    s.broker.restart()
    said = s.cmd.wait_for(lambda: _storage_statuses(s), 15)
    assert said, f"no status said the disk is full\n{s.host.output()[-3000:]}"
    assert "No space left" in said[-1]["last_error"]["message"]
    # Everything queued before the disk filled (on disk) and after (in memory) arrives.
    events = s.cmd.wait_for(
        lambda: [e.get("to") for e in s.cmd.events("phase")][: len(JOIN_PHASES)] == JOIN_PHASES,
        15,
    )
    assert events, [e.get("to") for e in s.cmd.events("phase")]
    seqs = list(dict.fromkeys(e["seq"] for e in s.cmd.events()))  # QoS 1 may repeat one
    assert seqs == sorted(seqs), "events out of order"

    def queued_while_full() -> list[dict[str, Any]]:
        return [st for st in s.cmd.statuses() if full_at <= _epoch(st["ts"]) <= full_at + 3.5]

    # One a second while the disk was full (kept in memory): they all arrive, in order.
    s.cmd.wait_for(lambda: len(queued_while_full()) >= 3, 10)
    assert len(queued_while_full()) >= 3, "statuses made while the disk was full were lost"
    # Health is never queued: nothing sampled while the broker was away shows up.
    online_at = min(r.ts for r in s.cmd.records("availability") if r.json()["state"] == "online")
    stale = [h for h in s.cmd.health() if _epoch(h["ts"]) < online_at - 1.0]
    assert not stale, f"{len(stale)} health samples from the outage were queued"
    assert s.cmd.wait_for(s.cmd.health, 5), "no health once connected"

    # Space again: the status says the trouble is over.
    filler.unlink()
    cleared_since = time.time()
    cleared = s.cmd.wait_for(
        lambda: [
            st
            for st in s.cmd.statuses()
            if _epoch(st["ts"]) >= cleared_since and st.get("last_error") is None
        ],
        10,
    )
    assert cleared, s.cmd.statuses()[-1]
    assert s.run("ping", timeout=10)["state"] == "succeeded"

    # A clean stop on a full disk is still a clean stop.
    fill(s.host.state)
    assert s.host.stop(signal.SIGTERM) == 0, s.host.output()[-3000:]
    assert "agent.stopped" in s.host.output()


def test_commands_while_the_disk_is_full_each_get_a_final_reply(
    small_disk: Any, fault_site: Any
) -> None:
    s = _small_site(fault_site, small_disk, no_assignment=True)
    assert s.cmd.wait_for(s.cmd.availability, 15)
    fill(s.host.state)
    # Enough of them that the command ledger's appends outgrow the page it had.
    ids = [s.send("ping") for _ in range(20)]

    def unanswered() -> list[str]:
        finals = {r["command_id"] for r in s.cmd.messages("replies") if r["state"] in FINAL}
        return [cid for cid in ids if cid not in finals]

    s.cmd.wait_for(lambda: not unanswered(), 4)
    assert not unanswered(), f"{len(unanswered())} of {len(ids)} got no final reply: " + str(
        s.cmd.events("error")[-2:]
    )


def test_seq_numbers_keep_increasing_on_a_full_disk_and_after_a_restart(
    small_disk: Any, tmp_path: Path
) -> None:
    """The counter reserves blocks in a file; a reservation the disk refuses must neither
    stop the numbering nor let a restart hand out the same numbers again."""
    disk = small_disk(tmp_path / "disk")
    path = disk / "seq"
    first = SeqCounter(path, block=10)
    before = [first() for _ in range(5)]
    fill(disk)
    during = [first() for _ in range(40)]  # crosses several block boundaries
    assert before + during == sorted(set(before + during))
    # Restarts, the disk still full then freed, a few seconds later (the counter's premise:
    # fewer than a thousand numbers a second).
    later = time.time() + 5
    after = SeqCounter(path, block=10, clock=lambda: later)
    assert after() > during[-1]
    (disk / "filler").unlink()
    again = SeqCounter(path, block=10, clock=lambda: later + 1)
    assert again() > during[-1]
    assert json.loads(path.read_text())["next"] > during[-1]
