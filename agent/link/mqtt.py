"""The broker link: the agent's only MQTT client, and the only module that imports aiomqtt.

`MqttLink.run()` connects forever with a fresh `aiomqtt.Client` per attempt (reusing one has
broken repeatedly upstream: aiomqtt #244, #269, #288) and full-jitter backoff. Each connect
raises the availability `session` counter kept in `state_dir`, sets the will `offline` for
that session, publishes `online`, subscribes to its commands and its own availability, then
drains the outbox in order with a window of QoS 1 publishes, acknowledging each message only
when aiomqtt's publish returns (the PUBACK). The session is persistent (MQTT 5: clean start
off and a session expiry; 3.1.1: clean session off), so commands sent while the agent is away
arrive on reconnect; paho acknowledges them before our handler runs, so deduplication belongs
to the command ledger. Link trouble is reported through `on_link_error(code, message)`, called
only when the condition changes, with `(None, None)` once healthy again: `broker_unreachable`
(a connect attempt failed, including TLS or password file problems), `broker_refused` (the
broker's CONNACK refused us) and `uid_conflict` (another client keeps taking our session);
`agent.link.linkstate` keeps that condition, the session counter and the availability payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from agent.core.timefmt import iso
from agent.link.linkstate import (
    QUICK_DROP_S,
    LinkCondition,
    SessionCounter,
    availability,
    stale_offline,
)
from agent.link.messages import Kind, Outgoing, describe_drops, encode, is_queued
from agent.link.outbox import Outbox
from agent.link.tls import client_context

SESSION_TAKEN_OVER = 0x8E
WINDOW = 20  # QoS 1 publishes in flight: paho's default and Mosquitto's receive maximum
CONNECT_TIMEOUT_S = 10.0  # at most; less with a short keepalive (see _client)
STOP_TIMEOUT_S = 2.0
SYNC_DELAY_S = 0.05  # outbox fsync batching window
DROP_REPORT_S = 60.0  # at most one outbox_full event per minute while connected
HEARTBEAT_S = 5.0


T = TypeVar("T")


class _Stopped(Exception):
    """Raised inside an attempt to end it because stop() was called."""


class MqttLink:
    """One agent's broker link; `run()` once, `stop()` to end it, then `close()`.

    Callbacks: `on_command(payload)` is awaited in a task of its own per message (it should
    hand off and return; one that raises is logged). `on_link_error(code, message)` is called
    when the link's condition changes, `(None, None)` once connected and healthy. `heartbeat()`
    is called at least every 5 s while run()'s loops are alive (longer only inside a connect
    bounded by its timeout). `next_seq` and `now` number and stamp the events the link makes
    itself (`outbox_full`).
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
        log: Any,
        rng: random.Random,
        heartbeat: Callable[[], None] | None = None,
        on_link_error: Callable[[str | None, str | None], None] | None = None,
        max_packet_bytes: int = 65536 + 1024,
        session_expiry_s: int = 3600,
    ) -> None:
        self._cfg, self._uid, self._log, self._rng = cfg, uid, log, rng
        self._on_command, self._next_seq, self._now = on_command, next_seq, now
        self._heartbeat = heartbeat or (lambda: None)
        self._on_link_error = on_link_error
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
        self._handlers: set[asyncio.Task[None]] = set()
        self._sync_handle: asyncio.TimerHandle | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._condition = LinkCondition(uid)
        self._last_drop_report = -DROP_REPORT_S
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
        return self._condition.conflict is not None

    @property
    def last_error(self) -> tuple[str, str] | None:
        """The link's current trouble as `(code, message)`, None when healthy."""
        return self._condition.error

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
        self._schedule_sync(urgent=kind in (Kind.STATUS, Kind.REPLY))
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
        if self._sync_handle is not None:
            self._sync_handle.cancel()
        self._outbox.close()

    async def run(self) -> None:
        """Connect, serve and reconnect until stop() or cancellation."""
        if self._running:
            raise RuntimeError("MqttLink.run() is already running")
        self._running, self._run_task = True, asyncio.current_task()
        self._done.clear()
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
            for task in self._handlers:
                task.cancel()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=1.0)
            self._outbox.sync()
            self._done.set()

    # -- one connection --------------------------------------------------------------------

    async def _attempt(self) -> float | None:
        """One connection; returns how long it was up, or None if it never came up."""
        loop = asyncio.get_running_loop()
        try:
            client = await self._client()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed("broker_unreachable", f"mqtt setup failed: {exc}")
            return None
        connected_at: float | None = None
        try:
            async with client:
                connected_at = loop.time()
                try:
                    await self._serve(client)
                except BaseException:
                    if not (self._stopping and self._offline_on_stop):
                        _abort(client)  # cancelled, failed or told to: let the will fire
                    raise
        except BaseException as exc:  # except* _Stopped / MqttError / Exception, for 3.10
            _, rest = _compat.split(exc, _Stopped)
            lost, rest = _compat.split(rest, aiomqtt.MqttError)
            if lost is not None:
                leaves = _leaves(lost)
                if connected_at is None:
                    code = "broker_refused" if isinstance(leaves[0], MqttConnectError) else None
                    where = f"{self._cfg.host}:{self._cfg.port}"
                    self._failed(
                        code or "broker_unreachable", f"cannot connect to {where}: {leaves[0]}"
                    )
                elif not self._stopping:
                    self._lost(leaves, loop.time() - connected_at)
            # A bug must cost a reconnect, not the agent.
            bug, rest = _compat.split(rest, Exception)
            if bug is not None:
                leaf = _leaves(bug)[0]
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
            # load_cert_chain reads files: ~25 ms off the loop, once per link.
            self._tls = await asyncio.to_thread(_tls_context, cfg)
        password = None
        if cfg.password_file is not None:
            password = (await asyncio.to_thread(cfg.password_file.read_text)).strip()
        self._sessions.advance()
        try:
            await asyncio.to_thread(self._sessions.save)
        except OSError as exc:
            self._log.warning("mqtt.session_not_saved", error=str(exc))
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
        self._condition.connected()
        self._last_drop_report = -DROP_REPORT_S
        self._log.info("mqtt.connected", session=self.session, pending=len(self._outbox))
        self._report()
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
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.value == self._t_commands:
                task = asyncio.create_task(self._handle(payload))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
            elif message.topic.value == self._t_avail:
                self._check_availability(payload)

    async def _drain(self, client: aiomqtt.Client) -> None:
        window, cursor = asyncio.Semaphore(WINDOW), 0
        publish_timeout = max(30.0, 3.0 * self._cfg.keepalive_s)
        async with _compat.TaskGroup() as tg:
            while True:
                if self._republish_online and not self._stopping:
                    self._republish_online = False
                    payload = self._availability("online")
                    call = client.publish(self._t_avail, payload, 1, True, timeout=math.inf)
                    await _acked(call, self._call_timeout)
                if self._health is not None:
                    health, self._health = self._health, None
                    qos = self._cfg.health_qos
                    topic = self._root + "/" + health.subtopic
                    call = client.publish(topic, health.payload, qos, timeout=math.inf)
                    await _acked(call, self._call_timeout)
                self._report_drops()
                batch = self._outbox.peek(2 * WINDOW, after=cursor)
                if not batch:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                for msg in batch:
                    await window.acquire()
                    cursor = msg.id
                    if not self._outbox.is_pending(msg.id):  # dropped meanwhile
                        window.release()
                        continue
                    # Tasks start in creation order, so paho sends in outbox order.
                    tg.create_task(self._deliver(client, msg, window, publish_timeout))

    async def _deliver(
        self, client: aiomqtt.Client, msg: Outgoing, window: asyncio.Semaphore, timeout: float
    ) -> None:
        try:
            topic = f"{self._root}/{msg.subtopic}"
            await _acked(
                client.publish(topic, msg.payload, 1, msg.retain, timeout=math.inf), timeout
            )
        finally:
            window.release()
        self._outbox.ack(msg.id)

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

    async def _handle(self, payload: bytes) -> None:
        try:
            await self._on_command(payload)
        except Exception as exc:  # noqa: BLE001 - the handler's failure must not end the link
            self._log.error("mqtt.command_handler_failed", error=repr(exc))

    def _check_availability(self, payload: bytes) -> None:
        stale = stale_offline(payload, self.session)
        if stale is not None and not self._stopping:
            self._log.info("mqtt.self_heal", stale_session=stale, session=self.session)
            self._republish_online = True
            self._wake.set()

    # -- bookkeeping -----------------------------------------------------------------------

    def _availability(self, state: str) -> bytes:
        return availability(state, self.session, self._now())

    def _schedule_sync(self, *, urgent: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._outbox.sync()
            return
        if urgent or self._sync_handle is None:
            if self._sync_handle is not None:
                self._sync_handle.cancel()
            self._sync_handle = loop.call_later(0 if urgent else SYNC_DELAY_S, self._sync, loop)

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sync_handle = None
        job = self._outbox.begin_sync()
        if job is not None:
            loop.run_in_executor(None, job)  # fdatasync off the loop, on the shared pool

    def _report_drops(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_drop_report < DROP_REPORT_S:
            return
        drops = self._outbox.take_drops()
        if not drops:
            return
        self._last_drop_report = now
        self._log.warning("outbox.full", dropped={str(k): n for k, n in drops.items()})
        event = {"uid": self._uid, "ts": iso(self._now()), "seq": self._next_seq()}
        event |= {"type": "error", "code": "outbox_full", "message": describe_drops(drops)}
        self.send(Kind.EVENT, "events", event)

    def _failed(self, code: str, message: str) -> None:
        self._log.warning("mqtt.connect_failed", code=code, error=message)
        self._condition.connect_failed(code, message)
        self._report()

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
        self._condition.lost(taken_over=taken_over, lasted=lasted, now=now)
        self._report()

    def _calm(self) -> None:
        if self._condition.calm() and self._connected:
            self._log.info("mqtt.uid_conflict_cleared")
        self._report()

    def _report(self) -> None:
        # Only a change of condition is news; the message may vary per attempt.
        if not self._condition.assess(connected=self._connected):
            return
        code, message = self._condition.error or (None, None)
        if code == "uid_conflict":
            self._log.error("mqtt.uid_conflict", message=message)
        if self._on_link_error is not None:
            self._on_link_error(code, message)


async def _acked(call: Awaitable[T], timeout: float) -> T:
    """Await an aiomqtt call made with `timeout=math.inf`, bounded by `timeout` here.

    aiomqtt bounds a call's wait with asyncio.wait_for, which on Python 3.11 swallows a
    cancellation that lands in the same loop iteration as the broker's answer (CPython
    gh-86296, fixed in 3.12): a link cancelled just as its SUBACK arrived ran on, connected,
    and whoever awaited it waited forever. asyncio.timeout has no such hole; `math.inf` makes
    aiomqtt await the answer directly.
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


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    return client_context(cfg.ca_file, cfg.client_cert_file, cfg.client_key_file)


def _leaves(group: _compat.BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a (nested) group, depth first: TaskGroups nest theirs."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, _compat.BaseExceptionGroup) else [exc])
    return out


def _abort(client: aiomqtt.Client) -> None:
    """Drop the connection without a DISCONNECT, so the broker publishes the will.

    aiomqtt's context exit always sends a clean DISCONNECT (which discards the will), and it
    offers no public way to close the socket, hence its paho client's socket.
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
