"""Hostile load: what a junk flood, a gzip bomb and 10,000 commands cost the agent.

One real agent (``python -m agent run``) on loopback with Mosquitto and the devtools
controller, joined, then: (1) a flood of `--flood` unsigned 60 KB command messages, with a
genuine signed ping sent right behind it: the agent's peak RSS above idle (VmHWM) and the
ping's round trip; (2) the controller answering a poll with gzip of 256 MiB of zeros: the
peak RSS above idle. Then, in this process, (3) a command ledger after `--commands`
`run-checks`-sized final replies: the memory it holds (tracemalloc) and its reply bytes.
Bounded: fixed counts, every wait has a timeout. Writes benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid
import zlib
from pathlib import Path
from typing import Any

from common import save_result, use_private_bytecode_cache, vm_hwm

from agent.commands.ledger import CommandLedger
from agent.core.envelope import CommandEnvelope
from agent.testing import sample_assignment
from devtools.broker import Mosquitto
from devtools.commander import Commander
from devtools.controller import Controller
from devtools.signer import CommandSigner
from tests.support import HostEnv


def _site(tmp: Path) -> tuple[HostEnv, Mosquitto, Controller, CommandSigner, Commander, str]:
    uid, tag = f"edge-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex[:8]
    prefix = f"b{tag}/edge/v1"
    broker = Mosquitto(tmp / "broker", max_queued_messages=100_000)
    broker.directory.mkdir(parents=True)
    broker.start()
    controller = Controller().start()
    controller.set_assignment(uid, sample_assignment())
    signer = CommandSigner.generate()
    key = signer.write_public_key(tmp / "signing.pub")
    token = tmp / "token"
    token.write_text(controller.registration_token)
    cfg: dict[str, Any] = {
        "controller": {"url": controller.url, "registration_token_file": str(token),
                       "timeout_s": 3, "max_backoff_s": 1, "assignment_poll_s": 1},
        "mqtt": {"url": broker.url, "topic_prefix": prefix, "keepalive_s": 5,
                 "health_interval_s": 30, "status_interval_s": 60, "max_backoff_s": 1},
        "commands": {"public_key_file": str(key)},
    }  # fmt: skip
    host = HostEnv(tmp, uid=uid, config=cfg)
    cmd = Commander(broker.port, uid=uid, prefix=prefix, keepalive=5)
    host.start()
    host.wait_phase("joined", 60)
    return host, broker, controller, signer, cmd, uid


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS and return that, so each
    phase's peak is its own (Linux >= 4.0: writing 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return vm_hwm(pid)


def _junk(uid: str, i: int) -> dict[str, Any]:
    return {"id": f"junk-{i:05d}", "name": "ping", "args": {"pad": "x" * 60_000}, "uid": uid,
            "issued_at": "2026-01-01T00:00:00.000Z", "expires_at": "2026-01-01T00:05:00.000Z"}  # fmt: skip


def flood_and_bomb(flood: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-hostile-") as d:
        host, broker, controller, signer, cmd, uid = _site(Path(d))
        try:
            assert host.proc is not None
            pid = host.proc.pid
            time.sleep(2.0)
            idle = _reset_peak(pid)
            for i in range(flood):
                cmd.send(_junk(uid, i), wait=False)
            env = signer.envelope("ping", None, uid=uid)
            t0 = time.monotonic()
            cmd.send(env)
            reply = cmd.final_reply(str(env["id"]), 60)
            ping_s = time.monotonic() - t0 if reply else None
            time.sleep(3.0)
            flood_peak = vm_hwm(pid)
            bomb_idle = _reset_peak(pid)
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(256)) + packer.flush()
            path = f"/v1/hosts/{uid}/assignment"
            before = controller.count("GET", path)
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            controller.serve_raw_next(3, 200, bomb, headers, path_prefix=path)
            controller.wait_count("GET", path, before + 4, timeout=60)
            bomb_peak = vm_hwm(pid)
            alive = host.proc.poll() is None
        finally:
            cmd.close()
            host.stop()
            controller.stop()
            broker.stop()
    return {
        "flood_messages": flood,
        "idle_rss_mb": round(idle / 2**20, 1),
        "flood_peak_above_idle_mb": round((flood_peak - idle) / 2**20, 1),
        "ping_behind_flood_s": round(ping_s, 3) if ping_s is not None else None,
        "gzip_bomb_bytes": len(bomb),
        "bomb_peak_above_idle_mb": round((bomb_peak - bomb_idle) / 2**20, 1),
        "agent_alive_after": alive,
    }


class _Clock:
    def now(self) -> float:
        return time.time()

    def flush(self) -> None:
        pass


def ledger_memory(n: int) -> dict[str, Any]:
    checks = [{"id": f"check.{i}", "status": "pass", "title": "t" * 40,
               "details": {"detail": "d" * 120}} for i in range(13)] * 8  # fmt: skip
    result = {"checks": checks, "summary": {"passed": len(checks), "warned": 0, "failed": 0}}
    with tempfile.TemporaryDirectory(prefix="edge-ledger-", dir="/dev/shm") as d:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ledger = CommandLedger(Path(d) / "ledger", _Clock())
        now = time.time()
        for i in range(n):
            cid = f"rc{i:05d}"
            env = CommandEnvelope(id=cid, name="run-checks", args={}, uid="edge-x",
                                  issued_at="", expires_at="", issued_ts=now,
                                  expires_ts=now + 3600, sig=None, raw={})  # fmt: skip
            ledger.record_start(env)
            ledger.record_final(cid, {"command_id": cid, "state": "succeeded", "result": result})
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        reply_bytes = ledger.reply_bytes
        ledger.close()
    return {"commands": n, "ledger_held_mb": round(held / 2**20, 1),
            "reply_bytes_mb": round(reply_bytes / 2**20, 1),
            "one_reply_bytes": len(str(result))}  # fmt: skip


def main() -> int:
    use_private_bytecode_cache()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=10_000)
    args = ap.parse_args()
    data = {"flood_and_bomb": flood_and_bomb(args.flood), "ledger": ledger_memory(args.commands)}
    print(data)
    save_result("hostile", data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
