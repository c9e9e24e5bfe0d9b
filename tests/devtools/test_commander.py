"""The broker fixtures, the commander and the command signer work against real things.

A real Mosquitto on a free loopback port (restarted on the same port), paho clients on
both ends of a topic, the TCP proxy between a client and the broker going dark until
keepalive notices, and signatures checked with `cryptography` over the canonical bytes.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from paho.mqtt.enums import CallbackAPIVersion

from devtools.broker import Mosquitto, TcpProxy, free_port
from devtools.commander import Commander
from devtools.controller import ServerTLS
from devtools.signer import CommandSigner, canonical_bytes, iso, new_command_id


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as mosquitto:
        yield mosquitto


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    # A prefix per test keeps retained messages of one test out of another.
    return f"test/{request.node.name.replace('[', '-').replace(']', '')}"


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


# -- signer ------------------------------------------------------------------------------


def test_signature_verifies_over_canonical_bytes_with_non_ascii_args() -> None:
    signer = CommandSigner.generate()
    env = signer.envelope(
        "run-checks",
        {"only": ["swap"], "note": "café ☕ 東京", "z": {"b": 1, "a": 2}},
        uid="edge-1",
    )
    public = load_pem_public_key(signer.public_pem())
    assert isinstance(public, Ed25519PublicKey)
    unsigned = {k: v for k, v in env.items() if k != "sig"}
    expected = json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert canonical_bytes(env) == expected
    assert "café ☕ 東京".encode() in expected
    signature = base64.b64decode(env["sig"], validate=True)
    public.verify(signature, expected)  # raises InvalidSignature on mismatch

    tampered = env | {"args": {"only": ["swap"]}}
    with pytest.raises(InvalidSignature):
        public.verify(signature, canonical_bytes(tampered))


def test_envelope_fields_times_and_resigning(tmp_path: Path) -> None:
    signer = CommandSigner.generate()
    env = signer.envelope("ping", uid="edge-1", id="cmd-1", issued_at=1_795_714_447.1234, ttl_s=60)
    assert env["id"] == "cmd-1"
    assert env["args"] == {}
    assert env["issued_at"] == "2026-11-26T17:34:07.123Z"
    assert env["expires_at"] == "2026-11-26T17:35:07.123Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert "sig" not in signer.envelope("ping", uid="edge-1", sign=False)

    moved = signer.sign(env | {"uid": "edge-2"})
    assert moved["sig"] != env["sig"]
    again = CommandSigner.from_pem(signer.private_pem())
    assert again.sign(env)["sig"] == env["sig"]  # Ed25519 signatures are deterministic

    path = signer.write_public_key(tmp_path / "commands.pub")
    assert path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_command_ids_are_valid_and_time_ordered() -> None:
    first = new_command_id(1_000.0)
    later = new_command_id(1_001.0)
    assert len(first) == 26
    assert first < later
    assert first != new_command_id(1_000.0)


# -- Mosquitto ---------------------------------------------------------------------------


def test_mosquitto_restarts_on_the_same_port(tmp_path: Path) -> None:
    with Mosquitto(tmp_path, persistence=True, max_queued_messages=50) as mosquitto:
        port = mosquitto.port
        assert port != 1883
        assert mosquitto.url == f"mqtt://127.0.0.1:{port}"
        assert accepting(port)
        first_pid = mosquitto.pid
        mosquitto.restart()
        assert (mosquitto.port, accepting(port)) == (port, True)
        assert mosquitto.pid != first_pid
        mosquitto.kill()
        assert not mosquitto.running
        assert not accepting(port)
        mosquitto.restart(kill=True)
        assert accepting(port)
    config = (tmp_path / "mosquitto.conf").read_text()
    assert "persistence true" in config
    assert "max_queued_messages 50" in config
    assert "set_tcp_nodelay true" in config  # the default: see docs/broker.md
    (tmp_path / "plain").mkdir()
    Mosquitto(tmp_path / "plain", tcp_nodelay=False)._write_config()
    assert "set_tcp_nodelay" not in (tmp_path / "plain" / "mosquitto.conf").read_text()
    assert (tmp_path / "mosquitto.db").exists()  # saved on SIGTERM


def test_mosquitto_refuses_1883_and_reports_startup_failures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1883"):
        Mosquitto(tmp_path, port=1883)
    bad = Mosquitto(tmp_path, extra_config=("no_such_option yes",))
    with pytest.raises(RuntimeError, match="did not start"):
        bad.start(timeout=2)
    assert not bad.running


def test_free_port_is_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        assert 20000 <= free_port() < low


# -- Commander ---------------------------------------------------------------------------


def test_commander_records_a_fake_reply(broker: Mosquitto, prefix: str) -> None:
    with (
        Commander(broker.port, uid="edge-a", prefix=prefix) as commander,
        Commander(broker.port, prefix=prefix) as agent_side,
    ):
        reply = {"command_id": "c1", "uid": "edge-a", "state": "accepted", "seq": 1}
        agent_side.publish("replies", reply, uid="edge-a")
        agent_side.publish("replies", reply | {"state": "succeeded", "seq": 2}, uid="edge-a")
        final = commander.final_reply("c1", timeout=5)
        assert final is not None
        assert final["state"] == "succeeded"
        assert [r["state"] for r in commander.replies("c1")] == ["accepted", "succeeded"]
        assert commander.final_reply("other", timeout=0.1) is None
        record = commander.records("replies")[0]
        assert (record.uid, record.suffix, record.retain) == ("edge-a", "replies", False)
        assert record.ts <= time.time()


def test_commander_queries_by_kind_phase_and_host(broker: Mosquitto, prefix: str) -> None:
    with Commander(broker.port, prefix=prefix) as agent_side:
        agent_side.publish("status", {"phase": "preflight"}, uid="edge-a", retain=True)
        with Commander(broker.port, prefix=prefix) as fleet:
            # Retained status published before we subscribed still arrives, flagged retained.
            assert fleet.wait_phase("preflight", timeout=5)
            assert fleet.records("status")[0].retain
            started = time.time()
            assert not fleet.wait_phase("preflight", timeout=0.2, since=started)
            agent_side.publish("events", {"type": "phase", "to": "joined"}, uid="edge-b")
            agent_side.publish("events", {"type": "check", "id": "swap"}, uid="edge-a")
            agent_side.publish("health", b"not json", uid="edge-a")
            agent_side.publish("availability", {"state": "online", "session": 1}, uid="edge-b")
            assert fleet.wait_phase("joined", timeout=5, uid="edge-b", since=started)
            assert fleet.wait_for(lambda: len(fleet.records()) == 5, timeout=5)
            assert fleet.events("check") == [{"type": "check", "id": "swap"}]
            assert len(fleet.events()) == 2
            assert fleet.events(uid="edge-b") == [{"type": "phase", "to": "joined"}]
            assert fleet.health() == [{"_raw": b"not json"}]
            assert fleet.availability("edge-b")[0]["state"] == "online"
            assert fleet.statuses("edge-b") == []
            fleet.clear()
            assert fleet.records() == []
        # Leave no retained message behind in the broker for later tests.
        agent_side.publish("status", b"", uid="edge-a", retain=True)


def test_commander_sends_envelopes_with_puback(broker: Mosquitto, prefix: str) -> None:
    signer = CommandSigner.generate()
    got: list[bytes] = []
    arrived = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        got.append(message.payload)
        arrived.set()

    agent = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    agent.on_message = on_message
    agent.on_subscribe = lambda *args: subscribed.set()
    agent.connect("127.0.0.1", broker.port)
    agent.loop_start()
    try:
        result, _ = agent.subscribe(f"{prefix}/edge-a/commands", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert subscribed.wait(5)
        with Commander(broker.port, uid="edge-a", prefix=prefix) as commander:
            envelope = signer.envelope("ping", {"note": "ü"}, uid="edge-a")
            assert commander.send(envelope) == envelope["id"]
            assert arrived.wait(5)
        payload = json.loads(got[0])
        assert payload == envelope
        public = load_pem_public_key(signer.public_pem())
        assert isinstance(public, Ed25519PublicKey)
        public.verify(base64.b64decode(payload["sig"]), canonical_bytes(payload))
    finally:
        agent.disconnect()
        agent.loop_stop()


def test_commander_needs_a_uid_to_send(broker: Mosquitto, prefix: str) -> None:
    with Commander(broker.port, prefix=prefix) as fleet, pytest.raises(ValueError, match="uid"):
        fleet.send(b'{"id":"x"}')


def test_persistent_commander_gets_what_was_sent_while_away(broker: Mosquitto, prefix: str) -> None:
    with Commander(broker.port, uid="edge-a", prefix=prefix, persistent=True) as first:
        client_id = first.client_id
    with Commander(broker.port, uid="edge-a", prefix=prefix) as agent_side:
        agent_side.publish("events", {"type": "error", "seq": 7})
    with Commander(
        broker.port, uid="edge-a", prefix=prefix, persistent=True, client_id=client_id
    ) as again:
        assert again.wait_for(lambda: again.events("error"), timeout=5) == [
            {"type": "error", "seq": 7}
        ]


def test_commander_speaks_mqtt_311(broker: Mosquitto, prefix: str) -> None:
    with Commander(broker.port, uid="edge-a", prefix=prefix, protocol="3.1.1") as commander:
        commander.publish("events", {"type": "v311"})
        assert commander.wait_for(lambda: commander.events("v311"), timeout=5)


def test_commander_reconnects_after_broker_restart(broker: Mosquitto, prefix: str) -> None:
    with Commander(broker.port, uid="edge-a", prefix=prefix) as commander:
        broker.restart()
        assert commander.wait_connected(timeout=5)
        commander.publish("events", {"type": "registration"})
        assert commander.wait_for(lambda: commander.events("registration"), timeout=5)


def test_commander_over_tls(tmp_path: Path, prefix: str) -> None:
    tls = ServerTLS()
    with Mosquitto(tmp_path, tls=tls) as mosquitto:
        assert mosquitto.tls_url == f"mqtts://127.0.0.1:{mosquitto.tls_port}"
        context = tls.client_context(client_cert=False)
        with Commander(
            mosquitto.tls_port, uid="edge-a", prefix=prefix, tls_context=context
        ) as commander:
            commander.publish("events", {"type": "tls"})
            assert commander.wait_for(lambda: commander.events("tls"), timeout=5)


# -- TcpProxy ----------------------------------------------------------------------------


def test_proxy_forwards_then_blackholes_until_keepalive_then_restores(
    broker: Mosquitto, prefix: str
) -> None:
    with TcpProxy(broker.port) as proxy:
        assert proxy.port not in (0, broker.port, 1883)
        with Commander(proxy.port, uid="edge-a", prefix=prefix, keepalive=1) as commander:
            commander.publish("events", {"type": "before"})
            assert commander.wait_for(lambda: commander.events("before"), timeout=5)

            proxy.blackhole()
            # Nothing crosses, no FIN either: only the 1 s keepalive can notice.
            assert commander.wait_for(lambda: not commander.connected, timeout=5)

            proxy.restore()
            assert commander.wait_connected(timeout=5)
            commander.publish("events", {"type": "after"})
            assert commander.wait_for(lambda: commander.events("after"), timeout=5)

            proxy.cut()
            assert commander.wait_for(lambda: not commander.connected, timeout=5)
            assert commander.wait_connected(timeout=5)


def test_proxy_refuses_when_the_target_is_down(tmp_path: Path) -> None:
    mosquitto = Mosquitto(tmp_path).start()
    port = mosquitto.port
    mosquitto.stop()
    with TcpProxy(port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), 2) as conn:
        conn.settimeout(2)
        assert conn.recv(1) == b""
    mosquitto.close()
