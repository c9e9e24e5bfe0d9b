"""The one place that wires the agent together: `Agent` owns every part of one host's agent.

It loads state, derives the UID, tells systemd it is ready (before touching the network),
then runs the named loops in one TaskGroup: the lifecycle driver, the broker link, the
controller (register, then poll the assignment), health, periodic status, and the watchdog.
Each loop stamps a heartbeat; the watchdog pings systemd only while all are alive. Nothing
here is module-level, so a thousand `Agent`s can share one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent import __version__, _compat
from agent.commands.dispatcher import Dispatcher
from agent.commands.handlers import build_specs
from agent.commands.ledger import CommandLedger
from agent.commands.signature import load_public_key_file
from agent.configfile import load_config
from agent.core import lifecycle as lc
from agent.core.assignment import Assignment, AssignmentError, parse_assignment
from agent.core.config import Config, ConfigError, ConfigMissing
from agent.core.monotonic import NeverBackwardsClock
from agent.core.timefmt import iso
from agent.driver import Adopt
from agent.host.hostroot import HostRoot, arch, derive_uid
from agent.host.metrics import HealthSampler, host_addresses
from agent.host.notify import Heartbeats, Notifier, watchdog_interval, watchdog_loop
from agent.logs import LevelHolder, make_logger
from agent.state.atomic import write_json
from agent.state.store import RECOVER_FROM_HOST, HostFacts, StateStore, recovered_state
from agent.status import build_status
from agent.work import AgentWork

CONTROLLER_CODES = (
    "controller_unreachable",
    "registration_failed",
    "registration_refused",
    "uid_conflict",
)


class _Stop(Exception):
    """Raised inside the TaskGroup to end every loop once shutdown work is done."""


def load_assignment_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


class Agent(AgentWork):
    agent_version = __version__

    def __init__(
        self,
        config: Config,
        *,
        stdout: TextIO | None = None,
        env: Mapping[str, str] | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._reg_token: tuple[tuple[int, int, int], str] | None = None
        self.env = dict(os.environ if env is None else env)
        self.wall = wall
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.started = time.monotonic()
        # Before the logger: its redactor asks secrets(), which reads these, and the first
        # lines (a damaged state file) are logged before the links exist.
        self.link: Any = None
        self.controller: Any = None
        self.host = HostRoot(config.host.root)
        self.store = StateStore(config.state_dir)
        self.store.ensure_dir()
        loaded = self.store.load()
        self.last_checks: list[dict[str, Any]] = loaded.checks
        self.last_checks_ts = loaded.checks_ts
        self.extra: dict[str, Any] = loaded.extra
        if loaded.lost:
            # Kept in the state until the host has been asked, so a restart before the
            # assignment arrives still asks rather than re-running finished steps.
            self.extra[RECOVER_FROM_HOST] = True
        self.uid = derive_uid(config.host.uid, self.host, config.state_dir)
        self.level = LevelHolder(config.log.level)
        self.log = make_logger(
            level=self.level,
            fmt=config.log.format,
            stream=stdout,
            secrets=self.secrets,
            uid=self.uid,
        )
        for problem in loaded.problems:
            self.log.warning("state.recovered", problem=problem)
        from agent.state.store import SeqCounter

        self.seq = SeqCounter(config.state_dir / "seq")
        self.clock = NeverBackwardsClock(
            config.state_dir / "clock", wall, persist_every_s=min(60.0, config.commands.max_skew_s)
        )
        self.ledger = CommandLedger(
            config.state_dir / "commands.ledger", self.clock, max_skew_s=config.commands.max_skew_s
        )
        if self.ledger.recovered_from_corruption:
            self.log.warning("ledger.recovered", copy=str(self.ledger.corrupt_copy))
        self.heartbeats = Heartbeats()
        self.notifier = Notifier.from_env(self.env, os.getpid())
        self.stop_event = asyncio.Event()
        self.sync_event = asyncio.Event()
        self._lifecycle: asyncio.Task[Any] | None = None
        self.sampler: HealthSampler | None = None
        self.nodeadm_version: str | None = self.extra.get("nodeadm_version")
        self.problems = loaded.problems
        self.storage_error: str | None = None  # the latest failed write to state_dir
        self._storage: lc.LastError | None = None
        self._outbox_storage: lc.LastError | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._held: Assignment | None = None
        policy = lc.Policy(
            auto_join=config.join.auto,
            appliance=config.host.mode == "appliance",
            retry_backoff_s=config.join.retry_backoff_s,
            degraded_after_s=config.health.degraded_after_s,
        )
        self.init_work(loaded.state, policy)
        self.dispatcher = Dispatcher(
            uid=self.uid,
            specs=build_specs(self),
            ledger=self.ledger,
            now=self.clock.now,
            max_bytes=config.commands.max_bytes,
            max_skew_s=config.commands.max_skew_s,
            max_ttl_s=config.commands.max_ttl_s,
            verify=self._verifier(),
            allow_unsigned=config.commands.allow_unsigned,
            send_reply=self.send_reply,
            send_error=lambda code, msg: self.emit("error", {"code": code, "message": msg}),
            external_busy=lambda: self.driver.busy if self.driver.busy != "checks" else None,
            log=self.log,
        )

    # ---- helpers used by every part --------------------------------------------------------
    def secrets(self) -> list[str]:
        out: list[str] = []
        state = getattr(self, "driver", None)
        a = state.state.assignment if state is not None else None
        if a is not None and a.ssm is not None:
            out.append(a.ssm.activation_code)
        token = getattr(self.controller, "host_token", None)
        if token:
            out.append(str(token))
        registration = self._registration_token()
        if registration:
            out.append(registration)
        return out

    def _registration_token(self) -> str | None:
        """The registration token, re-read only when its file changes (it is rotated)."""
        ctl = self.config.controller
        if ctl is None:
            return None
        try:
            st = ctl.registration_token_file.stat()
        except OSError:
            return self._reg_token[1] if self._reg_token else None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._reg_token is None or self._reg_token[0] != stamp:
            try:
                text = ctl.registration_token_file.read_text(errors="replace").strip()
            except OSError:
                text = ""
            self._reg_token = (stamp, text)
        return self._reg_token[1] or None

    def now(self) -> float:
        return self.wall()

    def _verifier(self) -> Callable[[bytes, bytes], bool] | None:
        path = self.config.commands.public_key_file
        if path is None:
            return None
        return load_public_key_file(path).verify

    def stamp(self, name: str) -> None:
        self.heartbeats.stamp(name, time.monotonic())

    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started)

    def base(self) -> dict[str, Any]:
        return {"uid": self.uid, "ts": iso(self.now()), "seq": self.seq()}

    def emit(self, type_: str, fields: dict[str, Any]) -> None:
        payload = {**self.base(), "type": type_, **fields}
        if type_ in ("error", "registration", "assignment"):
            self.log.info("event", **{k: v for k, v in payload.items() if k not in ("uid", "ts")})
        if self.link is not None:
            from agent.link.messages import Kind

            kind = Kind.NODEADM_EVENT if type_ == "nodeadm" else Kind.EVENT
            self.link.send(kind, "events", payload)

    def send_reply(self, reply: dict[str, Any]) -> None:
        payload = {**reply, "ts": iso(self.now()), "seq": self.seq()}
        if self.link is not None:
            from agent.link.messages import Kind

            self.link.send(Kind.REPLY, "replies", payload)

    def status(self) -> dict[str, Any]:
        return build_status(self, seq=self.seq(), ts=iso(self.now()))

    def publish_status(self) -> None:
        status = self.status()
        path = self.config.state_dir / "status.json"
        try:
            write_json(path, status, 0o644)
        except OSError as e:
            if self.storage_failed("cannot write the status", e):
                status = self.status()  # this one already says so
        else:
            if self.storage_recovered():
                status = self.status()
                with contextlib.suppress(OSError):
                    write_json(path, status, 0o644)
        if self.link is not None:
            from agent.link.messages import Kind

            self.link.send(Kind.STATUS, "status", status)
        self.last_status_at = time.monotonic()
        self.notifier.status(str(self.driver.state.phase))

    # ---- a state disk that cannot be written ---------------------------------------------
    def storage_failed(self, what: str, e: OSError) -> bool:
        """Note a failed write to ``state_dir``; True when this is news for the status.

        The agent goes on (memory holds what the disk cannot); the status says so through
        ``last_error`` until a write succeeds again.
        """
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        code = "state_storage_full" if full else "state_storage_failed"
        message = f"{what} in {self.config.state_dir}: {e.strerror or e}"
        self.storage_error = message
        if self._storage is not None and self._storage.code == code:
            return False
        self._storage = lc.LastError(code, message, self.now())
        self.log.error("state.storage_failed", code=code, error=message)
        return True

    def storage_recovered(self) -> bool:
        """A write to ``state_dir`` succeeded; True when that ends a failure."""
        self.storage_error = None
        if self._storage is None:
            return False
        self.log.info("state.storage_recovered", was=self._storage.message)
        self._storage = None
        return True

    def storage_problem(self) -> lc.LastError | None:
        """For the status: the agent's own failed writes, else the outbox's."""
        if self._storage is not None:
            return self._storage
        text = getattr(getattr(self.link, "outbox", None), "storage_error", None)
        if not text:
            self._outbox_storage = None
            return None
        if self._outbox_storage is None or self._outbox_storage.message != text:
            full = any(os.strerror(n) in text for n in (errno.ENOSPC, errno.EDQUOT))
            code = "state_storage_full" if full else "state_storage_failed"
            self._outbox_storage = lc.LastError(code, str(text), self.now())
        return self._outbox_storage

    # ---- the daemon ----------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.config
        self.sampler = HealthSampler(cfg.host.root)
        if cfg.mqtt is not None:
            self.link = self.make_link()
        if cfg.controller is not None:
            self.controller = self.make_controller()
        for problem in self.problems:
            # Said once per start, as an event too: the controller must learn that this
            # host's state was damaged, not only whoever reads the journal.
            self.emit("error", {"code": "state_corrupt", "message": problem})
        self.publish_status()
        self.notifier.ready(status=str(self.driver.state.phase))
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
        if self.controller is not None and self.controller.insecure:
            self.log.warning("controller.insecure", message="controller.url is plain http://")
        orphan = await self.runner.end_orphan()
        if orphan:
            self.emit("error", {"code": "nodeadm_orphan", "message": orphan})
        self.dispatcher.finish_interrupted()
        self.driver.post(lc.Boot(registering=self.controller is not None))
        if cfg.assignment_file is not None:
            self.offer_assignment_file()
        try:
            async with _compat.TaskGroup() as tg:
                self._lifecycle = self._loop(tg, "lifecycle", self.driver.run(), 30)
                if self.link is not None:
                    # The link stamps while connected and while backing off, so an outage of
                    # the broker never looks like a stuck loop to the watchdog.
                    self._loop(tg, "mqtt", self.link.run(), max(120.0, 4.0 * cfg.mqtt.keepalive_s))
                if self.controller is not None:
                    tg.create_task(self.controller_loop(), name="controller")
                interval = cfg.mqtt.health_interval_s if cfg.mqtt else 30.0
                self._loop(tg, "health", self.health_loop(interval), max(60.0, 3 * interval))
                if cfg.mqtt is not None:
                    self._loop(
                        tg,
                        "status",
                        self.status_loop(cfg.mqtt.status_interval_s),
                        max(60.0, 3 * cfg.mqtt.status_interval_s),
                    )
                wd = watchdog_interval(self.env, os.getpid())
                if wd:
                    tg.create_task(
                        watchdog_loop(
                            self.notifier, self.heartbeats, wd, time.monotonic, self._stalled
                        ),
                        name="watchdog",
                    )
                tg.create_task(self._stopper(), name="stopper")
        except BaseException as exc:  # except* _Stop, for 3.10
            _, rest = _compat.split(exc, _Stop)
            if rest is exc:
                raise
            if rest is not None:
                raise rest from None
        await self._close()
        return 0

    def _loop(
        self, tg: _compat.TaskGroup, name: str, coro: Any, max_age: float
    ) -> asyncio.Task[Any]:
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
        # A running nodeadm step is ended and its phase stays persisted: the next start
        # re-runs it (nodeadm tolerates that), rather than holding up a shutdown for minutes.
        # The lifecycle loop goes first (its exit ends the step): were it still running, it
        # would take the step's "canceled" outcome and persist `failed` instead of the phase.
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            await asyncio.wait([self._lifecycle])
        if self._recovery is not None:
            self._recovery.cancel()  # the marker stays in the state: the next start asks
            await asyncio.wait([self._recovery])
        self.driver.cancel_work()
        await self.dispatcher.close()
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.stop(publish_offline=True)
        raise _Stop

    async def _close(self) -> None:
        if self.link is not None:
            self.link.close()  # releases the outbox file once run() has returned
        if self.controller is not None:
            with contextlib.suppress(Exception):
                await self.controller.aclose()
        try:
            self.clock.flush()
        except OSError as e:
            # A full state disk must not turn a clean stop into a crash; the clock file
            # keeps an earlier time, which the ledger's skew margin covers.
            self.log.warning("clock.not_saved", error=str(e))
        self.ledger.close()
        self.persist(self.driver.state)
        self.notifier.close()
        self.log.info("agent.stopped")

    # ---- reload ----------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: apply a new config's live settings, or refuse it and keep the old one."""
        path = self.config.source
        if path is None:
            return
        try:
            new = load_config(path, self.env)
        except (ConfigError, ConfigMissing) as e:
            self.log.error("config.reload_refused", error=str(e))
            self.emit("error", {"code": "config_invalid", "message": f"reload refused: {e}"})
            return
        restart = [
            k
            for k in ("mqtt", "controller", "state_dir", "host")
            if getattr(new, k) != getattr(self.config, k)
        ]
        self.config = new
        self.level.set(new.log.level)
        self.driver.policy = lc.Policy(
            auto_join=new.join.auto,
            appliance=new.host.mode == "appliance",
            retry_backoff_s=new.join.retry_backoff_s,
            degraded_after_s=new.health.degraded_after_s,
        )
        self.log.info("config.reloaded", needs_restart=restart)
        if restart:
            self.emit(
                "error",
                {
                    "code": "config_needs_restart",
                    "message": f"changed {', '.join(restart)}: restart the agent",
                },
            )
        if new.assignment_file is not None:
            self.offer_assignment_file()

    # ---- assignment sources ------------------------------------------------------------------
    def offer_assignment(self, doc: Any, source: str) -> Assignment | None:
        try:
            a = parse_assignment(doc)
        except AssignmentError as e:
            self.log.error("assignment.invalid", source=source, error=str(e))
            self.emit("error", {"code": "bad_assignment", "message": str(e)})
            self.driver.post(lc.AssignmentInvalid(str(e)))
            return None
        if self._must_recover():
            self._held = a  # the latest offered is the one acted on once the host is asked
            if self._recovery is None:
                self._recovery = asyncio.get_running_loop().create_task(
                    self.recover_from_host(), name="recover-from-host"
                )
            return a
        self.driver.post(lc.AssignmentArrived(a))
        return a

    def _must_recover(self) -> bool:
        st = self.driver.state
        return (
            bool(self.extra.get(RECOVER_FROM_HOST))
            and st.assignment is None
            and st.phase in (lc.Phase.STARTING, lc.Phase.REGISTERING, lc.Phase.AWAITING_ASSIGNMENT)
        )

    async def recover_from_host(self) -> None:
        """The state was lost: ask the host what is already done before acting on the
        assignment, so finished steps are not run again (rule: `recovered_state`)."""
        a = self._held
        assert a is not None
        try:
            kubelet = (await self.service_states(("kubelet",)))["kubelet"]
            node = self.host.ssm_node_name() if a.credential_provider == "ssm" else None
            facts = HostFacts(self.host.tracker_present(), kubelet, node or a.node_name_hint)
        except Exception as e:  # noqa: BLE001 - without facts, a fresh join is still right
            self.log.error("state.host_facts_failed", error=str(e))
            facts = HostFacts(tracker=False, kubelet="unknown", node_name=None)
        now = self.now()
        _, reason = recovered_state(self.driver.state, a, facts, now)
        self.log.warning("state.recovered_from_host", reason=reason)
        self.emit("error", {"code": "state_lost", "message": f"the state was lost; {reason}"})
        self.extra.pop(RECOVER_FROM_HOST, None)
        self.driver.post(Adopt(lambda st: recovered_state(st, a, facts, now)[0]))
        assert self._held is not None
        self.driver.post(lc.AssignmentArrived(self._held))
        self._recovery = None

    def offer_assignment_file(self) -> None:
        path = self.config.assignment_file
        assert path is not None
        try:
            doc = load_assignment_file(path)
        except (OSError, ValueError, yaml.YAMLError) as e:
            msg = f"cannot read assignment_file {path}: {e}"
            self.emit("error", {"code": "bad_assignment", "message": msg})
            self.driver.post(lc.AssignmentInvalid(msg))
            return
        self.offer_assignment(doc, str(path))

    def register_body(self) -> dict[str, Any]:
        osr = self.host.os_release()
        return {
            "uid": self.uid,
            "hostname": self.host.hostname(),
            "mode": self.config.host.mode,
            "agent_version": __version__,
            "os": {
                "id": osr.id if osr else "",
                "version_id": osr.version_id if osr else "",
                "pretty_name": osr.pretty_name if osr else "",
            },
            "arch": arch(),
            "addresses": list(host_addresses()),
            "labels": dict(self.config.host.labels),
        }

    async def controller_loop(self) -> None:
        from agent.link.controller import ControllerError

        ctl = self.controller
        reg = await ctl.register(self.register_body())
        self.note_registered("registered with the controller")
        if reg.assignment is not None:
            self.offer_assignment(reg.assignment, "registration")
        etag: str | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                poll = self.config.controller.assignment_poll_s if self.config.controller else 30
                # Jittered so a fleet registered in one burst does not poll in one burst.
                async with _compat.timeout(poll * self.rng.uniform(0.8, 1.2)):
                    await self.sync_event.wait()
            self.sync_event.clear()
            try:
                fetch = await ctl.poll_assignment(self.register_body, etag)
            except ControllerError:
                continue  # on_error already recorded it; the persisted assignment still holds
            if fetch.registration is not None:
                self.note_registered("registered again: the controller refused the host token")
            if fetch.status == "changed" and fetch.body is not None:
                etag = fetch.etag
                self.offer_assignment(fetch.body, "controller")

    def note_registered(self, message: str) -> None:
        """A registration succeeded (at start, or again after a 401): an event says so."""
        self.emit("registration", {"state": "registered", "message": message})
        self.driver.post(lc.Registered())

    def on_controller_error(self, code: str, message: str) -> None:
        last = self.driver.state.last_error
        if last is None or last.code != code:
            self.emit(
                "registration" if code != "controller_unreachable" else "error",
                {"state": "failed", "code": code, "message": message},
            )
        self.driver.post(lc.ErrorSeen(code, message))

    def on_controller_recovered(self) -> None:
        for code in CONTROLLER_CODES:
            self.driver.post(lc.ErrorCleared(code))

    # ---- periodic loops ----------------------------------------------------------------------
    async def status_loop(self, interval: float) -> None:
        # Every change publishes a status (publish_status stamps last_status_at); this loop
        # only fills the silences, so a quiet host sends one every `interval`, not more.
        while True:
            self.stamp("status")
            due = self.last_status_at + interval - time.monotonic()
            if due <= 0:
                self.publish_status()
                continue
            await asyncio.sleep(min(due, 10.0))

    async def health_loop(self, interval: float) -> None:
        while True:
            self.stamp("health")
            try:
                await self.health_once()
            except Exception as e:  # noqa: BLE001 - health must never stop the agent
                self.log.warning("health.failed", error=str(e))
            # ±10 %: agents started together (a site after a power cut) must not sample and
            # publish in lockstep for ever.
            await asyncio.sleep(interval * self.rng.uniform(0.9, 1.1))


__all__ = ["Agent", "load_assignment_file"]
