"""Everything the agent says: events, command replies, health and the status, numbered by `seq`.

Each message gets the agent's ``uid``, a ``ts`` and the next ``seq``, then goes to the broker
link (once there is one; before that, and without MQTT, only the log and status.json hear of
it). The status is also written to ``state_dir/status.json`` for `edge-agent status`, and its
phase goes to systemd. A status.json that cannot be written is a storage problem the status
itself then reports.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.core.timefmt import iso
from agent.host.notify import Notifier
from agent.link.messages import Kind
from agent.logs import Log
from agent.state.atomic import write_json
from agent.state.storage import StorageHealth

# Events also written to the agent's log: the ones an operator reading the journal needs.
_LOGGED = frozenset({"error", "registration", "assignment"})

# (seq, ts) -> the status object; the application builds it from the lifecycle and checks.
StatusBuilder = Callable[[int, str], dict[str, Any]]


class Observer(Protocol):
    """Sees every event and reply the agent sends (the metrics tally)."""

    def observe_event(self, event: dict[str, Any], at: float) -> None: ...
    def observe_reply(self, reply: dict[str, Any]) -> None: ...


class Publisher(Protocol):
    """What the outbound side needs of the broker link."""

    def send(self, kind: Kind, subtopic: str, payload: dict[str, Any]) -> None: ...


class Outbound:
    def __init__(
        self,
        *,
        uid: str,
        seq: Callable[[], int],
        now: Callable[[], float],
        status_path: Path,
        build_status: StatusBuilder,
        phase: Callable[[], str],
        storage: StorageHealth,
        notifier: Notifier,
        log: Log,
    ) -> None:
        self.uid = uid
        self.seq = seq
        self._now = now
        self._status_path = status_path
        self._build_status = build_status
        self._phase = phase
        self._storage = storage
        self._notifier = notifier
        self._log = log
        self._link: Publisher | None = None
        self.observer: Observer | None = None  # set when metrics are enabled
        self.last_status_at = 0.0  # monotonic time of the last status published

    def attach(self, link: Publisher) -> None:
        """From now on messages go to the broker link too."""
        self._link = link

    def base(self) -> dict[str, Any]:
        return {"uid": self.uid, "ts": iso(self._now()), "seq": self.seq()}

    def emit(self, type_: str, fields: dict[str, Any]) -> None:
        payload = {**self.base(), "type": type_, **fields}
        if self.observer is not None:
            self.observer.observe_event(payload, time.monotonic())
        if type_ in _LOGGED:
            self._log.info("event", **{k: v for k, v in payload.items() if k not in ("uid", "ts")})
        if self._link is not None:
            kind = Kind.NODEADM_EVENT if type_ == "nodeadm" else Kind.EVENT
            self._link.send(kind, "events", payload)

    def error(self, code: str, message: str, **fields: object) -> None:
        self.emit("error", {"code": code, "message": message, **fields})

    def reply(self, reply: dict[str, Any]) -> None:
        payload = {**reply, "ts": iso(self._now()), "seq": self.seq()}
        if self.observer is not None:
            self.observer.observe_reply(payload)
        if self._link is not None:
            self._link.send(Kind.REPLY, "replies", payload)

    def health(self, fields: dict[str, Any]) -> None:
        if self._link is not None:
            self._link.send(Kind.HEALTH, "health", {**self.base(), **fields})

    def status(self) -> dict[str, Any]:
        return self._build_status(self.seq(), iso(self._now()))

    def publish_status(self) -> None:
        status = self.status()
        try:
            write_json(self._status_path, status, 0o644)
        except OSError as e:
            if self._storage.failed("cannot write the status", e):
                status = self.status()  # this one already says so
        else:
            if self._storage.recovered():
                status = self.status()
                with contextlib.suppress(OSError):
                    write_json(self._status_path, status, 0o644)
        if self._link is not None:
            self._link.send(Kind.STATUS, "status", status)
        self.last_status_at = time.monotonic()
        self._notifier.status(self._phase())


__all__ = ["Outbound", "Publisher", "StatusBuilder"]
