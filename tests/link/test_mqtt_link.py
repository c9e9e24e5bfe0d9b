"""The broker link against a real Mosquitto: availability and its session counter, the will,
self-healing, the outbox across broker outages and agent restarts, commands (also those sent
while the agent was away), MQTT 3.1.1, health that is never queued, UID conflicts, and the
time to drain 10,000 queued events. The controller's side is devtools' Commander (paho in a
thread), so the two ends of each test do not share code."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.core.timefmt import iso, parse_iso
from agent.link.messages import Kind
from agent.link.mqtt import MqttLink
from devtools.broker import Mosquitto, TcpProxy, free_port
from devtools.commander import Commander
from devtools.controller import ServerTLS
from tests.link.conftest import MakeLink, seen, until


def availability(cm: Commander) -> list[tuple[str, int]]:
    return [(m["state"], m["session"]) for m in cm.availability()]


def send_events(link: MqttLink, seqs: range) -> None:
    for seq in seqs:
        link.send(
            Kind.EVENT, "events", {"uid": "u", "ts": iso(time.time()), "seq": seq, "type": "t"}
        )


async def test_online_is_retained_and_carries_the_session(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port)
    agent.start()
    await until(lambda: agent.link.connected)
    # Subscribing only now, the commander gets the retained message.
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        (record,) = await seen(cm, lambda: cm.records("availability"))
        body = record.json()
        assert record.retain
        assert (body["state"], body["session"]) == ("online", 1)
        assert agent.link.session == 1
        assert abs(parse_iso(body["ts"]) - time.time()) < 5
    assert agent.errors == [(None, None)] or agent.errors == []


async def test_session_rises_with_every_connect_across_restarts(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    first = make_link(mosquitto.port)
    first.start()
    await until(lambda: first.link.connected)
    await first.stop()
    again = make_link(mosquitto.port, uid=first.uid, prefix=first.prefix, state_dir=first.state_dir)
    again.start()
    await until(lambda: again.link.connected)
    assert again.link.session == 2
    assert json.loads((first.state_dir / "mqtt-session.json").read_text())["session"] == 2
    with Commander(mosquitto.port, uid=first.uid, prefix=first.prefix) as cm:
        await seen(cm, lambda: availability(cm) == [("online", 2)])


async def test_clean_stop_publishes_offline_and_the_will_stays_quiet(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port)
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        agent.start()
        await seen(cm, lambda: availability(cm) == [("online", 1)])
        await agent.stop()
        assert not agent.link.connected
        await seen(cm, lambda: availability(cm) == [("online", 1), ("offline", 1)])
        await asyncio.sleep(2.5)  # past 1.5 x keepalive: a will would have fired by now
        assert availability(cm) == [("online", 1), ("offline", 1)]


async def test_the_will_fires_on_an_abrupt_loss_and_the_link_comes_back(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    with TcpProxy(mosquitto.port) as proxy:
        agent = make_link(proxy.port)
        with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
            agent.start()
            await seen(cm, lambda: availability(cm) == [("online", 1)])
            await asyncio.to_thread(proxy.cut)
            await seen(
                cm, lambda: availability(cm)[:3] == [("online", 1), ("offline", 1), ("online", 2)]
            )
            lost = agent.log.events("mqtt.lost")
            assert lost
            assert "after_s" in lost[0]
            await agent.stop()


async def test_stop_without_offline_lets_the_will_speak(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port)
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        agent.start()
        await seen(cm, lambda: availability(cm) == [("online", 1)])
        await agent.stop(publish_offline=False)
        await seen(cm, lambda: availability(cm) == [("online", 1), ("offline", 1)])


async def test_a_stale_offline_makes_the_link_publish_online_again(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port)
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        agent.start()
        await seen(cm, lambda: availability(cm) == [("online", 1)])
        stale = {"state": "offline", "session": 0, "ts": iso(time.time())}
        await asyncio.to_thread(cm.publish, "availability", stale, retain=True)
        await seen(cm, lambda: availability(cm) == [("online", 1), ("offline", 0), ("online", 1)])
    # What a controller subscribing now finds retained is the healed state.
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as late:
        await seen(late, lambda: availability(late) == [("online", 1)])
    assert agent.log.events("mqtt.self_heal")


async def test_events_sent_while_the_broker_is_down_arrive_in_order(
    tmp_path: Path, make_link: MakeLink
) -> None:
    broker = Mosquitto(tmp_path / "b", port=free_port(), persistence=True)
    broker.directory.mkdir()
    agent = make_link(broker.port)
    broker.start()
    try:
        # A persistent commander session outlives the outage, so nothing can slip past it.
        with Commander(broker.port, uid=agent.uid, prefix=agent.prefix, persistent=True) as cm:
            await asyncio.to_thread(broker.stop)
            agent.start()
            await until(lambda: "broker_unreachable" in agent.error_codes())
            send_events(agent.link, range(1, 201))
            assert len(agent.link.outbox) == 200
            await asyncio.to_thread(broker.start)
            await seen(cm, lambda: len(cm.events()) >= 200, timeout=20)
            assert [e["seq"] for e in cm.events()] == list(range(1, 201))
            await until(lambda: len(agent.link.outbox) == 0)
            assert agent.error_codes() == ["broker_unreachable", None]
    finally:
        broker.close()


async def test_a_restarted_agent_delivers_what_its_predecessor_queued(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    dead = make_link(free_port())  # never connects: its messages stay in the outbox
    dead.link.send(Kind.STATUS, "status", {"seq": 1, "phase": "starting"})
    send_events(dead.link, range(2, 50))
    dead.link.send(Kind.REPLY, "replies", {"seq": 50, "command_id": "c1"})
    dead.link.close()
    with Commander(mosquitto.port, uid=dead.uid, prefix=dead.prefix) as cm:
        agent = make_link(
            mosquitto.port, uid=dead.uid, prefix=dead.prefix, state_dir=dead.state_dir
        )
        assert len(agent.link.outbox) == 50
        agent.start()
        await seen(cm, lambda: cm.replies("c1"))
        seqs = [r.json()["seq"] for r in cm.records() if r.suffix != "availability"]
        assert seqs == list(range(1, 51))
        assert [r.retain for r in cm.records("status")] == [False]  # live delivery, not replay
        await until(lambda: len(agent.link.outbox) == 0)
    with Commander(mosquitto.port, uid=dead.uid, prefix=dead.prefix) as late:
        (status,) = await seen(late, lambda: late.records("status"))
        assert status.retain
        assert status.json()["phase"] == "starting"


async def test_commands_reach_the_handler_even_when_sent_while_away(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    received: list[str] = []
    gate = asyncio.Event()

    async def on_command(payload: bytes) -> None:
        ident = json.loads(payload)["id"]
        received.append(ident)
        if ident == "slow":
            await gate.wait()  # a slow handler must not hold up the next command
        if ident == "boom":
            raise RuntimeError("handler bug")

    agent = make_link(mosquitto.port, on_command=on_command)
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        agent.start()
        await seen(cm, cm.availability)
        for ident in ("slow", "boom", "c1"):
            await asyncio.to_thread(cm.send, {"id": ident})
        await until(lambda: received == ["slow", "boom", "c1"])
        assert agent.link.connected
        assert agent.log.events("mqtt.command_handler_failed")
        gate.set()
        await agent.stop()
        await asyncio.to_thread(cm.send, {"id": "while-away"})
        back = make_link(
            mosquitto.port,
            uid=agent.uid,
            prefix=agent.prefix,
            state_dir=agent.state_dir,
            on_command=on_command,
        )
        back.start()
        await until(lambda: "while-away" in received)


async def test_mqtt_3_1_1_keeps_its_session_and_delivers(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port, protocol="3.1.1")
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix, protocol="3.1.1") as cm:
        agent.start()
        await seen(cm, lambda: availability(cm) == [("online", 1)])
        send_events(agent.link, range(1, 11))
        await seen(cm, lambda: [e["seq"] for e in cm.events()] == list(range(1, 11)))
        await agent.stop()
        await asyncio.to_thread(cm.send, {"id": "while-away"})
        back = make_link(
            mosquitto.port, uid=agent.uid, prefix=agent.prefix, state_dir=agent.state_dir,
            protocol="3.1.1",
        )  # fmt: skip
        back.start()
        await until(lambda: back.commands == [b'{"id":"while-away"}'])
        await seen(cm, lambda: availability(cm)[-1] == ("online", 2))


async def test_health_is_never_queued(tmp_path: Path, make_link: MakeLink) -> None:
    port = free_port()
    agent = make_link(port)
    agent.start()
    await until(lambda: "broker_unreachable" in agent.error_codes())
    agent.link.send(Kind.HEALTH, "health", {"seq": 1})
    assert len(agent.link.outbox) == 0
    (tmp_path / "b").mkdir()
    with (
        Mosquitto(tmp_path / "b", port=port) as broker,
        Commander(broker.port, uid=agent.uid, prefix=agent.prefix) as cm,
    ):
        await until(lambda: agent.link.connected, timeout=15)
        assert agent.beats > 0  # the reconnect loop kept the watchdog fed meanwhile
        agent.link.send(Kind.HEALTH, "health", {"seq": 2})
        (record,) = await seen(cm, lambda: cm.records("health"))
        assert record.json()["seq"] == 2
        assert not record.retain
        await agent.stop()


async def test_a_full_outbox_is_reported_once_connected(
    tmp_path: Path, make_link: MakeLink
) -> None:
    port = free_port()
    agent = make_link(port, outbox_max_bytes=2000)
    send_events(agent.link, range(1, 101))
    assert len(agent.link.outbox) < 100
    (tmp_path / "b").mkdir()
    with (
        Mosquitto(tmp_path / "b", port=port) as broker,
        Commander(broker.port, uid=agent.uid, prefix=agent.prefix) as cm,
    ):
        agent.start()
        (error,) = await seen(cm, lambda: cm.events("error"))
        assert error["code"] == "outbox_full"
        assert error["message"].startswith("outbox full: dropped ")
        assert "events" in error["message"]
        assert error["uid"] == agent.uid
        assert isinstance(error["seq"], int)
        seqs = [e["seq"] for e in cm.events() if e["type"] != "error"]
        assert seqs == sorted(seqs)
        assert seqs[-1] == 100


async def test_two_hosts_sharing_a_uid_report_a_conflict(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    one = make_link(mosquitto.port)
    two = make_link(mosquitto.port, uid=one.uid, prefix=one.prefix)
    one.start()
    await until(lambda: one.link.connected)
    two.start()
    await until(lambda: one.link.uid_conflict or two.link.uid_conflict, timeout=25)
    flagged = one if one.link.uid_conflict else two
    assert "uid_conflict" in flagged.error_codes()
    assert flagged.link.last_error is not None
    assert flagged.link.last_error[0] == "uid_conflict"


@pytest.mark.slow
async def test_ten_thousand_queued_events_drain_quickly(
    tmp_path: Path, make_link: MakeLink
) -> None:
    (tmp_path / "b").mkdir()
    with Mosquitto(tmp_path / "b", max_queued_messages=20_000) as broker:
        agent = make_link(broker.port)
        start = time.perf_counter()
        send_events(agent.link, range(1, 10_001))
        put_s = time.perf_counter() - start
        with Commander(broker.port, uid=agent.uid, prefix=agent.prefix) as cm:
            start = time.perf_counter()
            agent.start()
            await until(lambda: len(agent.link.outbox) == 0, timeout=60)
            drain_s = time.perf_counter() - start
            last = await seen(cm, lambda: [e for e in cm.events() if e["seq"] == 10_000], 30)
            assert last
        print(f"\nlink: 10000 events put {put_s:.2f} s, drained (PUBACKed) {drain_s:.2f} s")
        assert put_s + drain_s < 30


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path, make_link: MakeLink) -> None:
    tls = ServerTLS(require_client_cert=True)
    (tmp_path / "b").mkdir()
    with Mosquitto(tmp_path / "b", tls=tls) as broker:
        # Mosquitto takes the username from the certificate's CN (use_identity_as_username),
        # which ServerTLS.write_client_cert leaves out: issue one with a CN here.
        issued = tls.ca.issue_cert("edge-tls", common_name="edge-tls")
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        agent = make_link(
            broker.tls_port,
            tls=True,
            ca_file=tls.write_ca(tmp_path / "ca.pem"),
            client_cert_file=cert,
            client_key_file=key,
        )
        with Commander(broker.port, uid=agent.uid, prefix=agent.prefix) as cm:
            agent.start()
            await seen(cm, lambda: availability(cm) == [("online", 1)])
            await agent.stop()


async def test_a_refusing_broker_is_reported_as_such(tmp_path: Path, make_link: MakeLink) -> None:
    (tmp_path / "b").mkdir()
    with Mosquitto(tmp_path / "b", extra_config=("allow_anonymous false",)) as broker:
        agent = make_link(broker.port)
        agent.start()
        await until(lambda: agent.errors)
        assert agent.error_codes() == ["broker_refused"]
        assert "Not authorized" in (agent.errors[0][1] or "")


async def test_stop_waits_for_a_hanging_connect_only_up_to_its_timeout(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    with TcpProxy(mosquitto.port) as proxy:
        await asyncio.to_thread(proxy.blackhole)
        agent = make_link(proxy.port, keepalive_s=1)  # connect timeout: 2 keepalives
        agent.start()
        await asyncio.sleep(0.3)  # TCP is up, CONNACK never comes
        started = time.monotonic()
        await agent.stop()
        assert time.monotonic() - started < 2.5
        assert agent.errors == [("broker_unreachable", agent.errors[0][1])]


async def test_a_dead_path_is_noticed_by_keepalive_and_messages_survive_it(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    with TcpProxy(mosquitto.port) as proxy:
        agent = make_link(proxy.port, keepalive_s=1)
        with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
            agent.start()
            await seen(cm, lambda: availability(cm) == [("online", 1)])
            # `online` goes out before the SUBSCRIBE: kill the path only once that is done.
            await until(lambda: agent.link.connected)
            await asyncio.to_thread(proxy.blackhole)
            send_events(agent.link, range(1, 4))  # in flight when the path died
            await until(lambda: not agent.link.connected, timeout=5)
            assert "Keep alive timeout" in agent.log.events("mqtt.lost")[0]["error"]
            await asyncio.to_thread(proxy.restore)
            await seen(cm, lambda: [e["seq"] for e in cm.events()][-3:] == [1, 2, 3])
            # Mosquitto 2.0.11 publishes the dead connection's will only when the new one
            # takes the session over, so it lands after `online`: self-healing repairs that.
            session = agent.link.session
            await seen(cm, lambda: availability(cm)[-1] == ("online", session))
        with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as late:
            await seen(late, lambda: availability(late) == [("online", session)])
        await agent.stop()


async def test_cancelling_run_raises_and_lets_the_will_speak(
    mosquitto: Mosquitto, make_link: MakeLink
) -> None:
    agent = make_link(mosquitto.port)
    with Commander(mosquitto.port, uid=agent.uid, prefix=agent.prefix) as cm:
        agent.start()
        await seen(cm, lambda: availability(cm) == [("online", 1)])
        assert agent.task is not None
        agent.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await agent.task
        await seen(cm, lambda: availability(cm) == [("online", 1), ("offline", 1)])
