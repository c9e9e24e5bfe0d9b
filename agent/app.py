"""The application shell: `Agent` builds one host's agent from its parts and runs their loops.

It loads the state, derives the UID, constructs each component with exactly what it needs
(outbound side, storage health, lifecycle driver and effects, assignment source, command
dispatcher and operations, broker link), tells systemd it is ready before touching the
network, then runs the named loops in one TaskGroup: lifecycle, broker link, controller,
health, status, ledger pruning, metrics (when enabled) and the watchdog, which pings systemd
only while every loop stamps its heartbeat. SIGHUP goes to `reload` (agent/reload_config.py).
Nothing here is module-level, so a thousand `Agent`s can share one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, TextIO

from agent import __version__, _compat
from agent.assignments import AssignmentSource
from agent.commands.dispatcher import Dispatcher
from agent.commands.handlers import build_specs
from agent.commands.ledger import CommandLedger, prune_periodically
from agent.core import lifecycle as lc
from agent.core.codes import BROKER_CODES, ErrorCode
from agent.core.config import Config
from agent.driver import LifecycleDriver
from agent.effects import HealthMonitor, LifecycleEffects, service_states, status_loop
from agent.host.hostroot import HostRoot, derive_uid
from agent.host.kubelet import kubelet_version
from agent.host.metrics import HealthSampler
from agent.host.notify import Heartbeats, Notifier, watchdog_interval, watchdog_loop
from agent.logs import LevelHolder, make_logger
from agent.metrics_feed import snapshot as metrics_snapshot
from agent.metrics_feed import start_metrics
from agent.operations import CommandOps
from agent.outbound import Outbound
from agent.reload_config import Reloader, command_key, lifecycle_policy
from agent.secrets import Secrets
from agent.state.clock import NeverBackwardsClock
from agent.state.pidfile import remove_pid_file, write_pid_file
from agent.state.record import Persister, Record
from agent.state.storage import StorageHealth
from agent.state.store import SeqCounter, StateStore
from agent.status import build_status

if TYPE_CHECKING:
    from agent.exporter import MetricsExporter
    from agent.link.mqtt import MqttLink


LEDGER_PRUNE_S = 300.0  # how often expired command ids and their replies are dropped


class _Stop(Exception):
    """Raised inside the TaskGroup to end every loop once shutdown work is done."""


def _controller_max_age(cfg: Config) -> float:
    """The longest silence of a healthy controller loop: a poll wait, then one request
    (httpx bounds each phase by timeout_s: connect, write, read, pool) between two stamps."""
    ctl = cfg.controller
    assert ctl is not None
    return max(120.0, 3 * (1.2 * ctl.assignment_poll_s + 4 * ctl.timeout_s))


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        stdout: TextIO | None = None,
        env: Mapping[str, str] | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.wall = wall
        self._started = wall()
        self.metrics: MetricsExporter | None = None
        rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.rng = rng
        host = HostRoot(config.host.root)
        store = StateStore(config.state_dir)
        store.ensure_dir()
        loaded = store.load()
        self.problems = loaded.problems
        self.record = Record.from_loaded(loaded)
        self.uid = derive_uid(config.host.uid, host, config.state_dir)
        # Before the logger: its redactor asks these, and the first lines (a damaged state
        # file) are logged before the links exist.
        ctl = config.controller
        self.secrets = Secrets(
            ctl.registration_token_file if ctl else None,
            config.mqtt.password_file if config.mqtt else None,
        )
        self.level = LevelHolder(config.log.level)
        self.log = log = make_logger(
            level=self.level,
            fmt=config.log.format,
            stream=stdout,
            secrets=self.secrets,
            uid=self.uid,
        )
        for problem in loaded.problems:
            log.warning("state.recovered", problem=problem)
        self.seq = SeqCounter(config.state_dir / "seq")
        self.clock = NeverBackwardsClock(
            config.state_dir / "clock", wall, persist_every_s=min(60.0, config.commands.max_skew_s)
        )
        self.ledger = CommandLedger(
            config.state_dir / "commands.ledger", self.clock, max_skew_s=config.commands.max_skew_s
        )
        if self.ledger.recovered_from_corruption:
            log.warning("ledger.recovered", copy=str(self.ledger.corrupt_copy))
        self.heartbeats = Heartbeats()
        self.notifier = Notifier.from_env(self.env, os.getpid())
        self.stop_event = asyncio.Event()
        self.storage = StorageHealth(config.state_dir, now=wall, log=log)
        self.out = Outbound(
            uid=self.uid,
            seq=self.seq,
            now=wall,
            status_path=config.state_dir / "status.json",
            build_status=self._status,
            phase=lambda: str(self.driver.state.phase),
            storage=self.storage,
            notifier=self.notifier,
            log=log,
        )
        self._persist = persist = Persister(store, self.record, self.storage)
        self.effects = LifecycleEffects(
            config,
            host=host,
            out=self.out,
            record=self.record,
            save=lambda: persist(self.driver.state),
            now=wall,
            secrets=self.secrets,
            log=log,
        )
        self.driver = LifecycleDriver(
            state=loaded.state,
            policy=lifecycle_policy(config),
            run_step=self.effects.run_step,
            run_checks=self.effects.run_preflight,
            tracker_present=host.tracker_present,
            kubelet_version=lambda: kubelet_version(host),
            persist=persist,
            emit=self.out.emit,
            on_change=lambda _old, _new: self.out.publish_status(),
            now=wall,
            log=log,
            heartbeat=lambda: self.stamp("lifecycle"),
        )
        self.secrets.state = lambda: self.driver.state
        self.health = HealthMonitor(
            config,
            sampler=HealthSampler(config.host.root),
            driver=self.driver,
            out=self.out,
            log=log,
        )
        self.assignments = AssignmentSource(
            config,
            uid=self.uid,
            host=host,
            driver=self.driver,
            out=self.out,
            record=self.record,
            services=lambda units: service_states(self.config.programs.systemctl, units),
            rng=rng,
            now=wall,
            heartbeat=lambda: self.stamp("controller"),
            log=log,
        )
        controller = self.assignments.controller
        self.secrets.host_token = lambda: controller.host_token if controller else None
        self.ops = CommandOps(
            config,
            host=host,
            driver=self.driver,
            effects=self.effects,
            assignments=self.assignments,
            out=self.out,
            record=self.record,
            level=self.level,
            # Late-bound: the dispatcher is built from these operations' command table.
            cancel_command=lambda cid: self.dispatcher.cancel(cid),  # noqa: PLW0108
            secrets=self.secrets,
            log=log,
        )
        key = command_key(config, on_change=self._key_changed)
        self.dispatcher = Dispatcher(
            uid=self.uid,
            specs=build_specs(self.ops, debug_timeout_s=config.nodeadm.debug_timeout_s),
            ledger=self.ledger,
            now=self.clock.now,
            max_bytes=config.commands.max_bytes,
            max_skew_s=config.commands.max_skew_s,
            max_ttl_s=config.commands.max_ttl_s,
            verify=key.verify if key else None,
            allow_unsigned=config.commands.allow_unsigned,
            send_reply=self.out.reply,
            send_error=self.out.error,
            external_busy=lambda: self.driver.busy if self.driver.busy != "checks" else None,
            log=log,
        )
        self.reloader = Reloader(
            config,
            env=self.env,
            key=key,
            key_changed=self._key_changed,
            dispatcher=self.dispatcher,
            driver=self.driver,
            level=self.level,
            parts=(
                self.effects.configure,
                self.health.configure,
                self.assignments.configure,
                self.ops.configure,
            ),
            offer_assignment_file=self.assignments.offer_file,
            out=self.out,
            log=log,
        )
        self.link: MqttLink | None = None

    @property
    def config(self) -> Config:
        """The config in force: the one loaded at start, or the last accepted reload."""
        return self.reloader.config

    # ---- small pieces the parts share ----------------------------------------------------------
    def stamp(self, name: str) -> None:
        self.heartbeats.stamp(name, time.monotonic())

    def _status(self, seq: int, ts: str) -> dict[str, object]:
        return build_status(
            self.driver.state,
            uid=self.uid,
            mode=self.config.host.mode,
            seq=seq,
            ts=ts,
            record=self.record,
            storage=self.storage.problem(),
        )

    def _key_changed(self, fingerprint: str | None, error: str | None) -> None:
        """The key file changed in place: say which key now verifies, or that none does."""
        if error is None:
            self.log.info("commands.key_reloaded", fingerprint=fingerprint)
            return
        self.log.error("commands.key_unusable", error=error)
        self.out.error(ErrorCode.CONFIG_INVALID, f"commands: {error}")

    def _make_link(self) -> MqttLink:
        from agent.link.mqtt import MqttLink

        cfg = self.config
        assert cfg.mqtt is not None
        link = MqttLink(
            cfg.mqtt,
            self.uid,
            cfg.state_dir,
            on_command=self.dispatcher.handle,
            next_seq=self.seq,
            now=self.wall,
            log=self.log,
            rng=self.rng,
            heartbeat=lambda: self.stamp("mqtt"),
            max_packet_bytes=cfg.commands.max_bytes + 1024,
            session_expiry_s=int(cfg.commands.max_ttl_s),
            on_link_error=self._on_link_error,
        )
        self.storage.outbox_error = lambda: link.outbox.storage_error
        self.out.attach(link)
        return link

    def _on_link_error(self, code: str | None, message: str | None) -> None:
        if code is None:
            for c in BROKER_CODES:
                self.driver.post(lc.ErrorCleared(c))
            return
        self.driver.post(lc.ErrorSeen(code, message or code))

    def reload(self) -> None:
        """SIGHUP: apply a new config's live settings, or refuse it and keep the old one."""
        self.reloader.reload()

    # ---- the daemon ----------------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.config
        if cfg.mqtt is not None:
            self.link = self._make_link()
        for problem in self.problems:
            # Said once per start, as an event too: the controller must learn that this
            # host's state was damaged, not only whoever reads the journal.
            self.out.error(ErrorCode.STATE_CORRUPT, problem)
        if cfg.metrics.enabled:
            snap = lambda: metrics_snapshot(  # noqa: E731
                self.uid, self.driver.state, self.wall(), self.record.checks, self.link
            )
            self.metrics = start_metrics(cfg, snap, self.out, self.assignments, self.log)
        self.out.publish_status()
        try:
            write_pid_file(cfg.state_dir, self._started)  # for `edge-agent status`
        except OSError as e:
            self.storage.failed("cannot write the pid file", e)
        self.notifier.ready(status=str(self.driver.state.phase))
        self._announce()
        orphan = await self.effects.runner.end_orphan()
        if orphan:
            self.out.error(ErrorCode.NODEADM_ORPHAN, orphan)
        self.dispatcher.finish_interrupted()
        self.driver.post(lc.Boot(registering=self.assignments.controller is not None))
        if cfg.host.mode == "appliance" and self.driver.state.phase in lc.NODE_PHASES:
            lost = await self.effects.restore_sysctls()
            code = ErrorCode.SYSCTL_NOT_IN_FORCE
            self.driver.post(lc.ErrorSeen(code, lost) if lost else lc.ErrorCleared(code))
        self.assignments.offer_file()
        with _compat.suppress_group(_Stop):  # `except* _Stop`, which 3.10 cannot parse
            async with _compat.TaskGroup() as tg:
                self._loops(tg)
        await self._close()
        return 0

    def _announce(self) -> None:
        cfg = self.config
        self.log.info(
            "agent.started",
            version=__version__,
            phase=str(self.driver.state.phase),
            mode=cfg.host.mode,
            root=str(cfg.host.root),
        )
        if cfg.commands.allow_unsigned:
            self.log.warning(
                "commands.unsigned_allowed",
                message="commands.allow_unsigned is true: for development only",
            )
        controller = self.assignments.controller
        if controller is not None and controller.insecure:
            self.log.warning("controller.insecure", message="controller.url is plain http://")

    def _loops(self, tg: _compat.TaskGroup) -> None:
        cfg = self.config
        self._lifecycle = self._loop(tg, "lifecycle", self.driver.run(), 30)
        if self.link is not None and cfg.mqtt is not None:
            # The link stamps while connected and while backing off, so an outage of the
            # broker never looks like a stuck loop to the watchdog.
            self._loop(tg, "mqtt", self.link.run(), max(120.0, 4.0 * cfg.mqtt.keepalive_s))
        if self.assignments.controller is not None:
            self._loop(
                tg, "controller", self.assignments.controller_loop(), _controller_max_age(cfg)
            )
        interval = cfg.mqtt.health_interval_s if cfg.mqtt else 30.0
        self._loop(
            tg,
            "health",
            self.health.run(interval, lambda: self.stamp("health"), self.rng),
            max(60.0, 3 * interval),
        )
        # Expired command ids and their replies leave memory on a timer, not only at start.
        trim = prune_periodically(
            self.ledger, LEDGER_PRUNE_S, heartbeat=lambda: self.stamp("ledger")
        )
        self._loop(tg, "ledger", trim, 2 * LEDGER_PRUNE_S + 60)
        if cfg.mqtt is not None:
            every = cfg.mqtt.status_interval_s
            self._loop(
                tg,
                "status",
                status_loop(self.out, every, lambda: self.stamp("status")),
                max(60.0, 3 * every),
            )
        if self.metrics is not None:
            run = self.metrics.run(lambda: self.stamp("metrics"))
            self._loop(tg, "metrics", run, max(60.0, 3 * cfg.metrics.interval_s))
        wd = watchdog_interval(self.env, os.getpid())
        if wd:
            tg.create_task(
                watchdog_loop(self.notifier, self.heartbeats, wd, time.monotonic, self._stalled),
                name="watchdog",
            )
        tg.create_task(self._stopper(), name="stopper")

    def _loop(
        self,
        tg: _compat.TaskGroup,
        name: str,
        coro: Coroutine[object, object, None],
        max_age: float,
    ) -> asyncio.Task[None]:
        self.heartbeats.register(name, max_age, time.monotonic())
        return tg.create_task(coro, name=name)

    def _stalled(self, names: list[str]) -> None:
        self.log.error("watchdog.stalled", loops=names)

    def request_stop(self) -> None:
        self.stop_event.set()

    async def _stopper(self) -> None:
        await self.stop_event.wait()
        self.notifier.stopping()
        self.log.info("agent.stopping", phase=str(self.driver.state.phase))
        # A running nodeadm step is left alone and its phase stays persisted. Under systemd
        # its transient unit keeps running and the next agent adopts it; without systemd its
        # process group is ended and the next start re-runs the step (nodeadm tolerates that).
        # The lifecycle loop goes first (its exit ends the step): were it still running, it
        # would take the step's "canceled" outcome and persist `failed` instead of the phase.
        self._lifecycle.cancel()
        await asyncio.wait([self._lifecycle])
        await self.assignments.stop()
        self.driver.cancel_work()
        await self.dispatcher.close()
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.stop(publish_offline=True)
        raise _Stop

    async def _close(self) -> None:
        if self.link is not None:
            self.link.close()  # releases the outbox file once run() has returned
        if self.assignments.controller is not None:
            with contextlib.suppress(Exception):
                await self.assignments.controller.aclose()
        try:
            self.clock.flush()
        except OSError as e:
            # A full state disk must not turn a clean stop into a crash; the clock file
            # keeps an earlier time, which the ledger's skew margin covers.
            self.log.warning("clock.not_saved", error=str(e))
        self.ledger.close()
        if self.metrics is not None:
            self.metrics.close()
        self._persist(self.driver.state)
        with contextlib.suppress(OSError):
            remove_pid_file(self.config.state_dir)
        self.notifier.close()
        self.log.info("agent.stopped")

    # ---- periodic loops --------------------------------------------------------------------------


__all__ = ["Agent"]
