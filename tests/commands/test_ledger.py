"""The command ledger and the never-backwards clock it relies on, on real files.

Crashes are real (a child process SIGKILLs itself mid-command), corruption is real bytes
written into the file, and a clock stepped back is a second `NeverBackwardsClock` built on
the same file with a wall clock a day earlier.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.ledger import (
    CommandLedger,
    DuplicateCommandId,
    LedgerEntry,
    LedgerError,
    LedgerFull,
    UnknownCommandId,
    prune_periodically,
)
from agent.commands.signature import load_public_key
from agent.core.envelope import CommandEnvelope, Rejection, validate_envelope
from agent.core.timefmt import iso, parse_iso
from agent.state.clock import NeverBackwardsClock

T0 = parse_iso("2026-11-26T17:00:00.000Z")
DAY = 86400.0


class HandClock:
    """A clock the test sets by hand; counts `flush()` calls like NeverBackwardsClock's."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.flushes = 0

    def now(self) -> float:
        return self.t

    def flush(self) -> None:
        self.flushes += 1


def command(cid: str, *, expires: float = T0 + 600, name: str = "ping") -> CommandEnvelope:
    return CommandEnvelope(
        id=cid,
        name=name,
        args={},
        uid="edge-test",
        issued_at=iso(expires - 600),
        expires_at=iso(expires),
        issued_ts=expires - 600,
        expires_ts=expires,
        sig="AAAA",
        raw={},
    )


def reply(cid: str, state: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "command_id": cid,
        "uid": "edge-test",
        "name": "ping",
        "state": state,
        "ts": iso(T0),
        "seq": 7,
        "progress": None,
        "message": "",
        "result": {"pong": True} if state == "succeeded" else None,
        "error": None if state == "succeeded" else {"code": state, "message": "x"},
        "duplicate": False,
        **extra,
    }


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


def got(ledger: CommandLedger, cid: str) -> LedgerEntry:
    entry = ledger.lookup(cid)
    assert entry is not None, f"{cid} is not in the ledger"
    return entry


def open_ledger(path: Path, clock: Any = None, **kw: Any) -> CommandLedger:
    return CommandLedger(path, HandClock() if clock is None else clock, **kw)


# -- recording -----------------------------------------------------------------------------


def test_start_progress_final_and_lookup(path: Path) -> None:
    ledger = open_ledger(path)
    assert ledger.lookup("c1") is None
    started = ledger.record_start(command("c1", name="run-checks"))
    assert (started.state, started.name, started.final) == ("accepted", "run-checks", False)
    ledger.record_progress("c1")
    assert got(ledger, "c1").state == "in_progress"
    sent = reply("c1")
    ledger.record_final("c1", sent)
    sent["seq"] = 99  # the caller's dict is its own: the record is a copy
    entry = ledger.lookup("c1")
    assert entry is not None
    assert (entry.state, entry.final) == ("succeeded", True)
    assert entry.reply == reply("c1")
    assert entry.expires_ts == T0 + 600
    ledger.close()


def test_persists_across_reload(path: Path) -> None:
    ledger = open_ledger(path)
    ledger.record_start(command("c1"))
    ledger.record_final("c1", reply("c1", result={"é": "中"}))
    ledger.record_start(command("c2"))
    ledger.close()
    again = open_ledger(path)
    assert got(again, "c1").reply == reply("c1", result={"é": "中"})
    assert got(again, "c2").state == "accepted"
    assert len(again) == 2
    assert not again.recovered_from_corruption
    again.close()


def test_the_same_id_is_never_started_twice(path: Path) -> None:
    ledger = open_ledger(path)
    ledger.record_start(command("c1"))
    with pytest.raises(DuplicateCommandId):
        ledger.record_start(command("c1"))
    ledger.record_final("c1", reply("c1"))
    ledger.close()
    again = open_ledger(path)
    with pytest.raises(DuplicateCommandId):
        again.record_start(command("c1"))
    again.close()


