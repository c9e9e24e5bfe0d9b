"""What the agent does, as opposed to how it is wired: the effects behind the lifecycle's
actions and the remote commands.

`AgentWork` is mixed into `Agent` (agent/daemon.py). It runs preflight checks and nodeadm
steps for the driver, samples health, and implements the `AgentOps` the command units call:
a ``join``/``upgrade``/``uninstall`` command posts an event to the lifecycle and waits for the
phase it leads to, so commands and automatic joins share one path and one nodeadm at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from agent.commands.dispatcher import CommandFailed, Progress
from agent.core import lifecycle as lc
from agent.core.checks import CheckResult
from agent.driver import LifecycleDriver
from agent.host.kubelet import kubelet_version
from agent.host.metrics import host_addresses, kubelet_healthz
from agent.host.proc import ProcessError, run, use_transient_units

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


class AgentWork:
    # Provided by Agent.
    config: Any
    host: Any
    log: Any
    uid: str
    store: Any
    extra: dict[str, Any]
    last_checks: list[dict[str, Any]]
    last_checks_ts: float | None
    nodeadm_version: str | None
    link: Any
    controller: Any
    sampler: Any
    sync_event: asyncio.Event
    dispatcher: Any
    level: Any
    rng: Any
    seq: Any
    storage_error: str | None

    # Provided by Agent (agent/daemon.py), declared here for the type checker.
    emit: Callable[[str, dict[str, Any]], None]
    publish_status: Callable[[], None]
    secrets: Callable[[], list[str]]
    now: Callable[[], float]
    stamp: Callable[[str], None]
    base: Callable[[], dict[str, Any]]
    offer_assignment: Callable[[Any, str], Any]
    offer_assignment_file: Callable[[], None]
    on_controller_error: Callable[[str, str], None]
    on_controller_recovered: Callable[[], None]
    register_body: Callable[[], dict[str, Any]]
    note_registered: Callable[[str], None]
    storage_failed: Callable[[str, OSError], bool]
    storage_recovered: Callable[[], bool]

    # ---- construction -------------------------------------------------------------------
    def init_work(self, state: lc.State, policy: lc.Policy) -> None:
        from agent.host.nodeadm import NodeadmRunner

        self.runner = NodeadmRunner(
            self.config, self.host, on_line=self.on_nodeadm_line, log=self.log, secrets=self.secrets
        )
        self.last_status_at = 0.0
        self.driver = LifecycleDriver(
            state=state,
            policy=policy,
            run_step=self.run_step,
            run_checks=self.run_preflight,
            tracker_present=self.host.tracker_present,
            kubelet_version=lambda: kubelet_version(self.host),
            persist=self.persist,
            emit=self.emit,
            on_change=lambda _old, _new: self.publish_status(),
            now=self.now,
            log=self.log,
            heartbeat=lambda: self.stamp("lifecycle"),
        )

    @property
    def lifecycle_state(self) -> lc.State:
        return self.driver.state

    def make_link(self) -> Any:
        from agent.link.mqtt import MqttLink

        cfg = self.config
        return MqttLink(
            cfg.mqtt,
            self.uid,
            cfg.state_dir,
            on_command=self.dispatcher.handle,
            next_seq=self.seq,
            now=self.now,
            log=self.log,
            rng=self.rng,
            heartbeat=lambda: self.stamp("mqtt"),
            max_packet_bytes=cfg.commands.max_bytes + 1024,
            session_expiry_s=int(cfg.commands.max_ttl_s),
            on_link_error=self.on_link_error,
        )

    def make_controller(self) -> Any:
        from agent.link.controller import ControllerClient

        return ControllerClient(
            self.config.controller,
            self.config.state_dir,
            log=self.log,
            rng=self.rng,
            on_error=self.on_controller_error,
            on_recovered=self.on_controller_recovered,
            uid=self.uid,
        )

    def on_link_error(self, code: str | None, message: str | None) -> None:
        if code is None:
            for c in ("uid_conflict", "broker_unreachable", "broker_refused"):
                self.driver.post(lc.ErrorCleared(c))
            return
        self.driver.post(lc.ErrorSeen(code, message or code))

    def persist(self, state: lc.State) -> None:
        try:
            self.store.save(state, self.last_checks, self.last_checks_ts, self.extra)
        except OSError as e:
            # A full state disk must not stop the agent: keep going, and say so in status
            # (every caller publishes a status after persisting, the stop excepted).
            self.storage_failed("cannot save the state", e)
            return
        self.storage_recovered()

    # ---- lifecycle effects -----------------------------------------------------------------
    async def run_preflight(self, state: lc.State) -> list[CheckResult]:
        return await self.run_checks_now(None, state=state, allow_changes=True)

    async def run_checks_now(
        self, only: list[str] | None, *, state: lc.State | None = None, allow_changes: bool = True
    ) -> list[CheckResult]:
        from agent.checks.base import CheckContext
        from agent.checks.runner import run_checks

        st = state or self.driver.state
        ctx = CheckContext(
            config=self.config,
            host=self.host,
            assignment=st.assignment,
            state_dir=self.config.state_dir,
            installed_minor=st.installed_minor,
            addresses=host_addresses(),
            now=self.now(),
            allow_changes=allow_changes,
            log=self.log,
        )
        results = await run_checks(ctx, only)
        for r in results:
            self.emit("check", r.to_dict())
            if r.id == "nodeadm.binary" and r.details.get("version"):
                self.nodeadm_version = str(r.details["version"])
                self.extra["nodeadm_version"] = self.nodeadm_version
        if only is None:
            self.last_checks = [r.to_dict() for r in results]
            self.last_checks_ts = self.now()
            self.persist(self.driver.state)
            self.publish_status()
        return results

    def check_ids(self) -> tuple[str, ...]:
        from agent.checks.runner import CHECK_IDS

        return tuple(CHECK_IDS)

    async def run_step(self, step: str, args: dict[str, Any], state: lc.State) -> lc.StepDone:
        a = state.assignment
        cfg_path = self.config.nodeadm.config_path
        if step == "install":
            assert a is not None
            out = await self.runner.install(a)
        elif step == "init":
            assert a is not None
            out = await self.runner.init(a, cfg_path)
        elif step == "upgrade":
            assert a is not None
            target = replace(
                a, kubernetes_version=str(args.get("kubernetes_version") or a.kubernetes_version)
            )
            out = await self.runner.upgrade(target, cfg_path, drained=bool(args.get("drained")))
        else:
            out = await self.runner.uninstall(
                force=bool(args.get("force")),
                drained=bool(args.get("drained")),
                remove_kubelet_certs=bool(args.get("remove_kubelet_certs")),
            )
        if out.canceled:
            raise asyncio.CancelledError
        if step == "init" and out.ok and self.config.host.mode == "appliance":
            self.keep_sysctls()
        if not out.ok:
            self.emit(
                "error",
                {"code": out.code or "nodeadm_failed", "message": out.message, "step": step},
            )
        return lc.StepDone(
            step, ok=out.ok, code=out.code, message=out.message, node_name=out.node_name
        )

    def keep_sysctls(self) -> None:
        """Appliance mode: keep nodeadm's sysctl file where it survives a reboot."""
        from agent.host import sysctl

        try:
            kept = sysctl.keep_copy(self.host, self.config.state_dir)
        except OSError as e:
            self.log.error("sysctl.copy_failed", error=str(e))
            return
        if not kept:
            self.log.warning("sysctl.no_nodeadm_file", path=sysctl.NODEADM_CONF)

    async def restore_sysctls(self) -> None:
        """Appliance mode, a joined node starting (a reboot): nodeadm's kernel settings must
        be in force again for kubelet; re-apply what is not, and say loudly what is lost."""
        from agent.host import sysctl

        units = use_transient_units(self.config.nodeadm.systemd_run)
        try:
            report = await sysctl.restore(
                self.host,
                self.config.state_dir,
                systemd_run=self.config.programs.systemd_run if units else None,
            )
        except OSError as e:
            report = sysctl.SysctlReport(source=None, missing={"*": str(e)})
        if report.ok:
            event = "sysctl.reapplied" if report.reapplied else "sysctl.in_force"
            log = self.log.warning if report.reapplied else self.log.info
            log(event, **report.as_dict())
            self.driver.post(lc.ErrorCleared("sysctl_not_in_force"))
            return
        msg = report.problem()
        self.log.error("sysctl.not_in_force", message=msg, **report.as_dict())
        self.emit("error", {"code": "sysctl_not_in_force", "message": msg})
        self.driver.post(lc.ErrorSeen("sysctl_not_in_force", msg))

    def on_nodeadm_line(self, step: str, line: Any) -> None:
        self.emit(
            "nodeadm",
            {"step": step, "level": line.level, "msg": line.msg, "fields": dict(line.fields)},
        )

    async def health_once(self) -> None:
        assert self.sampler is not None
        sample = self.sampler.sample()
        services = await self.service_states(("kubelet", "containerd"))
        healthz = await kubelet_healthz(self.config.health.kubelet_healthz_url)
        health = {**self.base(), **sample, "services": services, "kubelet_healthz": healthz}
        if self.link is not None:
            from agent.link.messages import Kind

            self.link.send(Kind.HEALTH, "health", health)
        if self.driver.state.phase in lc.NODE_PHASES:
            healthy = all(v == "active" for v in services.values()) and healthz == "ok"
            self.driver.post(lc.HealthObserved(healthy))

    async def service_states(self, units: tuple[str, ...]) -> dict[str, str]:
        argv = [self.config.programs.systemctl, "is-active", *units]
        try:
            res = await run(argv, timeout=10)
        except ProcessError:
            return dict.fromkeys(units, "unknown")
        lines = res.stdout.split()
        known = {"active", "inactive", "failed"}
        return {
            u: (lines[i] if i < len(lines) and lines[i] in known else "unknown")
            for i, u in enumerate(units)
        }

    # ---- command operations ------------------------------------------------------------------
    async def _follow(
        self, progress: Progress, done: set[lc.Phase], failed: set[lc.Phase]
    ) -> lc.State:
        last: lc.Phase | None = None
        while True:
            s = await self.driver.wait_until(_phase_differs(last))
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
        before = self.driver.state.phase
        self.driver.post(event)
        # Wait until the lifecycle has taken the request (it leaves the resting phase).
        await self.driver.wait_until(lambda st: st.phase != before or st.phase in PROGRESS)
        return await self._follow(progress, done, failed)

    async def join(self, progress: Progress) -> dict[str, Any]:
        st = self.driver.state
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
        if self.config.host.mode == "appliance":
            raise CommandFailed(
                "requires_new_image", "appliance mode: Kubernetes binaries are part of the image"
            )
        if not self.host.tracker_present():
            raise CommandFailed("not_installed", "nodeadm has installed nothing to upgrade")
        st = self.driver.state
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

    def cancel_lifecycle_work(self) -> None:
        self.driver.cancel_work()

    def cancel_command(self, command_id: str) -> bool:
        return bool(self.dispatcher.cancel(command_id))

    def set_log_level(self, level: str) -> None:
        self.level.set(level)
        self.log.info("log.level", level=level)

    async def refresh_package_index(self) -> dict[str, Any]:
        from agent.host.packages import refresh_package_index

        try:
            res = await refresh_package_index(self.config, self.host, self.config.state_dir)
        except Exception as e:
            raise CommandFailed("refresh_failed", str(e)) from e
        return {"manager": res.manager, "duration_s": round(res.duration_s, 3)}

    async def sync_assignment(self) -> dict[str, Any]:
        if self.controller is not None:
            from agent.link.controller import ControllerError

            try:
                fetch = await self.controller.poll_assignment(self.register_body, None)
            except ControllerError as e:
                raise CommandFailed(e.code, e.message) from e
            if fetch.registration is not None:
                self.note_registered("registered again: the controller refused the host token")
            if fetch.status == "changed" and fetch.body is not None:
                self.offer_assignment(fetch.body, "controller")
        elif self.config.assignment_file is not None:
            self.offer_assignment_file()
        await asyncio.sleep(0.05)  # let the lifecycle take it before we report the revision
        a = self.driver.state.assignment
        return {"revision": a.revision if a else None}

    async def nodeadm_debug(self) -> dict[str, Any]:
        report = await self.runner.debug(self.config.nodeadm.config_path)
        result: dict[str, Any] = report.as_dict()
        return result

    async def collect_diagnostics(self, upload: bool, progress: Progress) -> dict[str, Any]:
        from agent.diagnostics import build_bundle

        progress(10, "collecting")
        bundle = await build_bundle(self)
        uploaded = False
        if upload and self.controller is not None:
            progress(60, "uploading")
            from agent.link.controller import ControllerError

            try:
                await self.controller.upload_diagnostics(bundle.bundle_id, bundle.data)
                uploaded = True
            except ControllerError as e:
                raise CommandFailed("upload_failed", e.message, result=bundle.summary(False)) from e
        return bundle.summary(uploaded)
