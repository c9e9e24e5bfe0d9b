"""devtools.brokerlog: what a killed Mosquitto acknowledged and lost, from its packet log.

The fault tests excuse exactly these messages and nothing else, so the parser must neither
miss a loss (a test would blame the agent) nor invent one (a test would excuse the agent).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devtools.broker import Mosquitto
from devtools.brokerlog import runs, unsaved_acks

T = "1795727124: "
AGENT, CMDR = "edge-1", "cmdr-edge-1"


def _start() -> list[str]:
    return [T + "mosquitto version 2.0.11 starting", T + "mosquitto version 2.0.11 running"]


def _publish(mid: int, suffix: str, copy: int | None = None, client: str = AGENT) -> list[str]:
    topic = f"p/edge/v1/edge-1/{suffix}"
    lines = [T + f"Received PUBLISH from {client} (d0, q1, r0, m{mid}, '{topic}', ... (9 bytes))"]
    if copy is not None:
        to = CMDR if client == AGENT else AGENT
        lines.append(T + f"Sending PUBLISH to {to} (d0, q1, r0, m{copy}, '{topic}', ... (9 bytes))")
    lines.append(T + f"Sending PUBACK to {client} (m{mid}, rc0)")
    return lines


def _save() -> list[str]:
    return [T + "Saving in-memory database to /b//mosquitto.db."]


def _sub_ack(mid: int, client: str = CMDR) -> list[str]:
    return [T + f"Received PUBACK from {client} (Mid: {mid}, RC:0)"]


def _log(*parts: list[str]) -> str:
    return "\n".join(line for part in parts for line in part) + "\n"


def test_messages_acknowledged_after_the_last_save_of_a_killed_run_are_lost() -> None:
    log = _log(
        _start(),
        _publish(1, "replies"),
        _save(),  # 1 is saved
        _publish(2, "replies"),
        _publish(3, "events"),
        _publish(4, "status"),
        _start(),  # killed: no "terminating"
        _publish(1, "replies"),
    )
    assert unsaved_acks(log, AGENT) == Counter({"replies": 1, "events": 1, "status": 1})
    assert [r.killed for r in runs(log)] == [True, True]


def test_a_terminated_run_and_the_running_one_lose_nothing() -> None:
    log = _log(
        _start(),
        _publish(1, "replies"),
        [T + "mosquitto version 2.0.11 terminating"],
        _save(),
        _start(),
        _publish(2, "replies"),  # the broker is still up: nothing lost yet
    )
    assert unsaved_acks(log, AGENT) == Counter()


def test_a_save_that_ends_the_run_kept_what_came_before_it() -> None:
    # Mosquitto idles after a save, so most killed runs end on one; it finished.
    log = _log(_start(), _save(), _publish(1, "replies"), _publish(2, "events"), _save(), _start())
    assert unsaved_acks(log, AGENT) == Counter()


def test_a_copy_the_subscriber_acknowledged_was_delivered() -> None:
    log = _log(
        _start(),
        _save(),
        _publish(7, "replies", copy=300),
        _publish(8, "replies", copy=301),
        _sub_ack(300),  # the subscriber has 7's copy; 8's is lost with the broker
        _start(),
    )
    assert unsaved_acks(log, AGENT) == Counter({"replies": 2})
    assert unsaved_acks(log, AGENT, subscriber=CMDR) == Counter({"replies": 1})


def test_a_copy_is_credited_only_to_the_publish_it_follows() -> None:
    topic = "p/edge/v1/edge-1/replies"
    log = _log(
        _start(),
        _save(),
        _publish(3, "replies"),  # no copy: the subscriber is away
        # after the PUBACK: a queued copy of something else, flushed later
        [T + f"Sending PUBLISH to {CMDR} (d0, q1, r0, m500, '{topic}', ... (9 bytes))"],
        _sub_ack(500),
        [
            T + f"Received PUBLISH from {AGENT} (d0, q1, r0, m4, 'p/edge/v1/edge-1/events', ...)",
            # another topic's message sent in between: not a copy of 4
            T + f"Sending PUBLISH to {CMDR} (d0, q1, r1, m501, 'p/edge/v1/edge-1/status', ...)",
            T + f"Sending PUBACK to {AGENT} (m4, rc0)",
        ],
        _sub_ack(501),
        _start(),
    )
    assert unsaved_acks(log, AGENT, subscriber=CMDR) == Counter({"replies": 1, "events": 1})


def test_other_clients_and_acks_without_their_publish_are_not_counted() -> None:
    log = _log(
        _start(),
        _publish(5, "commands", client=CMDR, copy=40),
        _save(),
        [T + f"Sending PUBACK to {AGENT} (m9, rc0)"],  # its PUBLISH came before the save
        _publish(6, "commands", client=CMDR, copy=41),
        _sub_ack(41, client=AGENT),
        _publish(7, "commands", client=CMDR, copy=42),
        _start(),
    )
    assert unsaved_acks(log, AGENT) == Counter()
    assert unsaved_acks(log, CMDR, subscriber=AGENT) == Counter({"commands": 1})


def test_the_parser_reads_a_real_mosquitto_log(tmp_path: Path) -> None:
    # No autosave within the test: everything acknowledged after the start is unsaved, so a
    # kill loses exactly what was published, and the parser must find all of it.
    broker = Mosquitto(
        tmp_path, persistence=True, extra_config=("log_type all", "autosave_interval 3600")
    )
    with broker:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub-1")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            infos = [client.publish(f"x/pub-1/{s}", b"1", qos=1) for s in ("a", "a", "b")]
            for info in infos:
                info.wait_for_publish(5)
        finally:
            client.loop_stop()
        broker.kill()
        broker.restart()
        time.sleep(0.1)
        log = broker.log_path.read_text()
    assert [r.killed for r in runs(log)[:-1]] == [True]
    assert unsaved_acks(log, "pub-1") == Counter({"a": 2, "b": 1})
