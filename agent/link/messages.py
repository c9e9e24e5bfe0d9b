"""What the agent publishes to the broker, and how each kind travels (docs/api/asyncapi.yaml).

`Outgoing` is one serialised message with the kind that decides its path: status, events and
replies are QoS 1 and go through the on-disk outbox (status retained, the rest not); health is
published at `mqtt.health_qos`, never retained and never queued. `Kind.NODEADM_EVENT` is an
ordinary event on the wire; it exists so a full outbox can drop nodeadm log lines before other
events. Pure data and pure functions: no I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent._compat import StrEnum


class Kind(StrEnum):
    STATUS = "status"
    NODEADM_EVENT = "nodeadm_event"
    EVENT = "event"
    REPLY = "reply"
    HEALTH = "health"


def subtopic_of(kind: Kind) -> str:
    """The topic suffix under `{prefix}/{uid}/` that a kind is published on."""
    if kind is Kind.STATUS:
        return "status"
    if kind is Kind.REPLY:
        return "replies"
    if kind is Kind.HEALTH:
        return "health"
    return "events"


def is_queued(kind: Kind) -> bool:
    """QoS 1 kinds go through the outbox; health is sent only while connected."""
    return kind is not Kind.HEALTH


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish. `id` is assigned by the outbox (0 until queued)."""

    kind: Kind
    subtopic: str
    payload: bytes
    seq: int
    id: int = 0

    @property
    def retain(self) -> bool:
        return self.kind is Kind.STATUS


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON as UTF-8.

    NaN and infinities raise ValueError: they are not JSON and a consumer would choke on them.
    A lone surrogate (a log line decoded with surrogateescape) becomes "?" instead of
    failing the whole message.
    """
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "replace")


def describe_drops(drops: dict[Kind, int]) -> str:
    """The `message` of the `outbox_full` error event, e.g. "outbox full: dropped 3 events"."""
    names = {Kind.STATUS: "status", Kind.NODEADM_EVENT: "nodeadm event", Kind.REPLY: "reply"}
    plural = {"status": "statuses", "reply": "replies"}
    parts = []
    for kind in Kind:
        if n := drops.get(kind, 0):
            name = names.get(kind, "event")
            parts.append(f"{n} {name if n == 1 else plural.get(name, name + 's')}")
    return "outbox full: dropped " + ", ".join(parts)
