"""What the remote commands do to this agent: `CommandOps` is the `AgentOps` the command units
call (agent/commands/handlers.py).

A ``join``/``upgrade``/``uninstall`` command posts an event to the lifecycle and follows the
phases it leads to, so commands and automatic joins share one path and one nodeadm at a
time. The rest report on the agent or the host, through the component that owns the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from agent import __version__
from agent.assignments import AssignmentSource
from agent.commands.dispatcher import CommandFailed, Progress
from agent.core import lifecycle as lc
from agent.core.checks import CheckResult
from agent.core.config import Config
from agent.driver import LifecycleDriver
from agent.effects import LifecycleEffects
from agent.host.hostroot import HostRoot
from agent.logs import LevelHolder, Log
from agent.outbound import Outbound
from agent.state.record import Record

PROGRESS = MappingProxyType(
    {
        lc.Phase.PREFLIGHT: 10,
        lc.Phase.INSTALLING: 30,
        lc.Phase.JOINING: 70,
        lc.Phase.UPGRADING: 50,
        lc.Phase.UNINSTALLING: 50,
    }
)


def _phase_differs(seen: lc.Phase | None) -> Callable[[lc.State], bool]:
    return lambda st: st.phase != seen


class CommandOps:
    agent_version = __version__

    def __init__(
        self,
        config: Config,
        *,
        host: HostRoot,
        driver: LifecycleDriver,
        effects: LifecycleEffects,
        assignments: AssignmentSource,
        out: Outbound,
        record: Record,
        level: LevelHolder,
        cancel_command: Callable[[str], bool],
        secrets: Callable[[], list[str]],
        log: Log,
    ) -> None:
        self._config = config
        self._host = host
        self._driver = driver
        self._effects = effects
        self._assignments = assignments
        self._out = out
        self._record = record
        self._level = level
        self._cancel_command = cancel_command
        self._secrets = secrets
        self._log = log
        self._started = time.monotonic()

    def configure(self, config: Config) -> None:
        self._config = config

    # ---- reports ------------------------------------------------------------------------------
    def uptime_s(self) -> int:
        return int(time.monotonic() - self._started)

    def status(self) -> dict[str, Any]:
        return self._out.status()

    def check_ids(self) -> tuple[str, ...]:
        from agent.checks.runner import CHECK_IDS

        return tuple(CHECK_IDS)

    async def run_checks_now(self, only: list[str] | None) -> list[CheckResult]:
        return await self._effects.run_checks(only, self._driver.state)

    async def nodeadm_debug(self) -> dict[str, Any]:
        report = await self._effects.runner.debug(self._config.nodeadm.config_path)
        result: dict[str, Any] = report.as_dict()
        return result

    async def collect_diagnostics(self, upload: bool, progress: Progress) -> dict[str, Any]:
        from agent.diagnostics import BundleInputs, build_bundle

        progress(10, "collecting")
        inputs = BundleInputs.from_config(
            self._config,
            checks=self._record.checks,
            status=self.status,
            secrets=self._secrets,
            nodeadm_debug=self.nodeadm_debug,
        )
        bundle = await build_bundle(inputs)
        uploaded = False
        controller = self._assignments.controller
        if upload and controller is not None:
            from agent.link.controller import ControllerError

            progress(60, "uploading")
            try:
                await controller.upload_diagnostics(bundle.bundle_id, bundle.data)
                uploaded = True
            except ControllerError as e:
                raise CommandFailed("upload_failed", e.message, result=bundle.summary(False)) from e
        return bundle.summary(uploaded)

    # ---- changes to the agent or the host -----------------------------------------------------
    def set_log_level(self, level: str) -> None:
        self._level.set(level)
        self._log.info("log.level", level=level)

    def cancel_command(self, command_id: str) -> bool:
        return self._cancel_command(command_id)

    def cancel_lifecycle_work(self) -> None:
        self._driver.cancel_work()

    async def refresh_package_index(self) -> dict[str, Any]:
        from agent.host.packages import refresh_package_index

        try:
            res = await refresh_package_index(self._config, self._host, self._config.state_dir)
        except Exception as e:
            raise CommandFailed("refresh_failed", str(e)) from e
        return {"manager": res.manager, "duration_s": round(res.duration_s, 3)}

    async def sync_assignment(self) -> dict[str, Any]:
        return await self._assignments.sync()

    # ---- the lifecycle's operations -------------------------------------------------------------
    async def _follow(
        self, progress: Progress, done: set[lc.Phase], failed: set[lc.Phase]
    ) -> lc.State:
        last: lc.Phase | None = None
        while True:
            s = await self._driver.wait_until(_phase_differs(last))
            last = s.phase
            if s.phase in done:
                return s
            if s.phase in failed:
                le = s.last_error
                raise CommandFailed(le.code if le else "failed", le.message if le else str(s.phase))
            progress(PROGRESS.get(s.phase), f"phase {s.phase}")

    async def _request(
        self, event: lc.Event, progress: Progress, done: set[lc.Phase], failed: set[lc.Phase]
    ) -> lc.State:
        before = self._driver.state.phase
        self._driver.post(event)
        # Wait until the lifecycle has taken the request (it leaves the resting phase).
        await self._driver.wait_until(lambda st: st.phase != before or st.phase in PROGRESS)
        return await self._follow(progress, done, failed)

    async def join(self, progress: Progress) -> dict[str, Any]:
        st = self._driver.state
        if st.assignment is None:
            raise CommandFailed("no_assignment", "no assignment yet: nothing to join")
        if st.phase is lc.Phase.JOINED and st.joined_identity == st.assignment.identity():
            # Idempotent: a fleet tool may send join to every host; a joined one has nothing to do.
            return {"kubernetes_version": st.installed_version, "node_name": st.node_name}
        s = await self._request(
            lc.JoinRequested(),
            progress,
            {lc.Phase.JOINED},
            {lc.Phase.FAILED, lc.Phase.PREFLIGHT_FAILED},
        )
        return {"kubernetes_version": s.installed_version, "node_name": s.node_name}

    async def upgrade(self, version: str, drained: bool, progress: Progress) -> dict[str, Any]:
        if self._config.host.mode == "appliance":
            raise CommandFailed(
                "requires_new_image", "appliance mode: Kubernetes binaries are part of the image"
            )
        if not self._host.tracker_present():
            raise CommandFailed("not_installed", "nodeadm has installed nothing to upgrade")
        st = self._driver.state
        if st.phase is lc.Phase.JOINED and st.installed_version == version:
            return {"kubernetes_version": version}  # already there: nothing to run
        s = await self._request(
            lc.UpgradeRequested(version, drained), progress, {lc.Phase.JOINED}, {lc.Phase.FAILED}
        )
        return {"kubernetes_version": s.installed_version}

    async def uninstall(self, force: bool, drained: bool, progress: Progress) -> dict[str, Any]:
        await self._request(
            lc.UninstallRequested(force, drained),
            progress,
            {lc.Phase.UNINSTALLED},
            {lc.Phase.FAILED},
        )
        return {}


__all__ = ["CommandOps"]
