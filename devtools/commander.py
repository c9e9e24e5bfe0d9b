"""The controller's side of the MQTT contract (docs/api/asyncapi.yaml), for tests, the demo and
benchmarks.

`Commander` is a paho-mqtt client in its own network thread that subscribes to every topic
of one host, or of all hosts under the prefix, records each message as it arrives (time,
host, topic suffix, payload, retain flag), and publishes command envelopes at QoS 1. Tests
read the record through small queries (replies of a command, its final reply, events of a
type, statuses, availability, health) and block on conditions with `wait_for`. With
`persistent=True` its broker session outlives disconnects, so a fault-injection test can
compare everything an agent produced with everything that arrived. It uses paho directly,
not the agent's aiomqtt link, so the two sides of a test do not share a bug.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["FINAL_STATES", "Commander", "Received"]

T = TypeVar("T")

FINAL_STATES = frozenset({"succeeded", "failed", "canceled", "timed_out", "rejected"})


@dataclass
class Received:
    """One message as it arrived: `ts` is `time.time()` when paho handed it to us."""

    ts: float
    uid: str
    suffix: str
    payload: bytes
    retain: bool
    qos: int = 1  # as delivered: the lower of the publisher's and our subscription's (1)
    _parsed: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object; anything else comes back as `{"_raw": payload}`.

        Parsed once and cached, because `wait_for` predicates re-read every record on each
        arrival (a fleet run has thousands); the dict is shared, so treat it as read-only.
        """
        if self._parsed is None:
            try:
                value = json.loads(self.payload)
            except ValueError:
                value = None
            self._parsed = value if isinstance(value, dict) else {"_raw": self.payload}
        return self._parsed