def test_lifecycle_misuse_is_refused(path: Path) -> None:
    ledger = open_ledger(path)
    with pytest.raises(UnknownCommandId):
        ledger.record_progress("nope")
    with pytest.raises(UnknownCommandId):
        ledger.record_final("nope", reply("nope"))
    ledger.record_start(command("c1"))
    with pytest.raises(ValueError, match="not a final state"):
        ledger.record_final("c1", reply("c1", state="in_progress"))
    with pytest.raises(ValueError, match="not a running state"):
        ledger.record_progress("c1", "succeeded")
    ledger.record_final("c1", reply("c1", state="canceled"))
    with pytest.raises(LedgerError, match="already has its final reply"):
        ledger.record_final("c1", reply("c1"))
    with pytest.raises(LedgerError, match="already has its final reply"):
        ledger.record_progress("c1")
    assert got(ledger, "c1").state == "canceled"
    ledger.close()


# -- crashes -------------------------------------------------------------------------------

_CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from agent.commands.ledger import CommandLedger
from agent.core.envelope import CommandEnvelope

class Clock:
    def now(self): return 1.0e9

def command(cid):
    return CommandEnvelope(cid, "ping", {}, "edge-test", "", "", 1.0e9, 4.0e9, None, {})

ledger = CommandLedger(Path(sys.argv[1]), Clock())
ledger.record_start(command("done"))
ledger.record_final("done", {"state": "succeeded"})
ledger.record_start(command("queued"))
ledger.record_start(command("running"))
ledger.record_progress("running")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crash_leaves_interrupted_entries_for_one_final_reply(path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(root)], check=False, capture_output=True
    )
    assert child.returncode == -9, child.stderr.decode()
    ledger = open_ledger(path)
    assert {(e.id, e.state) for e in ledger.interrupted()} == {
        ("queued", "accepted"),
        ("running", "in_progress"),
    }
    assert got(ledger, "done").final
    ledger.record_final("queued", reply("queued", state="failed"))
    assert [e.id for e in ledger.interrupted()] == ["running"]
    ledger.close()
    again = open_ledger(path)
    assert [e.id for e in again.interrupted()] == ["running"]
    again.close()


# -- pruning and the clock -----------------------------------------------------------------


def test_prune_drops_final_entries_past_expiry_plus_skew(path: Path) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock, max_skew_s=300)
    for cid in ("old", "running"):
        ledger.record_start(command(cid, expires=T0 + 10))
    ledger.record_final("old", reply("old"))
    clock.t = T0 + 10 + 300
    assert ledger.prune() == 0
    clock.t += 0.001
    assert ledger.prune() == 1
    assert ledger.lookup("old") is None
    assert ledger.lookup("running") is not None  # a running command is never forgotten
    ledger.close()
    again = open_ledger(path, clock)  # pruned lines still in the journal are pruned again
    assert (again.lookup("old"), len(again)) == (None, 1)
    again.close()


def test_clock_never_goes_back_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    assert not path.exists()
    clock = NeverBackwardsClock(path, wall=lambda: T0)
    assert clock.now() == T0
    assert json.loads(path.read_text()) == {"version": 1, "latest": T0}
    stepped_back = NeverBackwardsClock(path, wall=lambda: T0 - DAY)
    assert stepped_back.now() == T0
    wall = [T0 + 5]
    caught_up = NeverBackwardsClock(path, wall=lambda: wall[0])
    assert caught_up.now() == T0 + 5
    wall[0] = T0 - 1
    assert caught_up.now() == T0 + 5


