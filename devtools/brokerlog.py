"""What a killed Mosquitto acknowledged and then lost, read from its own packet log.

Mosquitto sends PUBACK as soon as it has a message in memory and writes its persistence
database later (at best once per loop iteration, with `autosave_on_changes true` and
`autosave_interval 1`). A SIGKILL between the two loses messages the publisher was told
were safe: the publisher rightly forgot them, and the broker has no record of them after
its restart. No client can tell this from a message it lost itself, but the broker's log
(`log_type all`) can: every PUBACK logged after the last database save that completed, in
a run of the broker that ended without "terminating", went to a message that may be gone
(unless the subscriber acknowledged its copy before the kill).

`unsaved_acks(log_text, client_id, subscriber)` counts those messages per topic suffix (the
last level of the topic: `replies`, `events`, `status`, `commands`, ...) over every killed
run of the broker in the log. The run still going (the log's last) is not counted: it has
lost nothing yet. The last "Saving in-memory database" line of a run counts as a finished
save, though the kill could in principle have cut it short (a save takes well under a
millisecond here, and the broker idles after it): a test then fails rather than excusing a
message the broker did keep.
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
_SENDING = re.compile(r": Sending PUBLISH to (\S+) \(d\d, q[12], r\d, m(\d+), '([^']*)'")
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
        """Messages from `client_id` acknowledged after the run's last save, per topic suffix;
        with `subscriber`, less those whose copy that subscriber acknowledged."""
        saves = [i for i, line in enumerate(self.lines) if _SAVING in line]
        start = saves[-1] + 1 if saves else 0
        # A message received before that save is in the database even if its PUBACK was
        # logged after it; so only PUBLISHes received after the save count.
        topics: dict[str, str] = {}  # mid -> topic of the latest such PUBLISH
        copies: dict[str, str] = {}  # its mid -> the mid of its copy to the subscriber
        acked: list[tuple[str, str | None]] = []  # (topic, copy mid) per acknowledged one
        delivered: set[str] = set()  # the subscriber's PUBACKs
        # Mosquitto logs a PUBLISH's copies right after it: any other line ends that routing,
        # so a queued copy sent later is never credited to the wrong message.
        routing: tuple[str, str] | None = None  # (mid, topic) of the PUBLISH being routed
        for line in self.lines[start:]:
            if m := _RECEIVED.search(line):
                routing = (m[2], m[3]) if m[1] == client_id else None
                if routing is not None:
                    topics[m[2]] = m[3]
                continue
            if m := _SENDING.search(line):
                if routing is not None and m[1] == subscriber and m[3] == routing[1]:
                    copies[routing[0]] = m[2]
                continue
            routing = None
            if (m := _PUBACK.search(line)) and m[1] == client_id and m[2] in topics:
                acked.append((topics.pop(m[2]), copies.pop(m[2], None)))
            elif (m := _SUB_PUBACK.search(line)) and m[1] == subscriber:
                delivered.add(m[2])
        lost: Counter[str] = Counter()
        for topic, copy in acked:
            if copy is None or copy not in delivered:
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
