"""The agent's persisted state in ``state_dir``: lifecycle, last checks, the ``seq`` counter.

Written atomically (temp file, fsync, rename) with a schema version, and the previous good
copy kept as ``state.json.bak``. A truncated or corrupt file is set aside and the backup used;
if both are unreadable the agent starts from scratch and says so (`Loaded.lost`: the daemon
then asks the host what is already done, see ``Agent.recover_from_host``). A damaged
``state.json`` is never rotated into the backup, so the good backup survives until a good
state replaces it. Nothing here is shared between agents.
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
# In `extra` while a lost state still has to be rebuilt from the host (survives a restart).
RECOVER_FROM_HOST = "recover_from_host"


@dataclass
class Loaded:
    state: lifecycle.State
    checks: list[dict[str, Any]] = field(default_factory=list)
    checks_ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what load had to recover from
    # A state existed (a file was there) but neither copy was usable: what the agent had
    # done is unknown, and the host must be asked before anything is re-run.
    lost: bool = False


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"
        self.backup = state_dir / "state.json.bak"
        # state.json failed to load: it must not become the backup at the next save.
        self._primary_bad = False

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> Loaded:
        problems: list[str] = []
        found = False
        for path in (self.path, self.backup):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                found = True
                problems.append(f"{path.name}: cannot read ({e.strerror})")
                self._primary_bad = self._primary_bad or path is self.path
                continue
            found = True
            try:
                doc = json.loads(raw)
                loaded = self._decode(doc)
            except (
                ValueError,  # not JSON (UnicodeDecodeError included), bad phase or number
                KeyError,
                TypeError,
                AttributeError,  # valid JSON of the wrong shape: a list where a map belongs
                RecursionError,  # absurdly nested garbage
                AssignmentError,
            ) as e:
                aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
                try:
                    shutil.copyfile(path, aside)
                except OSError:
                    aside = path
                problems.append(f"{path.name} is unreadable ({e}); kept a copy at {aside.name}")
                self._primary_bad = self._primary_bad or path is self.path
                continue
            if path is self.backup:
                if not problems:
                    problems.append("state.json is missing")
                problems.append("recovered the state from state.json.bak")
            loaded.problems = problems
            return loaded
        if found:
            problems.append("no usable state: state.json and state.json.bak are both unreadable")
        return Loaded(state=lifecycle.State(), problems=problems, lost=found)

    def _decode(self, doc: object) -> Loaded:
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
        if not self._primary_bad:
            self._keep_backup()
        write_bytes(self.path, data)
        self._primary_bad = False

    def _keep_backup(self) -> None:
        """Make state.json.bak the current state.json (the previous good copy).

        A hard link, not a rename: state.json must stay in place should the write of the new
        one fail (a full disk), or the next start would find only the backup.
        """
        if not self.path.exists():
            return
        tmp = self.backup.with_name(f".{self.backup.name}.tmp-{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.link(self.path, tmp)
            os.replace(tmp, self.backup)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            with contextlib.suppress(OSError):
                os.replace(self.path, self.backup)  # no hard links here: rename it


class SeqCounter:
    """One strictly increasing ``seq`` across restarts, reserving blocks to avoid a write each."""

    def __init__(
        self,
        path: Path,
        block: int = 1000,
        writer: Callable[[Path, object], None] = write_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.block = block
        self._write = writer
        try:
            start = int(json.loads(path.read_text())["next"])
        except (OSError, ValueError, KeyError, TypeError):
            # Unknown history: start far above anything a block could have handed out before
            # (numbers began at the clock in milliseconds, and an agent sends far fewer than
            # a thousand messages a second).
            start = int(clock() * 1000)
        self._next = start
        self._limit = start
        self._reserve()

    def _reserve(self) -> None:
        self._limit = self._next + self.block
        try:
            self._write(self.path, {"next": self._limit})
        except OSError:
            # A full or failing state disk must not stop the agent from numbering messages.
            # The file now holds a limit below the numbers about to be handed out, so it is
            # removed (unlinking needs no free space): the next start then finds no history
            # and starts from the clock in milliseconds, far above them. The write is tried
            # again at the next block.
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __call__(self) -> int:
        if self._next >= self._limit:
            self._reserve()
        value = self._next
        self._next += 1
        return value
