"""What the agent keeps beside the lifecycle state, and the one way all of it is saved.

`Record` holds the last full preflight run (shown in the status), the nodeadm version a check
found, and the ``extra`` keys the state file carries (the lost-state marker among them).
`Persister` saves the lifecycle state together with the record; a write that fails is a
storage problem the status reports, never a reason to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.core import lifecycle as lc
from agent.state.storage import StorageHealth
from agent.state.store import RECOVER_FROM_HOST, Loaded, StateStore


@dataclass
class Record:
    checks: list[dict[str, Any]] = field(default_factory=list)
    checks_ts: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> Record:
        record = cls(loaded.checks, loaded.checks_ts, loaded.extra)
        if loaded.lost:
            # Kept in the state until the host has been asked, so a restart before the
            # assignment arrives still asks rather than re-running finished steps.
            record.extra[RECOVER_FROM_HOST] = True
        return record

    @property
    def nodeadm_version(self) -> str | None:
        v = self.extra.get("nodeadm_version")
        return str(v) if v else None

    @nodeadm_version.setter
    def nodeadm_version(self, version: str) -> None:
        self.extra["nodeadm_version"] = version

    @property
    def must_recover(self) -> bool:
        return bool(self.extra.get(RECOVER_FROM_HOST))

    def recovered(self) -> None:
        self.extra.pop(RECOVER_FROM_HOST, None)


class Persister:
    def __init__(self, store: StateStore, record: Record, storage: StorageHealth) -> None:
        self._store = store
        self._record = record
        self._storage = storage

    def __call__(self, state: lc.State) -> None:
        r = self._record
        try:
            self._store.save(state, r.checks, r.checks_ts, r.extra)
        except OSError as e:
            # Every caller publishes a status after persisting (the stop excepted), which
            # then shows the failure.
            self._storage.failed("cannot save the state", e)
            return
        self._storage.recovered()


__all__ = ["Persister", "Record"]
