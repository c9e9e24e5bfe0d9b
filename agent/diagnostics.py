"""Diagnostics bundles for ``collect-diagnostics``: a redacted tar.gz of what support needs.

It holds the persisted state and status, the config with secrets removed (secrets live in
files the bundle never reads), the last check results, the nodeadm logs, journal excerpts
where ``journalctl`` exists, and ``nodeadm debug`` output. Every text member is scrubbed of
known secret values, and the whole bundle is capped at ``diagnostics.max_bytes`` by cutting
the oldest part of the largest logs first.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
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


def _members(agent: Any, journal: str, debug: str) -> dict[str, str]:
    state_dir = agent.config.state_dir
    members = {
        "status.json": json.dumps(agent.status(), indent=1),
        "config.json": json.dumps(agent.config.redacted(), indent=1),
        "checks.json": json.dumps(agent.last_checks, indent=1),
        "journal.txt": journal,
        "nodeadm-debug.json": debug,
    }
    try:
        members["state.json"] = (state_dir / "state.json").read_text(errors="replace")
    except OSError as e:
        members["state.json"] = f"unreadable: {e}"
    for log in sorted((state_dir / "logs").glob("nodeadm-*.log*")):
        try:
            members[f"logs/{log.name}"] = log.read_text(errors="replace")
        except OSError:
            continue
    return members


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
    members = {k: scrub(v, secrets) for k, v in _members(agent, journal, debug).items()}
    limit = agent.config.diagnostics.max_bytes
    data = _pack(members)
    while len(data) > limit:
        # Cut the largest member's oldest half; logs matter most at their end.
        name = max(members, key=lambda k: len(members[k]))
        text = members[name]
        if len(text) < 1024:
            break
        members[name] = (
            "[... truncated to fit diagnostics.max_bytes ...]\n" + text[len(text) // 2 :]
        )
        data = _pack(members)
    return Bundle(bundle_id=uuid.uuid4().hex, data=data)