def test_clock_persists_every_n_seconds_and_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    wall = [T0]
    clock = NeverBackwardsClock(path, wall=lambda: wall[0], persist_every_s=60)
    clock.now()
    for step in range(1, 6):
        wall[0] = T0 + 10 * step
        clock.now()
    assert clock.persisted == T0
    wall[0] = T0 + 60
    clock.now()
    assert clock.persisted == T0 + 60
    wall[0] = T0 + 61
    clock.now()
    assert json.loads(path.read_text())["latest"] == T0 + 60
    clock.flush()
    assert json.loads(path.read_text())["latest"] == T0 + 61


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00garbage",
        b"[]",
        b'{"version": 2, "latest": 1e12}',
        b'{"version": 1}',
        b'{"version": 1, "latest": "soon"}',
        b'{"version": 1, "latest": true}',
        b'{"version": 1, "latest": Infinity}',
        b'{"version": 1, "latest": NaN}',
        b"[" * 100_000,
    ],
)
def test_corrupt_clock_file_starts_from_the_wall_clock(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "clock.json"
    path.write_bytes(content)
    clock = NeverBackwardsClock(path, wall=lambda: T0)
    assert clock.now() == T0
    assert json.loads(path.read_text())["latest"] == T0


def test_clock_file_that_is_a_directory_or_unwritable(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert NeverBackwardsClock(tmp_path / "dir", wall=lambda: T0).now() == T0
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    wall = [T0]
    clock = NeverBackwardsClock(blocked / "clock.json", wall=lambda: wall[0])
    assert clock.now() == T0  # the write failed, the caller did not
    assert isinstance(clock.last_error, OSError)
    wall[0] = T0 - 10
    assert clock.now() == T0
    with pytest.raises((FileExistsError, NotADirectoryError)):
        clock.flush()


def _signed(key: Ed25519PrivateKey, envelope: dict[str, Any]) -> bytes:
    message = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sig = base64.b64encode(key.sign(message.encode())).decode()
    return json.dumps({**envelope, "sig": sig}).encode()


def test_a_replay_after_a_restart_with_the_clock_a_day_back_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    verify = load_public_key(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).verify
    payload = _signed(
        key,
        {
            "id": "c-replay",
            "name": "uninstall",
            "args": {"force": True},
            "uid": "edge-test",
            "issued_at": iso(T0),
            "expires_at": iso(T0 + 600),
        },
    )

    def validate(now: float) -> CommandEnvelope:
        return validate_envelope(
            payload,
            uid="edge-test",
            now=now,
            max_bytes=65536,
            max_skew_s=300,
            max_ttl_s=3600,
            verify=verify,
            allow_unsigned=False,
        )

    # Day 1: the command runs, is recorded, and the ledger later forgets it.
    wall = [T0 + 1]
    clock = NeverBackwardsClock(tmp_path / "clock.json", wall=lambda: wall[0])
    ledger = CommandLedger(tmp_path / "ledger.jsonl", clock)
    ledger.record_start(validate(clock.now()))
    ledger.record_final("c-replay", reply("c-replay"))
    wall[0] = T0 + 600 + 300 + 60
    assert ledger.prune() == 1
    clock.flush()
    ledger.close()

    # Restart with the clock a day early: the envelope is inside its window again by the
    # wall clock, but not by the never-backwards clock.
    early = T0 + 600 + 300 + 60 - DAY
    assert validate(early + DAY - 900).id == "c-replay"  # what a plain clock would allow
    clock = NeverBackwardsClock(tmp_path / "clock.json", wall=lambda: early)
    ledger = CommandLedger(tmp_path / "ledger.jsonl", clock)
    assert ledger.lookup("c-replay") is None
    with pytest.raises(Rejection) as info:
        validate(clock.now())
    assert (info.value.code, info.value.command_id) == ("expired", "c-replay")
    ledger.close()


# -- capacity ------------------------------------------------------------------------------


def test_full_ledger_forgets_the_oldest_expired_after_flushing_the_clock(path: Path) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock, max_entries=4)
    for n in range(4):
        ledger.record_start(command(f"c{n}", expires=T0 + 100 - n))  # c3 expires first
        ledger.record_final(f"c{n}", reply(f"c{n}"))
    clock.t = T0 + 150  # all past expiry, all inside the 300 s margin: prune keeps them
    assert ledger.prune() == 0
    ledger.record_start(command("new", expires=T0 + 900))
    assert clock.flushes == 1
    assert ledger.lookup("c3") is None
    assert {"c0", "c1", "c2", "new"} == {
        c for c in ("c0", "c1", "c2", "c3", "new") if ledger.lookup(c)
    }
    ledger.close()


@pytest.mark.parametrize("final", [True, False])
def test_full_ledger_of_valid_or_running_commands_refuses_new_ones(path: Path, final: bool) -> None:
    ledger = open_ledger(path, max_entries=3)
    for n in range(3):
        ledger.record_start(command(f"c{n}", expires=T0 - 1 if not final else T0 + 600))
        if final:
            ledger.record_final(f"c{n}", reply(f"c{n}"))
    with pytest.raises(LedgerFull):
        ledger.record_start(command("new"))
    assert len(ledger) == 3
    assert ledger.lookup("new") is None
    ledger.close()


def test_prune_makes_room_before_anything_is_forgotten_early(path: Path) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock, max_entries=2)
    ledger.record_start(command("gone", expires=T0 - 1000))
    ledger.record_final("gone", reply("gone"))
    ledger.record_start(command("live"))
    ledger.record_start(command("new"))
    assert (ledger.lookup("gone"), clock.flushes) == (None, 0)
    ledger.close()


