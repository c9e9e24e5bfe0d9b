"""Diagnostics bundles for ``collect-diagnostics``: a redacted tar.gz of what support needs.

It holds the persisted state and status, the config with secrets removed (secrets live in
files the bundle never reads), the last check results, the nodeadm logs, journal excerpts
where ``journalctl`` exists, and ``nodeadm debug`` output. Every text member is scrubbed of
known secret values, and the whole bundle is capped at ``diagnostics.max_bytes``: each log
keeps only its end, within a share of that cap computed once from the file sizes (a small
log whole, the rest shared among the large ones), read and packed off the event loop.
What goes in comes from `BundleInputs`, which the caller fills; nothing here reaches into
the running agent.
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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.config import Config
from agent.core.redact import scrub
from agent.host.proc import ProcessError, run


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


@dataclass(frozen=True)
class BundleInputs:
    """Everything a bundle is built from, handed over by its caller: no application object.

    ``config``, ``checks`` and ``status`` are JSON documents (the config already redacted).
    ``status`` and ``secrets`` are called only after the slow parts (the journal and
    ``nodeadm debug``) are done, so the status is the one at packing time and a secret learnt
    meanwhile is still struck out. ``journal`` and ``nodeadm_debug`` run those programs; a
    test hands in its own.
    """

    state_dir: Path
    max_bytes: int
    config: dict[str, Any]
    checks: list[dict[str, Any]]
    status: Callable[[], dict[str, Any]]
    secrets: Callable[[], Iterable[str]]
    journal: Callable[[], Awaitable[str]]
    nodeadm_debug: Callable[[], Awaitable[dict[str, Any]]]

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        checks: list[dict[str, Any]],
        status: Callable[[], dict[str, Any]],
        secrets: Callable[[], Iterable[str]],
        nodeadm_debug: Callable[[], Awaitable[dict[str, Any]]],
    ) -> BundleInputs:
        """The paths, the size cap, the redacted config and ``journalctl`` from `config`."""
        journalctl = config.programs.journalctl
        return cls(
            state_dir=config.state_dir,
            max_bytes=config.diagnostics.max_bytes,
            config=config.redacted(),
            checks=checks,
            status=status,
            secrets=secrets,
            journal=lambda: read_journal(journalctl),
            nodeadm_debug=nodeadm_debug,
        )


async def read_journal(journalctl: str) -> str:
    """The last 500 lines of kubelet's, containerd's and the agent's journal, or why not."""
    argv = [
        journalctl,
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


async def _debug(inputs: BundleInputs) -> str:
    try:
        report = await inputs.nodeadm_debug()
    except Exception as e:  # noqa: BLE001 - the bundle says what failed instead
        return f"nodeadm debug failed: {e}\n"
    return json.dumps(report, indent=1, default=str)


def _small_members(inputs: BundleInputs, journal: str, debug: str) -> dict[str, str]:
    """Everything but the files: built on the loop, from the inputs."""
    return {
        "status.json": json.dumps(inputs.status(), indent=1),
        "config.json": json.dumps(inputs.config, indent=1),
        "checks.json": json.dumps(inputs.checks, indent=1),
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


async def build_bundle(inputs: BundleInputs) -> Bundle:
    journal = await inputs.journal()
    debug = await _debug(inputs)
    secrets = [s for s in inputs.secrets() if s]
    small = _small_members(inputs, journal, debug)
    # Reading hundreds of MiB of logs and compressing them takes seconds: never on the loop,
    # whose heartbeats the systemd watchdog checks.
    data = await asyncio.to_thread(
        _collect_and_pack, inputs.state_dir, small, secrets, inputs.max_bytes
    )
    return Bundle(bundle_id=uuid.uuid4().hex, data=data)


__all__ = ["Bundle", "BundleInputs", "build_bundle", "read_journal", "tail_budgets"]
