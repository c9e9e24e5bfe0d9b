"""What a killed Mosquitto acknowledged and then lost, read from its own packet log.

Mosquitto sends PUBACK as soon as it has a message in memory and writes its persistence
database later (at best once per loop iteration, with `autosave_on_changes true` and
`autosave_interval 1`). A SIGKILL between the two loses messages the publisher was told
were safe: the publisher rightly forgot them, and the broker has no record of them after
its restart. No client can tell this from a message it lost itself, but the broker's log
(`log_type all`) can: every PUBACK logged after the last database save that completed, in
a run of the broker that ended without "terminating", went to a message that is gone.

`unsaved_acks(log_text, client_id)` counts those messages per topic suffix (the last level
of the topic: `replies`, `events`, `status`, `commands`, ...) over every killed run of the
broker in the log. The run still going (the log's last) is not counted: it has lost nothing
yet. A save whose "Saving in-memory database" line is the last of its run may have been
cut short by the kill, so it does not count as completed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["BrokerRun", "runs", "unsaved_acks"]

_STARTING = re.compile(r": mosquitto version \S+ starting$")
_TERMINATING = re.compile(r": mosquitto version \S+ terminating$")
_SAVING = ": Saving in-memory database to "
_RECEIVED = re.compile(r": Received PUBLISH from (\S+) \(d\d, q[12], r\d, m(\d+), '([^']*)'")
_PUBACK = re.compile(r": Sending PUBACK to (\S+) \(m(\d+), rc\d+\)")
_SENDING = re.compile(r": Sending PUBLISH to (\S+) \(d\d, q[12], r\d, m(\d+), ")
_SUB_PUBACK = re.compile(r": Received PUBACK from (\S+) \(Mid: (\d+), RC:\d+\)")


@dataclass
class BrokerRun:
    """One run of the broker: its log lines from "starting" to the next start."""

    lines: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        """Ended without saying so (SIGKILL, a crash): nothing after its last save survived."""
        return not any(_TERMINATING.search(line) for line in self.lines)

    def unsaved_acks(self, client_id: str, subscriber: str | None = None) -> Counter[str]:
        """Messages from `client_id` acknowledged after the last completed save, per topic
        suffix; with `subscriber`, less those whose copy that subscriber acknowledged."""
        saves = [i for i, line in enumerate(self.lines) if _SAVING in line]
        completed = [i for i in saves if i < len(self.lines) - 1]
        start = completed[-1] + 1 if completed else 0
        # A message received before that save is in the database even if its PUBACK was
        # logged after it; so only PUBLISHes received after the save count.
        topics: dict[str, str] = {}  # mid -> topic of the latest such PUBLISH
        copies: dict[str, str] = {}  # its mid -> the mid of its copy to the subscriber
        delivered: set[str] = set()  # the subscriber's PUBACKs
        acked: list[tuple[str, str]] = []
        last: str | None = None  # the mid being routed: copies follow their PUBLISH
        for line in self.lines[start:]:
            if m := _RECEIVED.search(line):
                last = m[2] if m[1] == client_id else None
                if last is not None:
                    topics[last] = m[3]
            elif (m := _SENDING.search(line)) and m[1] == subscriber and last is not None:
                copies[last] = m[2]
            elif (m := _SUB_PUBACK.search(line)) and m[1] == subscriber:
                delivered.add(m[2])
            elif (m := _PUBACK.search(line)) and m[1] == client_id and m[2] in topics:
                acked.append((m[2], topics.pop(m[2])))
        lost: Counter[str] = Counter()
        for mid, topic in acked:
            if copies.get(mid) not in delivered:
                lost[topic.rsplit("/", 1)[-1]] += 1
        return lost


def runs(log_text: str) -> list[BrokerRun]:
    """The broker's runs in the log, oldest first (lines before the first start dropped)."""
    out: list[BrokerRun] = []
    for line in log_text.splitlines():
        if _STARTING.search(line):
            out.append(BrokerRun())
        if out:
            out[-1].lines.append(line)
    return out


def unsaved_acks(log_text: str, client_id: str, subscriber: str | None = None) -> Counter[str]:
    """Per topic suffix, the messages from `client_id` that killed runs acknowledged and may
    have lost (with `subscriber`: that it had not yet delivered to that subscriber)."""
    total: Counter[str] = Counter()
    for run in runs(log_text)[:-1]:
        if run.killed:
            total += run.unsaved_acks(client_id, subscriber)
    return total
