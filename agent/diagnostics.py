"""Diagnostics bundles for ``collect-diagnostics``: a redacted tar.gz of what support needs.

It holds the persisted state and status, the config with secrets removed (secrets live in
files the bundle never reads), the last check results, the nodeadm logs, journal excerpts
where ``journalctl`` exists, and ``nodeadm debug`` output. Every text member is scrubbed of
known secret values, and the whole bundle is capped at ``diagnostics.max_bytes``: each log
keeps only its end, within a share of that cap computed once from the file sizes (a small
log whole, the rest shared among the large ones), read and packed off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.host.proc import ProcessError, run
from agent.logs import scrub


@dataclass(frozen=True)
class Bundle:
    bundle_id: str
    data: bytes

    def summary(self, uploaded: bool) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "bytes": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "uploaded": uploaded,
        }


async def _journal(agent: Any) -> str:
    argv = [
        agent.config.programs.journalctl,
        "-u",
        "kubelet",
        "-u",
        "containerd",
        "-u",
        "edge-agent",
        "-n",
        "500",
        "--no-pager",
        "-o",
        "short-iso",
    ]
    try:
        res = await run(argv, timeout=30)
    except ProcessError as e:
        return f"journalctl unavailable: {e.reason}\n"
    return res.stdout or res.stderr


async def _debug(agent: Any) -> str:
    try:
        report = await agent.runner.debug(agent.config.nodeadm.config_path)
    except Exception as e:  # noqa: BLE001 - the bundle says what failed instead
        return f"nodeadm debug failed: {e}\n"
    return json.dumps(report.as_dict(), indent=1, default=str)


def _small_members(agent: Any, journal: str, debug: str) -> dict[str, str]:
    """Everything but the files: built on the loop, from the agent's own objects."""
    return {
        "status.json": json.dumps(agent.status(), indent=1),
        "config.json": json.dumps(agent.config.redacted(), indent=1),
        "checks.json": json.dumps(agent.last_checks, indent=1),
        "journal.txt": journal,
        "nodeadm-debug.json": debug,
    }


def tail_budgets(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """How many bytes of each file's end to keep so that all fit in `budget`.

    Computed once, before anything is read: a file smaller than an equal share is kept
    whole and what it leaves over is shared among the larger ones.
    """
    out: dict[str, int] = {}
    left, pending = max(0, budget), sorted(sizes, key=lambda k: sizes[k])
    while pending:
        share = left // len(pending)
        name = pending.pop(0)
        out[name] = min(sizes[name], share)
        left -= out[name]
    return out


def _read_tail(path: Path, keep: int) -> str:
    """The last `keep` bytes of `path`, from the next line start, with a note if cut."""
    with path.open("rb") as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(max(0, size - keep))
        data = f.read(keep)
    if len(data) >= size:
        return data.decode(errors="replace")
    cut = data.find(b"\n") + 1 if b"\n" in data[:4096] else 0
    note = f"[... first {size - len(data) + cut} bytes cut to fit diagnostics.max_bytes ...]\n"
    return note + data[cut:].decode(errors="replace")


def _collect_and_pack(
    state_dir: Path, small: dict[str, str], secrets: list[str], limit: int
) -> bytes:
    """Off the event loop: read state.json and each log's tail, scrub, pack one tar.gz.

    The budget is in uncompressed bytes, so the compressed bundle stays under `limit`
    whatever the logs hold; nothing is read or packed twice, and no log is read whole.
    """
    members = dict(small)
    try:
        members["state.json"] = (state_dir / "state.json").read_text(errors="replace")
    except OSError as e:
        members["state.json"] = f"unreadable: {e}"
    members = {k: scrub(v, secrets) for k, v in members.items()}
    logs = {p.name: p for p in sorted((state_dir / "logs").glob("nodeadm-*.log*"))}
    sizes: dict[str, int] = {}
    for name, path in logs.items():
        with contextlib.suppress(OSError):
            sizes[name] = path.stat().st_size
    fixed = sum(len(v.encode()) for v in members.values())
    # tar headers (512 bytes a member, 1 KiB at the end), gzip's worst case, and room for
    # a redaction marker longer than the secret it replaces.
    overhead = 512 * (len(members) + len(sizes)) + 2048 + limit // 100 + 64 * len(sizes)
    for name, keep in tail_budgets(sizes, limit - fixed - overhead).items():
        with contextlib.suppress(OSError):
            members[f"logs/{name}"] = scrub(_read_tail(logs[name], keep), secrets)
    return _pack(members)


def _pack(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def build_bundle(agent: Any) -> Bundle:
    journal = await _journal(agent)
    debug = await _debug(agent)
    secrets = [s for s in agent.secrets() if s]
    small = _small_members(agent, journal, debug)
    limit = agent.config.diagnostics.max_bytes
    # Reading hundreds of MiB of logs and compressing them takes seconds: never on the loop,
    # whose heartbeats the systemd watchdog checks.
    data = await asyncio.to_thread(_collect_and_pack, agent.config.state_dir, small, secrets, limit)
    return Bundle(bundle_id=uuid.uuid4().hex, data=data)
