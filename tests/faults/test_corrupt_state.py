"""A damaged state file (docs/architecture.md: "crash or reboot at any point"): the agent starts, says
what it found (a log line and an `error` event naming the problem), and carries on from its
backup, or, with no usable backup, from the facts on the host, without running again the
nodeadm steps the host shows done.

One joined host, restarted over and over with its state damaged a different way each time:
state.json cut mid-way; state.json garbage (the backup must still be the good one: a damaged
file is never rotated into the backup); both files unusable on a joined host (tracker,
kubelet active, SSM registration: it resumes `joined`, no nodeadm at all); both unusable on
a host whose kubelet is down (the tracker says the install finished: `nodeadm init` only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from devtools.fakehost import layout
from tests.e2e.conftest import Site

STEPS = ("install", "init", "upgrade", "uninstall")


def _steps(site: Site) -> list[str]:
    return [c[0] for c in site.host.nodeadm_calls() if c and c[0] in STEPS]


def _events(site: Site, code: str, since: float) -> list[dict[str, Any]]:
    return [
        r.json()
        for r in site.cmd.records("events")
        if r.ts >= since and r.json().get("type") == "error" and r.json().get("code") == code
    ]


def _restart_damaged(site: Site, damage: dict[str, bytes]) -> float:
    """Stop the agent cleanly, overwrite state files, start it again; returns the start time."""
    assert site.host.stop() == 0
    for name, data in damage.items():
        (site.host.state / name).write_bytes(data)
    since = time.time()
    site.start()
    return since


def _parses(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_bytes())
    assert doc["schema_version"] == 1 and doc["lifecycle"]["phase"]
    return dict(doc)


def test_a_damaged_state_is_recovered_from_the_backup_then_from_the_host(
    fault_site: Any,
) -> None:
    s: Site = fault_site()
    s.host.wait_phase("joined", 40)
    time.sleep(1.5)  # a health sample or two: the state is saved again while joined
    done = _steps(s)
    assert done == ["install", "init"]
    state = s.host.state / "state.json"

    # 1. state.json cut mid-way: recovered from state.json.bak, nothing re-run.
    good = state.read_bytes()
    since = _restart_damaged(s, {"state.json": good[: len(good) // 2]})
    found = s.cmd.wait_for(lambda: _events(s, "state_corrupt", since), 15)
    messages = " | ".join(e["message"] for e in found)
    assert "state.json is unreadable" in messages, found
    assert s.cmd.wait_for(
        lambda: any(
            "from state.json.bak" in e["message"] for e in _events(s, "state_corrupt", since)
        ),
        5,
    ), found
    assert s.host.wait_phase("joined", 10)["node_name"].startswith("mi-")
    assert "state.recovered" in s.host.output()
    time.sleep(1.0)
    assert _steps(s) == done, "recovering from the backup ran nodeadm again"

    # 2. state.json garbage: the backup is still the good one (the damaged file was not
    #    rotated into it when the recovered state was saved).
    since = _restart_damaged(s, {"state.json": b"\x00\xff{garbage\x9c" * 40})
    assert s.cmd.wait_for(
        lambda: any(
            "from state.json.bak" in e["message"] for e in _events(s, "state_corrupt", since)
        ),
        15,
    ), s.cmd.events("error")
    assert not _events(s, "state_lost", since)
    s.host.wait_phase("joined", 10)
    time.sleep(1.0)
    assert _steps(s) == done

    # 3. Both unusable (JSON of the wrong shape, and garbage) on a joined host: the host's
    #    facts say joined, so it resumes joined and runs nothing.
    wrong_shape = json.dumps({"schema_version": 1, "lifecycle": ["joined"]}).encode()
    since = _restart_damaged(s, {"state.json": wrong_shape, "state.json.bak": b"\x1f\x8b\x08"})
    lost = s.cmd.wait_for(lambda: _events(s, "state_lost", since), 15)
    assert lost, f"no state_lost event\n{s.host.output()[-3000:]}"
    assert "already joined" in lost[0]["message"] and "kubelet active" in lost[0]["message"]
    corrupt = " | ".join(e["message"] for e in _events(s, "state_corrupt", since))
    assert "state.json is unreadable" in corrupt and "state.json.bak is unreadable" in corrupt
    st = s.host.wait_phase("joined", 10)
    # Recovered from the host, the installed version is what its kubelet reports (the
    # stand-in's 1.31 kubelet says v1.31.7), not the assignment's assumed "1.31".
    assert st["kubernetes_version"] == "1.31.7" and st["node_name"].startswith("mi-")
    phase = [
        e
        for e in s.cmd.events("phase")
        if e.get("to") == "joined" and "recovered from the host" in e.get("reason", "")
    ]
    assert phase, s.cmd.events("phase")
    assert "state.recovered_from_host" in s.host.output()
    time.sleep(1.5)
    assert _steps(s) == done, "a joined host re-ran nodeadm after losing its state"
    assert s.host.status()["phase"] == "joined"
    assert _parses(state)["lifecycle"]["phase"] == "joined"

    # 4. Both unusable, and kubelet is down: the tracker still says the install finished,
    #    so the join runs nodeadm init alone.
    layout.set_unit(s.host.root, "kubelet", "inactive")
    since = _restart_damaged(s, {"state.json": b"{", "state.json.bak": b""})
    lost = s.cmd.wait_for(lambda: _events(s, "state_lost", since), 15)
    assert lost and "nodeadm init only" in lost[0]["message"], lost
    assert s.cmd.wait_phase("joined", 30, since=since), s.host.output()[-3000:]
    assert _steps(s) == [*done, "init"]
    assert s.host.stop() == 0
    assert _parses(state)["lifecycle"]["installed_version"] == "1.31.7"  # what kubelet says
