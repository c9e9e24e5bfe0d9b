"""The broker link's bookkeeping, apart from the connection: what it reports and remembers.

`LinkCondition` turns what happened to the connections (a failed connect, a connection lost
soon after its CONNACK or taken over with reason 0x8E, a long calm one) into the link's
``last_error`` condition: `broker_unreachable` or `broker_refused` while not connected, and
`uid_conflict` (another client keeps taking our session) over both; it says when the
condition changed, which is all the link reports. `SessionCounter` keeps the availability
`session` number in ``state_dir/mqtt-session.json`` across restarts, `availability` builds
the retained `online`/`offline` payloads and `AvailabilityGuard` reads what arrives on that
topic and paces the `online` it calls for. No aiomqtt here: the link
(`agent.link.mqtt`) reads the broker's reason codes and passes in the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from pathlib import Path

from agent.core.timefmt import iso
from agent.link.messages import encode
from agent.logs import Log
from agent.state.atomic import write_json

SESSION_FILE = "mqtt-session.json"
QUICK_DROP_S = 10.0  # a connection lost this soon after CONNACK counts toward uid_conflict
QUICK_DROPS = 3
QUICK_DROP_WINDOW_S = 300.0
ONLINE_GAP_S = 1.0  # at most one corrective `online` a second (contract, section 3)


class LinkCondition:
    """The link's current trouble as `(code, message)` in `error`, None when healthy.

    The events below record what happened; `assess(connected=...)` recomputes `error` and
    answers whether its code changed (the message may vary per attempt, which is no news).
    """

    def __init__(self, uid: str) -> None:
        self._uid = uid
        self.error: tuple[str, str] | None = None
        self.conflict: str | None = None
        self._unreachable: tuple[str, str] | None = None
        self._quick_drops: deque[float] = deque()
        self._taken_over = False

    def connect_failed(self, code: str, message: str) -> None:
        """A connect attempt failed: `broker_unreachable` or `broker_refused`.

        A drop followed by a failed connect is the broker going away (a restart, an outage),
        not another client taking our session: those drops are no evidence of a UID conflict.
        """
        self._unreachable = (code, message)
        self._quick_drops.clear()
        if self.conflict is not None and not self._taken_over:
            self.conflict = None

    def connected(self) -> None:
        self._unreachable = None

    def lost(self, *, taken_over: bool, lasted: float, now: float) -> None:
        """A connection ended after `lasted` seconds; `taken_over`: reason code 0x8E.

        Without MQTT 5's reason code (3.1.1, or a broker that omits it) another client with
        our UID shows only as connections dropped soon after they came up, again and again.
        """
        if taken_over:
            self._taken_over = True
            self.conflict = "session taken over by another client with this UID (0x8E)"
        elif lasted < QUICK_DROP_S:
            self._quick_drops.append(now)
            while self._quick_drops[0] < now - QUICK_DROP_WINDOW_S:
                self._quick_drops.popleft()
            if len(self._quick_drops) >= QUICK_DROPS:
                self.conflict = (
                    f"connection dropped {len(self._quick_drops)} times within "
                    f"{QUICK_DROP_S:.0f} s of connecting: another host may share UID {self._uid}"
                )

    def calm(self) -> bool:
        """A connection outlived any conflicting client's backoff: forget the conflict.

        True when there was one to forget.
        """
        had = self.conflict is not None
        self.conflict = None
        self._taken_over = False
        self._quick_drops.clear()
        return had

    def assess(self, *, connected: bool) -> bool:
        """Recompute `error`; True when its code changed (including to or from healthy)."""
        error: tuple[str, str] | None = None
        if self.conflict is not None:
            error = ("uid_conflict", self.conflict)
        elif self._unreachable is not None and not connected:
            error = self._unreachable
        before, self.error = self.error, error
        return (error[0] if error else None) != (before[0] if before else None)


class SessionCounter:
    """The availability `session` number: raised on every connect, kept across restarts.

    A missing or unreadable file starts again from 0. `save()` writes the file atomically
    and blocks: the link runs it off the event loop.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SESSION_FILE
        self.value = self._load()

    def advance(self) -> int:
        self.value += 1
        return self.value

    def save(self) -> None:
        write_json(self.path, {"schema": 1, "session": self.value})

    async def advance_and_save(self, log: Log) -> int:
        """Raise the counter before a connect and save it off the loop; a failed save is
        logged, not fatal (the next connect saves a higher number anyway)."""
        self.advance()
        try:
            await asyncio.to_thread(self.save)
        except OSError as exc:
            log.warning("mqtt.session_not_saved", error=str(exc))
        return self.value

    def _load(self) -> int:
        try:
            session = json.loads(self.path.read_bytes())["session"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return session if type(session) is int and session >= 0 else 0


def availability(state: str, session: int, now: float) -> bytes:
    """The retained availability payload: `state` ("online"/"offline") of `session`."""
    return encode({"state": state, "session": session, "ts": iso(now)})


class AvailabilityGuard:
    """Decides what a message on our own availability topic calls for (contract: section 3).

    `seen(payload, session)` answers True when `online` must be published again: anything
    but our own current `online` (a late will of an earlier connection, retained or not,
    someone else's message, an emptied retained topic) calls for it, while a payload that is
    not JSON is ignored and logged once per link. `due(now)` paces the answers: at most one
    `online` per `ONLINE_GAP_S`, so two clients fighting over one UID cannot turn the topic
    into a storm; it returns 0 when one may go now, else how long to wait.
    """

    def __init__(self, log: Log) -> None:
        self._log = log
        self._garbage_logged = False
        self._last_online: float | None = None

    def seen(self, payload: bytes, session: int) -> bool:
        if not payload:
            return True  # a retained `online` deleted: say it again
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError):
            if not self._garbage_logged:
                self._garbage_logged = True
                self._log.warning("mqtt.availability_garbage", bytes=len(payload))
            return False
        own = (
            isinstance(doc, dict)
            and doc.get("state") == "online"
            and type(doc.get("session")) is int
            and doc["session"] == session
        )
        return not own

    def due(self, now: float) -> float:
        if self._last_online is None:
            return 0.0
        return max(0.0, self._last_online + ONLINE_GAP_S - now)

    def published(self, now: float) -> None:
        self._last_online = now


def abort_without_disconnect(sock: object) -> None:
    """Drop a broker connection without a DISCONNECT, so the broker publishes the will:
    aiomqtt's context exit always sends a clean DISCONNECT (which discards the will) and
    offers no public way to close the socket, so the link hands in its paho client's socket
    (None when there is none; anything that is not a socket is left alone)."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