# -- damage --------------------------------------------------------------------------------


def _filled(path: Path) -> None:
    ledger = open_ledger(path)
    for cid in ("a", "b", "c"):
        ledger.record_start(command(cid))
    ledger.record_final("a", reply("a"))
    ledger.close()


def test_garbage_file_is_set_aside_and_the_ledger_starts_empty(path: Path) -> None:
    path.write_bytes(b"\x00\x01 not a ledger\n")
    ledger = open_ledger(path)
    assert ledger.recovered_from_corruption
    assert ledger.corrupt_copy == path.with_name(f"ledger.jsonl.corrupt-{int(T0)}")
    assert ledger.corrupt_copy.read_bytes() == b"\x00\x01 not a ledger\n"
    assert len(ledger) == 0
    ledger.record_start(command("c1"))
    ledger.close()
    again = open_ledger(path)
    assert not again.recovered_from_corruption
    assert again.lookup("c1") is not None
    again.close()


def test_a_damaged_line_keeps_every_other_entry(path: Path) -> None:
    _filled(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"id": "b", "state": "acc'
    path.write_bytes(b"\n".join(lines))
    ledger = open_ledger(path)
    assert ledger.recovered_from_corruption
    assert got(ledger, "a").final
    assert ledger.lookup("b") is None
    assert ledger.lookup("c") is not None
    ledger.close()


def test_a_damaged_header_keeps_the_entries(path: Path) -> None:
    _filled(path)
    path.write_bytes(b"\x00" + path.read_bytes())
    ledger = open_ledger(path)
    assert ledger.recovered_from_corruption
    assert (len(ledger), got(ledger, "a").final) == (3, True)
    ledger.close()


@pytest.mark.parametrize(
    "line",
    [
        {"id": "x", "name": "ping", "state": "succeeded", "expires_ts": 1, "started_ts": 1},
        {
            "id": "x",
            "name": "ping",
            "state": "accepted",
            "expires_ts": 1,
            "started_ts": 1,
            "reply": {},
        },
        {"id": "x y", "name": "ping", "state": "accepted", "expires_ts": 1, "started_ts": 1},
        {"id": "x", "name": "ping", "state": "dancing", "expires_ts": 1, "started_ts": 1},
        {"id": "x", "name": "ping", "state": "accepted", "expires_ts": "1", "started_ts": 1},
        {"id": "x", "name": "ping", "state": "accepted", "expires_ts": 1, "started_ts": 1, "z": 1},
        ["x"],
    ],
)
def test_ill_formed_entries_are_damage(path: Path, line: Any) -> None:
    _filled(path)
    with path.open("ab") as f:
        f.write(json.dumps(line).encode() + b"\n")
    ledger = open_ledger(path)
    assert ledger.recovered_from_corruption
    assert (ledger.lookup("x"), len(ledger)) == (None, 3)
    ledger.close()


def test_a_torn_last_line_is_a_crash_not_damage(path: Path) -> None:
    _filled(path)
    with path.open("ab") as f:
        f.write(b'{"id":"d","name":"ping","sta')
    ledger = open_ledger(path)
    assert not ledger.recovered_from_corruption
    assert ledger.lookup("d") is None
    ledger.record_start(command("d"))
    ledger.close()
    again = open_ledger(path)
    assert again.lookup("d") is not None
    assert not again.recovered_from_corruption
    again.close()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"schema":"edge-agent/command-ledger","version":2}\n'
        b'{"id":"a","name":"ping","state":"accepted","expires_ts":1,"started_ts":1}\n',
        b'{"schema":"something-else","version":1}\n',
    ],
)
def test_empty_or_unknown_schema_is_set_aside_without_salvage(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    ledger = open_ledger(path)
    assert ledger.recovered_from_corruption
    assert len(ledger) == 0
    assert ledger.corrupt_copy is not None
    assert ledger.corrupt_copy.read_bytes() == content
    ledger.close()


def test_two_corruptions_in_the_same_second_keep_both_copies(path: Path) -> None:
    for _ in range(2):
        path.write_bytes(b"junk\n")
        open_ledger(path).close()
    assert len(list(path.parent.glob("ledger.jsonl.corrupt-*"))) == 2


# -- size and speed ------------------------------------------------------------------------


def test_the_journal_is_compacted(path: Path) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock)
    for n in range(3000):
        clock.t = T0 + n
        ledger.record_start(command(f"c{n}", expires=T0 + n + 10))
        ledger.record_final(f"c{n}", reply(f"c{n}"))
        if n % 100 == 0:
            ledger.prune()
    live = len(ledger)
    assert live < 500
    assert len(path.read_bytes().splitlines()) <= max(1024, 2 * live) + 1
    ledger.close()
    again = open_ledger(path, clock)
    assert len(again) <= live
    assert got(again, "c2999").final
    again.close()


