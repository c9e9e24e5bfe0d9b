"""The agent's persisted state in ``state_dir``: lifecycle, last checks, the ``seq`` counter.

Written atomically (temp file, fsync, rename) with a schema version, and the previous good
copy kept as ``state.json.bak``. A truncated or corrupt file is set aside and the backup used;
if both are unreadable the agent starts from scratch and says so (the lifecycle then learns
from the host itself: the nodeadm tracker). Nothing here is shared between agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core import lifecycle
from agent.core.assignment import AssignmentError, parse_assignment
from agent.state.atomic import write_bytes, write_json

SCHEMA_VERSION = 1


@dataclass
class Loaded:
    state: lifecycle.State
    checks: list[dict[str, Any]] = field(default_factory=list)
    checks_ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what load had to recover from


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"
        self.backup = state_dir / "state.json.bak"

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> Loaded:
        problems: list[str] = []
        for path in (self.path, self.backup):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                problems.append(f"{path.name}: cannot read ({e.strerror})")
                continue
            try:
                doc = json.loads(raw)
                loaded = self._decode(doc)
            except (ValueError, KeyError, TypeError, AssignmentError) as e:
                aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
                try:
                    shutil.copyfile(path, aside)
                except OSError:
                    aside = path
                problems.append(f"{path.name} is unreadable ({e}); kept a copy at {aside.name}")
                continue
            if path is self.backup:
                problems.append("recovered the state from state.json.bak")
            loaded.problems = problems
            return loaded
        return Loaded(state=lifecycle.State(), problems=problems)

    def _decode(self, doc: Any) -> Loaded:
        if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {doc.get('schema_version') if isinstance(doc, dict) else '?'}"
            )
        state = lifecycle.from_json(doc["lifecycle"], parse_assignment)
        return Loaded(
            state=state,
            checks=list(doc.get("checks") or []),
            checks_ts=doc.get("checks_ts"),
            extra=dict(doc.get("extra") or {}),
        )

    def save(
        self,
        state: lifecycle.State,
        checks: list[dict[str, Any]],
        checks_ts: float | None,
        extra: dict[str, Any],
    ) -> None:
        doc = {
            "schema_version": SCHEMA_VERSION,
            "lifecycle": lifecycle.to_json(state),
            "checks": checks,
            "checks_ts": checks_ts,
            "extra": extra,
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        if self.path.exists():
            with contextlib.suppress(OSError):
                os.replace(self.path, self.backup)  # the previous good copy
        write_bytes(self.path, data)


class SeqCounter:
    """One strictly increasing ``seq`` across restarts, reserving blocks to avoid a write each."""

    def __init__(
        self, path: Path, block: int = 1000, writer: Callable[[Path, Any], None] = write_json
    ) -> None:
        self.path = path
        self.block = block
        self._write = writer
        try:
            start = int(json.loads(path.read_text())["next"])
        except (OSError, ValueError, KeyError, TypeError):
            # Unknown history: start far above anything a block could have handed out before.
            start = int(time.time() * 1000)
        self._next = start
        self._limit = start
        self._reserve()

    def _reserve(self) -> None:
        self._limit = self._next + self.block
        self._write(self.path, {"next": self._limit})

    def __call__(self) -> int:
        if self._next >= self._limit:
            self._reserve()
        value = self._next
        self._next += 1
        return value
