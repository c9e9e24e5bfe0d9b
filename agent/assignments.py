"""Where assignments come from: the controller, the ``assignment_file``, and a lost state.

`AssignmentSource` registers with the controller and polls the assignment (jittered, or at
once when ``sync-assignment`` asks), reads the local ``assignment_file``, and validates what
arrives before the lifecycle sees it. Controller errors become lifecycle errors and
``registration``/``error`` events here. When the agent's own state was lost, the host is asked
what is already done first (`HostFacts`), and the lifecycle gets a `HostRecovered` event
instead of a bare assignment, so finished steps are not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent import __version__, _compat
from agent.commands.dispatcher import CommandFailed
from agent.core import lifecycle as lc
from agent.core.assignment import Assignment, AssignmentError, parse_assignment
from agent.core.codes import CONTROLLER_CODES, ErrorCode
from agent.core.config import Config
from agent.core.recovery import HostFacts, recovery_reason
from agent.driver import LifecycleDriver
from agent.host.hostroot import HostRoot, arch
from agent.host.kubelet import kubelet_version
from agent.host.metrics import host_addresses
from agent.logs import Log
from agent.outbound import Outbound
from agent.state.record import Record

if TYPE_CHECKING:
    from agent.link.controller import ControllerClient

_REREGISTERED = "registered again: the controller refused the host token"


def load_assignment_file(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


class AssignmentSource:
    def __init__(
        self,
        config: Config,
        *,
        uid: str,
        host: HostRoot,
        driver: LifecycleDriver,
        out: Outbound,
        record: Record,
        services: Callable[[tuple[str, ...]], Awaitable[dict[str, str]]],
        rng: random.Random,
        now: Callable[[], float],
        heartbeat: Callable[[], None],
        log: Log,
    ) -> None:
        self._config = config
        self.on_error_seen: Callable[[str], None] | None = None  # the metrics tally's
        self._uid = uid
        self._host = host
        self._driver = driver
        self._out = out
        self._record = record
        self._services = services
        self._rng = rng
        self._now = now
        self._heartbeat = heartbeat
        self._log = log
        self._sync = asyncio.Event()
        self._recovery: asyncio.Task[None] | None = None
        self._held: Assignment | None = None
        self.controller: ControllerClient | None = None
        if config.controller is not None:
            # Imported here: a host without a controller never loads httpx.
            from agent.link.controller import ControllerClient

            self.controller = ControllerClient(
                config.controller,
                config.state_dir,
                log=log,
                rng=rng,
                on_error=self._on_controller_error,
                on_recovered=self._on_controller_recovered,
                uid=uid,
                sleep=self._sleep,
            )

    def configure(self, config: Config) -> None:
        """A reload (the controller section itself needs a restart)."""
        self._config = config

    # ---- offers -----------------------------------------------------------------------------
    def offer(self, doc: object, source: str) -> Assignment | None:
        try:
            a = parse_assignment(doc)
        except AssignmentError as e:
            self._log.error("assignment.invalid", source=source, error=str(e))
            self._out.error(ErrorCode.BAD_ASSIGNMENT, str(e))
            self._driver.post(lc.AssignmentInvalid(str(e)))
            return None
        if self._must_recover():
            self._held = a  # the latest offered is the one acted on once the host is asked
            if self._recovery is None:
                self._recovery = asyncio.get_running_loop().create_task(
                    self._recover_from_host(), name="recover-from-host"
                )
            return a
        self._driver.post(lc.AssignmentArrived(a))
        return a

    def offer_file(self) -> None:
        path = self._config.assignment_file
        if path is None:
            return
        try:
            doc = load_assignment_file(path)
        except (OSError, ValueError, yaml.YAMLError) as e:
            msg = f"cannot read assignment_file {path}: {e}"
            self._out.error(ErrorCode.BAD_ASSIGNMENT, msg)
            self._driver.post(lc.AssignmentInvalid(msg))
            return
        self.offer(doc, str(path))

    # ---- a lost state -------------------------------------------------------------------------
    def _must_recover(self) -> bool:
        st = self._driver.state
        return (
            self._record.must_recover
            and st.assignment is None
            and st.phase in (lc.Phase.STARTING, lc.Phase.REGISTERING, lc.Phase.AWAITING_ASSIGNMENT)
        )

    async def _recover_from_host(self) -> None:
        """The state was lost: ask the host what is already done before acting on the
        assignment, so finished steps are not run again (`agent.core.recovery`)."""
        a = self._held
        assert a is not None
        try:
            kubelet = (await self._services(("kubelet",)))["kubelet"]
            node = self._host.ssm_node_name() if a.credential_provider == "ssm" else None
            facts = HostFacts(
                self._host.tracker_present(),
                kubelet,
                node or a.node_name_hint,
                kubelet_version=await kubelet_version(self._host),
            )
        except Exception as e:  # noqa: BLE001 - without facts, a fresh join is still right
            self._log.error("state.host_facts_failed", error=str(e))
            facts = HostFacts(tracker=False, kubelet="unknown", node_name=None)
        reason = recovery_reason(a, facts)
        self._log.warning("state.recovered_from_host", reason=reason)
        self._out.error(ErrorCode.STATE_LOST, f"the state was lost; {reason}")
        self._record.recovered()
        # The latest assignment offered while the host was being asked is the one acted on.
        latest = self._held
        assert latest is not None
        self._driver.post(lc.HostRecovered(a, facts))
        if latest is not a:
            self._driver.post(lc.AssignmentArrived(latest))
        self._recovery = None

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()  # the marker stays in the state: the next start asks
            await asyncio.wait([self._recovery])

    # ---- the controller -----------------------------------------------------------------------
    def register_body(self) -> dict[str, Any]:
        osr = self._host.os_release()
        return {
            "uid": self._uid,
            "hostname": self._host.hostname(),
            "mode": self._config.host.mode,
            "agent_version": __version__,
            "os": {
                "id": osr.id if osr else "",
                "version_id": osr.version_id if osr else "",
                "pretty_name": osr.pretty_name if osr else "",
            },
            "arch": arch(),
            "addresses": list(host_addresses()),
            "labels": dict(self._config.host.labels),
        }

    async def controller_loop(self) -> None:
        from agent.link.controller import ControllerError

        ctl = self.controller
        assert ctl is not None
        reg = await ctl.register(self.register_body())
        self._note_registered("registered with the controller")
        if reg.assignment is not None:
            self.offer(reg.assignment, "registration")
        etag: str | None = None
        while True:
            self._heartbeat()
            with contextlib.suppress(TimeoutError):
                poll = self._config.controller.assignment_poll_s if self._config.controller else 30
                # Jittered so a fleet registered in one burst does not poll in one burst.
                async with _compat.timeout(poll * self._rng.uniform(0.8, 1.2)):
                    await self._sync.wait()
            self._sync.clear()
            try:
                fetch = await ctl.poll_assignment(self.register_body, etag)
            except ControllerError:
                continue  # on_error already recorded it; the persisted assignment still holds
            if fetch.registration is not None:
                self._note_registered(_REREGISTERED)
            if fetch.status == "changed" and fetch.body is not None:
                etag = fetch.etag
                self.offer(fetch.body, "controller")

    async def sync(self) -> dict[str, Any]:
        """The ``sync-assignment`` command: fetch now, and say which revision is current."""
        if self.controller is not None:
            from agent.link.controller import ControllerError

            try:
                fetch = await self.controller.poll_assignment(self.register_body, None)
            except ControllerError as e:
                raise CommandFailed(e.code, e.message) from e
            if fetch.registration is not None:
                self._note_registered(_REREGISTERED)
            if fetch.status == "changed" and fetch.body is not None:
                self.offer(fetch.body, "controller")
        else:
            self.offer_file()
        # Every event posted above has been taken once the lifecycle reaches this one.
        await self._driver.settled()
        a = self._driver.state.assignment
        return {"revision": a.revision if a else None}

    async def _sleep(self, seconds: float) -> None:
        """The controller client's backoff, in slices that each stamp the loop's heartbeat:
        a long Retry-After or an outage is a loop waiting, not a loop stuck."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            self._heartbeat()
            await asyncio.sleep(min(left, 10.0))
        self._heartbeat()

    def _note_registered(self, message: str) -> None:
        """A registration succeeded (at start, or again after a 401): an event says so."""
        self._out.emit("registration", {"state": "registered", "message": message})
        self._driver.post(lc.Registered())

    def _on_controller_error(self, code: str, message: str) -> None:
        if self.on_error_seen is not None:
            self.on_error_seen(code)
        last = self._driver.state.last_error
        if last is None or last.code != code:
            self._out.emit(
                "registration" if code != ErrorCode.CONTROLLER_UNREACHABLE else "error",
                {"state": "failed", "code": code, "message": message},
            )
        self._driver.post(lc.ErrorSeen(code, message))

    def _on_controller_recovered(self) -> None:
        for code in CONTROLLER_CODES:
            self._driver.post(lc.ErrorCleared(code))


__all__ = ["AssignmentSource", "load_assignment_file"]