class Commander:
    """An MQTT client acting for the controller. `uid=None` follows every host."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        uid: str | None = None,
        prefix: str = "edge/v1",
        persistent: bool = False,
        protocol: str = "5",
        client_id: str | None = None,
        keepalive: int = 30,
        tls_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError('protocol must be "5" or "3.1.1"')
        self.uid = uid
        self.prefix = prefix.rstrip("/")
        self.persistent = persistent
        self.client_id = client_id or f"commander-{uuid.uuid4().hex[:12]}"
        self._v5 = protocol == "5"
        self._records: list[Received] = []
        # Everything ever received and published, which `clear` keeps: tests/e2e checks all
        # the agent sent against the published schemas, and skips what we published.
        self._history: list[Received] = []
        self._published: set[tuple[str, bytes]] = set()
        # Per-suffix lists, so `replies`/`events` don't scan a fleet's health samples.
        self._by_suffix: dict[str, list[Received]] = {}
        self._cond = threading.Condition()
        self._connected = False
        self._subscribed = threading.Event()
        self._closed = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else not persistent,
        )
        # The fleet benchmark publishes to a thousand hosts back to back; paho's default of
        # 20 in flight would make it wait on PUBACKs rather than on the agents.
        self._client.max_inflight_messages_set(1000)
        # Reconnect fast: tests restart the broker and want us back within a second.
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._connect(host, port, keepalive, connect_timeout)

    # -- connection ------------------------------------------------------------------------

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/{self.uid or '+'}/#"

    def _connect(self, host: str, port: int, keepalive: int, timeout: float) -> None:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            # A persistent session must outlive the disconnects a fault test causes.
            props.SessionExpiryInterval = 3600 if self.persistent else 0
            self._client.connect(
                host, port, keepalive, clean_start=not self.persistent, properties=props
            )
        else:
            self._client.connect(host, port, keepalive)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"no CONNACK/SUBACK from {host}:{port} within {timeout}s")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            return
        # Subscribing on every connect (not once) survives a broker that lost our session.
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        # "Connected" means subscribed too: a test that publishes as soon as we are back
        # must not race our SUBSCRIBE and miss its own message.
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        head = self.prefix + "/"
        if not topic.startswith(head):
            return
        uid, _, suffix = topic[len(head) :].partition("/")
        record = Received(
            time.time(), uid, suffix, bytes(message.payload), bool(message.retain), message.qos
        )
        with self._cond:
            self._records.append(record)
            self._history.append(record)
            self._by_suffix.setdefault(suffix, []).append(record)
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: self._connected, timeout)

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        if self._closed:
            return
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Commander:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        suffix: str,
        payload: bytes | str | dict[str, Any],
        *,
        uid: str | None = None,
        qos: int = 1,
        retain: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> mqtt.MQTTMessageInfo:
        """Publish to `{prefix}/{uid}/{suffix}`; with `wait`, block until the broker acked."""
        target = uid or self.uid
        if target is None:
            raise ValueError("no uid: pass uid= or construct the Commander with one")
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if isinstance(payload, str):
            payload = payload.encode()
        with self._cond:
            self._published.add((suffix, payload))
        info = self._client.publish(f"{self.prefix}/{target}/{suffix}", payload, qos, retain)
        if wait and qos > 0:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"no PUBACK for {suffix} to {target} within {timeout}s")
        return info

    def send(
        self,
        envelope: dict[str, Any] | bytes,
        uid: str | None = None,
        *,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> str | None:
        """Publish a command envelope (dict or raw bytes) to the host's `commands` topic.

        The host is `uid`, else the envelope's `uid`, else the Commander's. Returns the
        envelope id when there is one, to pass to `final_reply`.
        """
        command_id = None
        if isinstance(envelope, dict):
            command_id = envelope.get("id")
            if uid is None and isinstance(envelope.get("uid"), str):
                uid = envelope["uid"]
        self.publish("commands", envelope, uid=uid, wait=wait, timeout=timeout)
        return command_id if isinstance(command_id, str) else None

    # -- queries ---------------------------------------------------------------------------

    def records(self, suffix: str | None = None, uid: str | None = None) -> list[Received]:
        """Raw records in arrival order, optionally for one suffix and/or host."""
        with self._cond:
            pool = self._records if suffix is None else self._by_suffix.get(suffix, [])
            return [r for r in pool if uid is None or r.uid == uid]

    def history(self) -> tuple[list[Received], set[tuple[str, bytes]]]:
        """Every message received since the start, `clear` or not, and what we published."""
        with self._cond:
            return list(self._history), set(self._published)

    def messages(self, suffix: str, uid: str | None = None) -> list[dict[str, Any]]:
        """Parsed payloads on `suffix`, in arrival order; unparsable ones as `{"_raw": bytes}`."""
        return [r.json() for r in self.records(suffix, uid)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._records.clear()
            self._by_suffix.clear()

    def replies(self, command_id: str, uid: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages("replies", uid) if m.get("command_id") == command_id]

    def final_reply(
        self, command_id: str, timeout: float = 15.0, uid: str | None = None
    ) -> dict[str, Any] | None:
        """The first reply to `command_id` in a final state, waiting up to `timeout`."""

        def final() -> dict[str, Any] | None:
            for reply in self.replies(command_id, uid):
                if reply.get("state") in FINAL_STATES:
                    return reply
            return None

        return self.wait_for(final, timeout)

    def events(self, type: str | None = None, uid: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.messages("events", uid) if type is None or e.get("type") == type]

    def statuses(self, uid: str | None = None) -> list[dict[str, Any]]:
        return self.messages("status", uid)

    def availability(self, uid: str | None = None) -> list[dict[str, Any]]:
        return self.messages("availability", uid)

    def health(self, uid: str | None = None) -> list[dict[str, Any]]:
        return self.messages("health", uid)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Re-evaluate `predicate` on every arrival until truthy; return its last value."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                value = predicate()
                before = time.monotonic()
                remaining = deadline - before
                if value or remaining <= 0:
                    return value
                # A bounded wait also catches predicates that depend on the clock.
                self._cond.wait(min(remaining, 0.25))
                # In a burst (10,000 events), re-reading every record on each arrival while
                # holding the lock starves paho's thread, which needs it to record the next
                # one: re-check at most every 10 ms, with the lock released meanwhile.
                waited = time.monotonic() - before
                if waited < 0.01:
                    self._cond.release()
                    try:
                        time.sleep(0.01 - waited)
                    finally:
                        self._cond.acquire()

    def wait_phase(
        self, phase: str, timeout: float = 15.0, *, uid: str | None = None, since: float = 0.0
    ) -> bool:
        """True once a status (`phase`) or a phase event (`to`) shows `phase`.

        Only records that arrived at or after `since` (a `time.time()`) count, so a test can
        ignore a retained status from before the step it is checking.
        """

        def seen() -> bool:
            for record in self.records("status", uid) + self.records("events", uid):
                if record.ts < since:
                    continue
                body = record.json()
                if record.suffix == "status" and body.get("phase") == phase:
                    return True
                if body.get("type") == "phase" and body.get("to") == phase:
                    return True
            return False

        return self.wait_for(seen, timeout)