def test_a_burst_of_1000_commands(path: Path, tmp_path: Path) -> None:
    clock = NeverBackwardsClock(tmp_path / "clock.json")
    ledger = CommandLedger(path, clock)
    expires = time.time() + 600
    started = time.perf_counter()
    for n in range(1000):
        ledger.record_start(command(f"burst-{n}", expires=expires))
        ledger.record_final(f"burst-{n}", reply(f"burst-{n}"))
    elapsed = time.perf_counter() - started
    ledger.close()
    print(f"\n1000 x (record_start + record_final), fsynced: {elapsed:.3f} s")
    assert elapsed < 10
    again = CommandLedger(path, clock)
    assert len(again) == 1000
    again.close()
    assert os.path.getsize(path) < 1_000_000


# -- periodic trim -------------------------------------------------------------------------


async def test_the_periodic_loop_forgets_expired_entries_and_shrinks_the_journal(
    path: Path,
) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock, max_skew_s=300)
    for i in range(50):
        cid = f"c{i:03d}"
        ledger.record_start(command(cid, expires=T0 + 60))
        ledger.record_final(cid, reply(cid, result={"checks": ["x" * 200] * 10}))
    ledger.record_start(command("live", expires=T0 + 3600))
    grown = path.stat().st_size
    beats: list[float] = []

    async def one_step(_s: float) -> None:
        clock.t = T0 + 60 + 301  # the expired entries are now past their margin
        if beats.count(0.0) >= 2:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await prune_periodically(ledger, 60.0, heartbeat=lambda: beats.append(0.0), sleep=one_step)
    assert len(ledger) == 1 and ledger.lookup("live") is not None
    assert path.stat().st_size < grown / 10, "the journal was not rewritten"
    assert beats, "the loop stamps its heartbeat"
    ledger.close()
    again = open_ledger(path, clock)
    assert len(again) == 1
    again.close()


def test_replies_are_kept_compact_and_bounded_by_size(path: Path) -> None:
    clock = HandClock()
    ledger = open_ledger(path, clock, max_reply_bytes=2 * 1024 * 1024)
    checks = [
        {"id": f"check.{i}", "status": "pass", "details": {"x": "y" * 100}} for i in range(100)
    ]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(1000):
        cid = f"rc{i:05d}"
        ledger.record_start(command(cid, expires=T0 + 3600, name="run-checks"))
        ledger.record_final(cid, reply(cid, result={"checks": checks}))
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # 1,000 replies of ~16 KB each: 16 MB as text, several times that as parsed objects.
    assert ledger.reply_bytes <= 2 * 1024 * 1024
    assert held < 6 * 1024 * 1024, f"the ledger holds {held} bytes"
    oldest, newest = got(ledger, "rc00000"), got(ledger, "rc00999")
    assert oldest.state == "succeeded" and oldest.reply is not None
    assert oldest.reply["result"] is None  # slimmed, not forgotten: still no replay
    assert newest.reply is not None and newest.reply["result"] == {"checks": checks}
    ledger.close()
    again = open_ledger(path, clock, max_reply_bytes=2 * 1024 * 1024)
    assert again.reply_bytes <= 2 * 1024 * 1024 and len(again) == 1000
    again.close()
