"""The outbox on a real directory: order, restarts, torn tails, drop order, compaction and a
failing disk (a file-size limit makes writes fail the way a full disk does)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.link.messages import Kind, Outgoing, describe_drops, encode, subtopic_of
from agent.link.outbox import COMPACT_MIN_BYTES, Outbox

RECORD = 100  # bytes per record in the drop-order tests (header and subtopic included)


def msg(kind: Kind, seq: int, size: int | None = None) -> Outgoing:
    sub = subtopic_of(kind)
    payload = b'{"seq":%d}' % seq
    if size is not None:
        payload = payload.ljust(size - 26 - len(sub), b" ")
    return Outgoing(kind, sub, payload, seq)


def kinds_seqs(box: Outbox) -> list[tuple[str, int]]:
    return [(m.kind.value, m.seq) for m in box.pending()]


def reopened(directory: Path, max_bytes: int = 1 << 20) -> list[tuple[str, int]]:
    """What a restarted agent would find pending."""
    box = Outbox(directory, max_bytes)
    try:
        return kinds_seqs(box)
    finally:
        box.close()


def test_messages_come_back_in_order_with_ids_and_leave_only_when_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 1 << 20)
    for seq in range(1, 6):
        box.put(msg(Kind.EVENT, seq))
    pending = box.pending()
    assert [m.seq for m in pending] == [1, 2, 3, 4, 5]
    assert [m.id for m in pending] == [1, 2, 3, 4, 5]
    assert pending[0].payload == b'{"seq":1}'
    assert pending[0].subtopic == "events"
    assert [m.seq for m in box.peek(2, after=2)] == [3, 4]
    box.ack(3)  # out of order: leaves at once, the others stay
    box.ack(1)
    box.ack(99)  # unknown: ignored
    assert [m.seq for m in box.pending()] == [2, 4, 5]
    assert len(box) == 3
    assert box.bytes_used == sum(26 + 6 + len(m.payload) for m in box.pending())
    box.close()
    assert [seq for _, seq in reopened(tmp_path)] == [2, 4, 5]


def test_pending_messages_and_acks_survive_a_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 1 << 20)
    box.put(msg(Kind.STATUS, 1))
    box.put(msg(Kind.NODEADM_EVENT, 2))
    box.put(msg(Kind.REPLY, 3))
    box.ack(1)
    box.close()
    box = Outbox(tmp_path, 1 << 20)
    assert kinds_seqs(box) == [("nodeadm_event", 2), ("reply", 3)]
    box.put(msg(Kind.EVENT, 4))
    assert [m.id for m in box.pending()] == [2, 3, 4]  # ids keep rising across restarts
    box.close()


@pytest.mark.parametrize("damage", ["cut", "garbage", "bitflip"])
def test_a_torn_tail_is_dropped_and_never_stops_startup(tmp_path: Path, damage: str) -> None:
    box = Outbox(tmp_path, 1 << 20)
    for seq in range(1, 4):
        box.put(msg(Kind.EVENT, seq))
    box.close()
    log = tmp_path / "log"
    data = log.read_bytes()
    if damage == "cut":  # power lost in the middle of the last append
        log.write_bytes(data[:-5])
    elif damage == "garbage":  # a header promising more than was written
        log.write_bytes(data + b"\xff\x00\x00\x00\x12\x34")
    else:  # the last record's payload no longer matches its CRC
        log.write_bytes(data[:-2] + b"!!")
    box = Outbox(tmp_path, 1 << 20)
    survivors = [1, 2, 3] if damage == "garbage" else [1, 2]
    assert [m.seq for m in box.pending()] == survivors
    assert box.torn_bytes > 0
    box.put(msg(Kind.EVENT, 9))  # appends after the last good record
    box.close()
    box = Outbox(tmp_path, 1 << 20)
    assert [m.seq for m in box.pending()] == [*survivors, 9]
    assert box.torn_bytes == 0
    box.close()


def test_full_outbox_drops_in_contract_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10 * RECORD)
    order = [
        (Kind.STATUS, 1), (Kind.NODEADM_EVENT, 2), (Kind.EVENT, 3), (Kind.REPLY, 4),
        (Kind.STATUS, 5), (Kind.NODEADM_EVENT, 6), (Kind.EVENT, 7), (Kind.REPLY, 8),
        (Kind.STATUS, 9), (Kind.EVENT, 10),
    ]  # fmt: skip
    for kind, seq in order:
        box.put(msg(kind, seq, RECORD))
    assert box.bytes_used == 10 * RECORD
    assert not box.take_drops()

    def gone_after_reply(seq: int) -> tuple[str, int]:
        before = set(kinds_seqs(box))
        box.put(msg(Kind.REPLY, seq, RECORD))
        (lost,) = before - set(kinds_seqs(box))
        return lost

    # Superseded statuses, then nodeadm events, then other events (oldest first), then the
    # latest status, and replies last.
    lost = [gone_after_reply(seq) for seq in range(11, 20)]
    assert lost == [
        ("status", 1), ("status", 5), ("nodeadm_event", 2), ("nodeadm_event", 6),
        ("event", 3), ("event", 7), ("event", 10), ("status", 9), ("reply", 4),
    ]  # fmt: skip
    assert box.take_drops() == {Kind.STATUS: 3, Kind.NODEADM_EVENT: 2, Kind.EVENT: 3, Kind.REPLY: 1}
    assert box.take_drops() == {}

    # Only replies left: a new event or status is itself the first to go, never a reply.
    replies = kinds_seqs(box)
    box.put(msg(Kind.EVENT, 20, RECORD))
    box.put(msg(Kind.STATUS, 21, RECORD))
    assert kinds_seqs(box) == replies
    assert box.take_drops() == {Kind.EVENT: 1, Kind.STATUS: 1}
    box.close()

    # The drops were written down: a restart does not bring them back.
    assert reopened(tmp_path, 10 * RECORD) == replies


def test_a_new_status_supersedes_every_pending_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 3 * RECORD)
    box.put(msg(Kind.STATUS, 1, RECORD))
    box.put(msg(Kind.REPLY, 2, RECORD))
    box.put(msg(Kind.STATUS, 3, RECORD))
    box.put(msg(Kind.STATUS, 4, RECORD))
    box.put(msg(Kind.STATUS, 5, RECORD))
    assert kinds_seqs(box) == [("reply", 2), ("status", 4), ("status", 5)]
    assert box.take_drops() == {Kind.STATUS: 2}
    box.close()


def test_a_message_larger_than_the_outbox_is_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 200)
    box.put(msg(Kind.EVENT, 1))
    box.put(msg(Kind.REPLY, 2, 500))
    assert kinds_seqs(box) == [("event", 1)]
    assert box.take_drops() == {Kind.REPLY: 1}
    box.close()


def test_compaction_shrinks_the_log_and_keeps_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 16 << 20)
    for seq in range(1, 20_001):
        box.put(msg(Kind.EVENT, seq, RECORD))
    for m in box.peek(16_000):
        box.ack(m.id)
    # Dead bytes (acknowledged records, tombstones) never outweigh the live ones by more
    # than the compaction threshold.
    assert box.bytes_used == 4000 * RECORD
    assert (tmp_path / "log").stat().st_size <= 2 * box.bytes_used + COMPACT_MIN_BYTES
    assert [m.seq for m in box.pending()] == list(range(16_001, 20_001))
    box.close()
    box = Outbox(tmp_path, 16 << 20)
    assert [m.seq for m in box.pending()] == list(range(16_001, 20_001))
    for m in box.pending():
        box.ack(m.id)
    assert len(box) == 0
    assert box.bytes_used == 0
    assert (tmp_path / "log").stat().st_size <= COMPACT_MIN_BYTES
    box.close()


def test_an_agent_killed_mid_stream_leaves_a_readable_prefix(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.link.messages import Kind, Outgoing\n"
        "from agent.link.outbox import Outbox\n"
        "box = Outbox(Path(sys.argv[1]), 1 << 30)\n"
        "seq = 0\n"
        "while True:\n"
        "    seq += 1\n"
        "    box.put(Outgoing(Kind.EVENT, 'events', b'{\"seq\":%d}' % seq + b' ' * 200, seq))\n"
        "    if seq == 2000:\n"
        "        print('ready', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    child.kill()
    child.wait()
    child.stdout.close()
    seqs = [seq for _, seq in reopened(tmp_path, 1 << 30)]
    assert len(seqs) >= 2000
    assert seqs == list(range(1, len(seqs) + 1))


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` fail with EFBIG, as they would with ENOSPC on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failing_disk_keeps_messages_in_memory_and_retries(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 1 << 20, retry_storage_s=0)
    for seq in range(1, 4):
        box.put(msg(Kind.EVENT, seq, RECORD))
    with file_size_limit(4 * RECORD + 50):
        for seq in range(4, 9):
            box.put(msg(Kind.REPLY, seq, RECORD))
        assert box.storage_error is not None
        assert "outbox write failed" in box.storage_error
        assert [m.seq for m in box.pending()] == list(range(1, 9))
        # Nothing half-written was left behind for a restart to trip over.
        assert (tmp_path / "log").stat().st_size == 4 * RECORD
    box.put(msg(Kind.EVENT, 9, RECORD))  # the disk works again: the memory tail moves there
    assert box.storage_error is None
    box.close()
    box = Outbox(tmp_path, 1 << 20)
    assert [m.seq for m in box.pending()] == list(range(1, 10))
    box.close()


def test_the_memory_tail_is_bounded_and_gives_up_events_before_replies(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 1 << 20, memory_tail_bytes=3 * RECORD, retry_storage_s=3600)
    with file_size_limit(0):
        box.put(msg(Kind.REPLY, 1, RECORD))
        box.put(msg(Kind.EVENT, 2, RECORD))
        box.put(msg(Kind.EVENT, 3, RECORD))
        box.put(msg(Kind.REPLY, 4, RECORD))
        box.put(msg(Kind.REPLY, 5, RECORD))
        box.put(msg(Kind.EVENT, 6, RECORD))
    assert box.storage_error is not None
    assert kinds_seqs(box) == [("reply", 1), ("reply", 4), ("reply", 5)]
    assert box.take_drops() == {Kind.EVENT: 3}
    box.close()


def test_an_unusable_directory_degrades_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    box = Outbox(blocker / "outbox", 1 << 20)
    assert box.storage_error is not None
    box.put(msg(Kind.REPLY, 1))
    assert kinds_seqs(box) == [("reply", 1)]
    box.ack(1)
    assert len(box) == 0
    box.close()


def test_begin_sync_runs_on_a_duplicate_descriptor(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 1 << 20)
    assert box.begin_sync() is None
    box.put(msg(Kind.EVENT, 1))
    job = box.begin_sync()
    assert job is not None
    assert not box.dirty
    box.close()  # the job still owns its own descriptor
    job()


def test_ten_thousand_events_put_then_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 16 << 20)
    payload = encode({"uid": "edge-x", "ts": "2026-11-26T17:24:07.123Z", "type": "nodeadm"})
    start = time.perf_counter()
    for seq in range(10_000):
        box.put(Outgoing(Kind.NODEADM_EVENT, "events", payload, seq))
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    while batch := box.peek(40):
        for m in batch:
            box.ack(m.id)
    drain_s = time.perf_counter() - start
    print(f"\noutbox: 10000 puts {put_s * 1000:.0f} ms, peek+ack {drain_s * 1000:.0f} ms")
    assert put_s + drain_s < 5
    assert os.path.getsize(tmp_path / "log") <= COMPACT_MIN_BYTES
    box.close()


def test_encode_is_compact_json() -> None:
    assert encode({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()
    with pytest.raises(ValueError, match="JSON"):
        encode({"x": float("nan")})


def test_dropped_counts_read_as_a_sentence() -> None:
    drops = {Kind.REPLY: 1, Kind.EVENT: 2, Kind.STATUS: 1, Kind.NODEADM_EVENT: 5}
    assert describe_drops(drops) == (
        "outbox full: dropped 1 status, 5 nodeadm events, 2 events, 1 reply"
    )
