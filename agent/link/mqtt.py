"""The broker link: the agent's only MQTT client, and the only module that imports aiomqtt.

`MqttLink.run()` connects forever with a fresh `aiomqtt.Client` per attempt (reusing one broke
upstream: aiomqtt #244, #269, #288) and full-jitter backoff. Each connect raises the
availability `session`, sets the will `offline` for it, publishes `online`, subscribes to its
commands and availability, then drains the outbox in order (a message leaves only on its
PUBACK). The session is persistent, so commands sent while the agent is away arrive later;
paho acknowledges them before our handler runs, so deduplication is the command ledger's.
Trouble is reported through `on_link_error(code, message)` when the condition changes
(`broker_unreachable`, `broker_refused`, `uid_conflict`; `(None, None)` once healthy).
`linkstate` keeps that condition, the session counter and the availability rule; `linkreport`
reports, `pump` drains, `intake` bounds what arrives. Oversized packets are refused before
buffering under MQTT 5 only: 3.1.1 cannot tell the broker (set its `max_packet_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import _compat
from agent.core.backoff import Backoff
from agent.core.config import MqttConfig
from agent.link.intake import CommandIntake
from agent.link.linkreport import LinkReporter, OutboxSyncer, leaves
from agent.link.linkstate import (
    QUICK_DROP_S,
    AvailabilityGuard,
    SessionCounter,
    abort_without_disconnect,
    availability,
)
from agent.link.messages import Kind, Outgoing, encode, is_queued
from agent.link.outbox import Outbox
from agent.link.pump import WINDOW, drain_outbox
from agent.link.tls import broker_context
from agent.logs import Log

SESSION_TAKEN_OVER = 0x8E
CONNECT_TIMEOUT_S = 10.0  # at most; less with a short keepalive (see _client)
STOP_TIMEOUT_S = 2.0
HEARTBEAT_S = 5.0
INCOMING_BACKSTOP = 4096


T = TypeVar("T")


class _Stopped(Exception):
    """Raised inside an attempt to end it because stop() was called."""


class MqttLink:
    """One agent's broker link; `run()` once, `stop()` to end it, then `close()`.

    Callbacks: `on_command(payload)` is awaited by the bounded intake's workers
    (`agent.link.intake`: what does not fit is dropped and counted; one that raises is logged). `on_link_error(code, message)` is called
    when the link's condition changes, `(None, None)` once connected and healthy. `heartbeat()`
    is called at least every 5 s while run()'s loops are alive (longer only inside a connect
    bounded by its timeout). `next_seq` and `now` number and stamp the events the link makes
    itself (`outbox_full`, `commands_dropped`).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        uid: str,
        state_dir: Path,
        *,
        on_command: Callable[[bytes], Awaitable[None]],
        next_seq: Callable[[], int],
        now: Callable[[], float],
        log: Log,
        rng: random.Random,
        heartbeat: Callable[[], None] | None = None,
        on_link_error: Callable[[str | None, str | None], None] | None = None,
        max_packet_bytes: int = 65536 + 1024,
        session_expiry_s: int = 3600,
    ) -> None:
        self._cfg, self._uid, self._log, self._rng = cfg, uid, log, rng
        self._now, self._heartbeat = now, heartbeat or (lambda: None)
        self._max_packet, self._expiry = max_packet_bytes, session_expiry_s
        self._root = f"{cfg.topic_prefix.rstrip('/')}/{uid}"
        self._t_avail, self._t_commands = f"{self._root}/availability", f"{self._root}/commands"
        self._sessions = SessionCounter(state_dir)
        self._outbox = Outbox(state_dir / "outbox", cfg.outbox_max_bytes)
        if self._outbox.torn_bytes:
            log.warning("outbox.torn_tail", bytes=self._outbox.torn_bytes)
        self._tls: ssl.SSLContext | None = None
        self._connected = self._stopping = self._running = False
        self._offline_on_stop = True
        self._wake, self._stop_event, self._done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._health: Outgoing | None = None
        self._republish_online = False
        self._guard = AvailabilityGuard(log)
        self._online_timer: asyncio.TimerHandle | None = None
        self._syncer = OutboxSyncer(self._outbox)
        self._run_task: asyncio.Task[object] | None = None
        self._reporter = LinkReporter(
            uid,
            log,
            send_event=lambda event: self.send(Kind.EVENT, "events", event),
            next_seq=next_seq,
            now=now,
            on_link_error=on_link_error,
        )
        dropped = functools.partial(self._reporter.error, "commands_dropped")
        self._intake = CommandIntake(on_command, report=dropped, log=log)
        # aiomqtt notices a socket closed before CONNACK only by this timeout; a broker that
        # cannot answer within two keepalives is as dead as one missing pings. It also
        # bounds SUBACKs and the PUBACKs of `online` and health.
        self._call_timeout = min(CONNECT_TIMEOUT_S, max(2.0, 2.0 * cfg.keepalive_s))

    # -- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def session(self) -> int:
        return self._sessions.value

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def uid_conflict(self) -> bool:
        return self._reporter.condition.conflict is not None

    @property
    def last_error(self) -> tuple[str, str] | None:
        """The link's current trouble as `(code, message)`, None when healthy."""
        return self._reporter.condition.error

    def send(self, kind: Kind, subtopic: str, payload: dict[str, Any]) -> None:
        """Publish `payload` as compact JSON: QoS 1 kinds are in the outbox when this returns;
        health goes out only while connected. ValueError for values that are not JSON."""
        seq = payload.get("seq")
        msg = Outgoing(kind, subtopic, encode(payload), seq if isinstance(seq, int) else 0)
        if not is_queued(kind):
            if self._connected and not self._stopping:
                self._health = msg  # one slot: a sample waiting behind a backlog is replaced
                self._wake.set()
            return
        self._outbox.put(msg)
        self._syncer.schedule(urgent=kind in (Kind.STATUS, Kind.REPLY))
        self._wake.set()

    async def stop(self, publish_offline: bool = True) -> None:
        """Publish `offline` (bounded wait for its PUBACK), disconnect cleanly and end run().

        With `publish_offline=False` the connection is dropped without a DISCONNECT, so the
        broker publishes the will instead.
        """
        self._stopping, self._offline_on_stop = True, publish_offline
        self._stop_event.set()
        if not self._running:
            return
        # A connect in progress is not cancelled but waited for (it is bounded by its
        # timeout): cancelling inside aiomqtt's connect leaves callbacks that crash later.
        try:
            async with _compat.timeout(STOP_TIMEOUT_S + CONNECT_TIMEOUT_S):
                await self._done.wait()
        except TimeoutError:
            if self._run_task is not None:
                self._run_task.cancel()
            await self._done.wait()

    def close(self) -> None:
        """Release the outbox files; call once run() has returned."""
        self._syncer.cancel()
        self._outbox.close()

    async def run(self) -> None:
        """Connect, serve and reconnect until stop() or cancellation."""
        if self._running:
            raise RuntimeError("MqttLink.run() is already running")
        self._running, self._run_task = True, asyncio.current_task()
        self._done.clear()
        self._intake.start()
        backoff = Backoff(1.0, self._cfg.max_backoff_s, self._rng)
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                self._heartbeat()
                # No check of Task.cancelling() here: on 3.11 a TaskGroup whose child fails
                # leaves its parent's count raised (fixed in 3.12), so it cannot be trusted.
                lasted = await self._attempt()
                if self._stopping:
                    break
                if lasted is not None and lasted >= QUICK_DROP_S:
                    backoff.reset()
                delay = backoff.next_delay()
                self._log.info("mqtt.retry", delay_s=round(delay, 2))
                deadline = loop.time() + delay
                while not self._stopping and (left := deadline - loop.time()) > 0:
                    with contextlib.suppress(TimeoutError):
                        async with _compat.timeout(min(left, HEARTBEAT_S)):
                            await self._stop_event.wait()
                    self._heartbeat()
        finally:
            self._running = self._connected = False
            await self._intake.stop()
            self._outbox.sync()
            self._done.set()

    # -- one connection --------------------------------------------------------------------

    async def _attempt(self) -> float | None:
        """One connection; returns how long it was up, or None if it never came up."""
        loop = asyncio.get_running_loop()
        try:
            client = await self._client()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._reporter.failed(
                "broker_unreachable", f"mqtt setup failed: {exc}", connected=False
            )
            return None
        connected_at: float | None = None
        try:
            async with client:
                connected_at = loop.time()
                try:
                    await self._serve(client)
                except BaseException:
                    if not (self._stopping and self._offline_on_stop):
                        # cancelled, failed or told to: let the will fire
                        abort_without_disconnect(client._client.socket())
                    raise
        except BaseException as exc:  # except* _Stopped / MqttError / Exception, for 3.10
            _, rest = _compat.split(exc, _Stopped)
            lost, rest = _compat.split(rest, aiomqtt.MqttError)
            if lost is not None:
                errors = leaves(lost)
                if connected_at is None:
                    code = "broker_refused" if isinstance(errors[0], MqttConnectError) else None
                    where = f"{self._cfg.host}:{self._cfg.port}"
                    self._reporter.failed(
                        code or "broker_unreachable",
                        f"cannot connect to {where}: {errors[0]}",
                        connected=False,
                    )
                elif not self._stopping:
                    self._lost(errors, loop.time() - connected_at)
            bug, rest = _compat.split(rest, Exception)  # a bug costs a reconnect, not the agent
            if bug is not None:
                leaf = leaves(bug)[0]
                self._log.error("mqtt.attempt_failed", error=repr(leaf), exc_info=leaf)
            if rest is exc:
                raise
            if rest is not None:
                raise rest from None
        finally:
            self._connected = False
            self._health = None
            if connected_at is None:
                # aiomqtt leaves the socket of a connect that timed out or was cancelled open,
                # its reader and keepalive task alive. paho's own close unregisters them without
                # running the disconnect callback, which crashes on the cancelled CONNACK wait.
                client._client._sock_close()
        return None if connected_at is None else loop.time() - connected_at

    async def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        if cfg.tls and self._tls is None:
            self._tls = await broker_context(cfg.ca_file, cfg.client_cert_file, cfg.client_key_file)
        password = None
        if cfg.password_file is not None:
            password = (await asyncio.to_thread(cfg.password_file.read_text)).strip()
        await self._sessions.advance_and_save(self._log)
        will = aiomqtt.Will(self._t_avail, self._availability("offline"), qos=1, retain=True)
        common: dict[str, Any] = {
            "identifier": self._uid,
            "username": cfg.username,
            "password": password,
            "keepalive": cfg.keepalive_s,
            "will": will,
            "tls_context": self._tls,
            "timeout": self._call_timeout,
            # Neither paho nor aiomqtt sets TCP_NODELAY: each small publish that follows an
            # unacknowledged one then waits for the broker's 40 ms delayed ACK (measured:
            # 88 ms per command round trip instead of 2 ms, benchmarks/roundtrip.py).
            "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            # A backstop: the read loop empties aiomqtt's queue into the bounded intake; only
            # a persistent session's backlog waits here, for the SUBACK (aiomqtt drops beyond).
            "max_queued_incoming_messages": INCOMING_BACKSTOP,
        }
        if cfg.protocol == "3.1.1":
            v311 = aiomqtt.ProtocolVersion.V311
            client = aiomqtt.Client(
                cfg.host, cfg.port, protocol=v311, clean_session=False, **common
            )
        else:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
            props.SessionExpiryInterval = self._expiry
            # The broker then drops oversized commands instead of making us buffer them.
            props.MaximumPacketSize = self._max_packet
            v5 = aiomqtt.ProtocolVersion.V5
            client = aiomqtt.Client(
                cfg.host, cfg.port, protocol=v5, clean_start=False, properties=props, **common
            )
        client.pending_calls_threshold = WINDOW + 10  # aiomqtt warns above 10 by default
        return client

    async def _serve(self, client: aiomqtt.Client) -> None:
        t = self._call_timeout
        if not self._stopping:  # stop() during the connect: only `offline` is left to say
            online = self._availability("online")
            await _acked(client.publish(self._t_avail, online, 1, True, timeout=math.inf), t)
        topics = [(self._t_commands, 1), (self._t_avail, 1)]
        granted = await _acked(client.subscribe(topics, timeout=math.inf), t)
        if any(isinstance(g, ReasonCode) and g.is_failure for g in granted):
            self._log.error("mqtt.subscribe_refused", reasons=[str(g) for g in granted])
        self._connected = True
        self._reporter.connected()
        self._log.info("mqtt.connected", session=self.session, pending=len(self._outbox))
        loop = asyncio.get_running_loop()
        # A conflicting client kicks us within its own backoff (<= max_backoff_s): a
        # connection that outlives twice that clears the conflict.
        calm = loop.call_later(2 * self._cfg.max_backoff_s + QUICK_DROP_S, self._calm)
        try:
            async with _compat.TaskGroup() as tg:
                tg.create_task(self._read(client))
                tg.create_task(self._drain(client))
                tg.create_task(self._watch_stop(client))
        finally:
            calm.cancel()

    async def _read(self, client: aiomqtt.Client) -> None:
        # The only task always waiting on the connection: it is how a lost one is noticed.
        # It never waits on a command: each goes to the bounded intake or is dropped there.
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.value == self._t_commands:
                self._intake.offer(payload)
            elif message.topic.value == self._t_avail and self._guard.seen(payload, self.session):
                self._republish_online = True
                self._wake.set()

    async def _drain(self, client: aiomqtt.Client) -> None:
        timeout = max(30.0, 3.0 * self._cfg.keepalive_s)

        async def publish(msg: Outgoing) -> None:
            topic = f"{self._root}/{msg.subtopic}"
            await _acked(
                client.publish(topic, msg.payload, 1, msg.retain, timeout=math.inf), timeout
            )

        async def before() -> None:
            if self._republish_online and not self._stopping:
                await self._say_online(client)
            if self._health is not None:
                health, self._health = self._health, None
                topic = self._root + "/" + health.subtopic
                call = client.publish(topic, health.payload, self._cfg.health_qos, timeout=math.inf)
                await _acked(call, self._call_timeout)
            self._reporter.outbox_drops(self._outbox, asyncio.get_running_loop().time())

        await drain_outbox(self._outbox, publish, before=before, wake=self._wake)

    async def _watch_stop(self, client: aiomqtt.Client) -> None:
        # Also the connection's heartbeat: the drain may wait long on PUBACKs of a slow
        # broker, which is no reason for the watchdog to restart us.
        while not self._stop_event.is_set():
            self._heartbeat()
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(HEARTBEAT_S):
                    await self._stop_event.wait()
        if self._offline_on_stop:
            try:
                offline = self._availability("offline")
                call = client.publish(self._t_avail, offline, 1, True, timeout=math.inf)
                await _acked(call, STOP_TIMEOUT_S)
            except aiomqtt.MqttError as exc:
                self._log.warning("mqtt.offline_not_acknowledged", error=str(exc))
        raise _Stopped

    async def _say_online(self, client: aiomqtt.Client) -> None:
        """Answer what the availability guard flagged with `online`, at its pace."""
        loop = asyncio.get_running_loop()
        if (wait := self._guard.due(loop.time())) > 0:
            if self._online_timer is None or self._online_timer.when() <= loop.time():
                self._online_timer = loop.call_later(wait, self._wake.set)
            return
        self._republish_online = False
        self._log.info("mqtt.self_heal", session=self.session)
        self._guard.published(loop.time())
        call = client.publish(
            self._t_avail, self._availability("online"), 1, True, timeout=math.inf
        )
        await _acked(call, self._call_timeout)

    def _availability(self, state: str) -> bytes:
        return availability(state, self.session, self._now())

    def _lost(self, errors: list[BaseException], lasted: float) -> None:
        # aiomqtt raises "Disconnected during message iteration" from the paho disconnect
        # error, whose `rc` carries the broker's DISCONNECT reason code (MQTT 5).
        causes = [e.__cause__ if isinstance(e.__cause__, Exception) else e for e in errors]
        codes = [getattr(c, "rc", None) for c in causes]
        self._log.warning("mqtt.lost", error=str(causes[0]), after_s=round(lasted, 2))
        taken_over = any(
            isinstance(rc, ReasonCode) and rc.value == SESSION_TAKEN_OVER for rc in codes
        )
        now = asyncio.get_running_loop().time()
        self._reporter.lost(
            taken_over=taken_over, lasted=lasted, now=now, connected=self._connected
        )

    def _calm(self) -> None:
        self._reporter.calm(connected=self._connected)


async def _acked(call: Awaitable[T], timeout: float) -> T:
    """Await an aiomqtt call made with `timeout=math.inf`, bounded by `timeout` here.

    aiomqtt bounds waits with asyncio.wait_for, which on 3.11 swallows a cancel that lands in
    the same loop iteration as the broker's answer (CPython gh-86296): a link cancelled just
    as its SUBACK arrived ran on. A timeout here has no such hole.
    """
    try:
        async with _compat.timeout(timeout):
            return await call
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out") from None
    finally:
        # On 3.10 the timeout backport enters through an await of its own, so a cancel can
        # land before `call` ever started; close it rather than leave it never awaited.
        if isinstance(call, Coroutine):
            call.close()
