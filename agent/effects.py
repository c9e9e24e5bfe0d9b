"""The lifecycle's effects on the host: preflight checks, nodeadm steps, health.

`LifecycleEffects` is the driver's step and checks runner: it runs the checks and records
their results, runs one nodeadm step per `Step` (dispatched with ``match``, so a name the
lifecycle does not know fails instead of falling into some default), and turns nodeadm's log
lines into events. `HealthMonitor` samples the host and kubelet, publishes health and tells
the lifecycle whether a joined node is healthy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import replace

from agent import _compat
from agent.core import lifecycle as lc
from agent.core.checks import CheckResult
from agent.core.codes import ErrorCode, Step
from agent.core.config import Config
from agent.core.nodeadm_errors import NodeadmLine
from agent.driver import LifecycleDriver
from agent.host import sysctl
from agent.host.hostroot import HostRoot
from agent.host.metrics import HealthSampler, host_addresses, kubelet_healthz
from agent.host.nodeadm import NodeadmRunner
from agent.host.proc import ProcessError, run, use_transient_units
from agent.logs import Log
from agent.outbound import Outbound
from agent.state.record import Record


async def service_states(systemctl: str, units: tuple[str, ...]) -> dict[str, str]:
    """`systemctl is-active` for each unit; ``unknown`` for anything else or a failed run."""
    try:
        res = await run([systemctl, "is-active", *units], timeout=10)
    except ProcessError:
        return dict.fromkeys(units, "unknown")
    lines = res.stdout.split()
    known = {"active", "inactive", "failed"}
    return {
        u: (lines[i] if i < len(lines) and lines[i] in known else "unknown")
        for i, u in enumerate(units)
    }


class LifecycleEffects:
    def __init__(
        self,
        config: Config,
        *,
        host: HostRoot,
        out: Outbound,
        record: Record,
        save: Callable[[], None],
        now: Callable[[], float],
        secrets: Callable[[], list[str]],
        log: Log,
    ) -> None:
        self._config = config
        self._host = host
        self.runner = NodeadmRunner(
            config, host, on_line=self.on_nodeadm_line, log=log, secrets=secrets
        )
        self._out = out
        self._record = record
        self._save = save  # persists the current lifecycle state with the record
        self._now = now
        self._log = log

    def configure(self, config: Config) -> None:
        """A reload: the next check run and nodeadm step use the new settings."""
        self._config = config
        self.runner.configure(config)

    async def run_preflight(self, state: lc.State) -> list[CheckResult]:
        return await self.run_checks(None, state)

    async def run_checks(self, only: list[str] | None, state: lc.State) -> list[CheckResult]:
        """Run the checks (all of them when ``only`` is None, and then remember the run)."""
        from agent.checks.base import CheckContext
        from agent.checks.runner import run_checks

        ctx = CheckContext(
            config=self._config,
            host=self._host,
            assignment=state.assignment,
            state_dir=self._config.state_dir,
            installed_minor=state.installed_minor,
            addresses=host_addresses(),
            now=self._now(),
            allow_changes=True,
            log=self._log,
        )
        results = await run_checks(ctx, only)
        for r in results:
            self._out.emit("check", r.to_dict())
            if r.id == "nodeadm.binary" and r.details.get("version"):
                self._record.nodeadm_version = str(r.details["version"])
        if only is None:
            self._record.checks = [r.to_dict() for r in results]
            self._record.checks_ts = self._now()
            self._save()
            self._out.publish_status()
        return results

    async def run_step(self, step: Step, args: lc.OpArgs, state: lc.State) -> lc.StepDone:
        a = state.assignment
        cfg_path = self._config.nodeadm.config_path
        match step:
            case Step.INSTALL:
                assert a is not None
                out = await self.runner.install(a)
            case Step.INIT:
                assert a is not None
                out = await self.runner.init(a, cfg_path)
            case Step.UPGRADE:
                assert a is not None
                up = args if isinstance(args, lc.UpgradeArgs) else lc.UpgradeArgs()
                target = replace(
                    a, kubernetes_version=up.kubernetes_version or a.kubernetes_version
                )
                out = await self.runner.upgrade(target, cfg_path, drained=up.drained)
            case Step.UNINSTALL:
                un = args if isinstance(args, lc.UninstallArgs) else lc.UninstallArgs()
                out = await self.runner.uninstall(
                    force=un.force, drained=un.drained, remove_kubelet_certs=un.remove_kubelet_certs
                )
            case _:
                # An unknown name must fail, never fall into some default (it once ran
                # uninstall); mypy proves every Step is handled above.
                _compat.assert_never(step)
        if out.canceled:
            raise asyncio.CancelledError
        if step is Step.INIT and out.ok and self._config.host.mode == "appliance":
            self.keep_sysctls()
        if not out.ok:
            self._out.error(out.code or ErrorCode.NODEADM_FAILED, out.message, step=step)
        return lc.StepDone(
            step, ok=out.ok, code=out.code, message=out.message, node_name=out.node_name
        )

    def keep_sysctls(self) -> None:
        """Appliance mode: keep nodeadm's sysctl file where it survives a reboot."""
        try:
            kept = sysctl.keep_copy(self._host, self._config.state_dir)
        except OSError as e:
            self._log.error("sysctl.copy_failed", error=str(e))
            return
        if not kept:
            self._log.warning("sysctl.no_nodeadm_file", path=sysctl.NODEADM_CONF)

    async def restore_sysctls(self) -> str | None:
        """Appliance mode, a joined node starting (a reboot): nodeadm's kernel settings must
        be in force again for kubelet. Re-applies what is not; returns what is lost, or None."""
        cfg = self._config
        units = use_transient_units(cfg.nodeadm.systemd_run)
        try:
            report = await sysctl.restore(
                self._host, cfg.state_dir, systemd_run=cfg.programs.systemd_run if units else None
            )
        except OSError as e:
            report = sysctl.SysctlReport(source=None, missing={"*": str(e)})
        if report.ok:
            event = "sysctl.reapplied" if report.reapplied else "sysctl.in_force"
            log = self._log.warning if report.reapplied else self._log.info
            log(event, **report.as_dict())
            return None
        msg = report.problem()
        self._log.error("sysctl.not_in_force", message=msg, **report.as_dict())
        self._out.error(ErrorCode.SYSCTL_NOT_IN_FORCE, msg)
        return msg

    def on_nodeadm_line(self, step: str, line: NodeadmLine) -> None:
        self._out.emit(
            "nodeadm",
            {"step": step, "level": line.level, "msg": line.msg, "fields": dict(line.fields)},
        )


class HealthMonitor:
    def __init__(
        self,
        config: Config,
        *,
        sampler: HealthSampler,
        driver: LifecycleDriver,
        out: Outbound,
        log: Log,
    ) -> None:
        self._config = config
        self._log = log
        self._sampler = sampler
        self._driver = driver
        self._out = out

    def configure(self, config: Config) -> None:
        self._config = config

    async def run(self, interval: float, stamp: Callable[[], None], rng: random.Random) -> None:
        """Sample and publish health every `interval` seconds, for ever."""
        while True:
            stamp()
            try:
                await self.once()
            except Exception as e:  # noqa: BLE001 - health must never stop the agent
                self._log.warning("health.failed", error=str(e))
            # ±10 %: agents started together (a site after a power cut) must not sample and
            # publish in lockstep for ever.
            await asyncio.sleep(interval * rng.uniform(0.9, 1.1))

    async def once(self) -> None:
        sample = self._sampler.sample()
        services = await service_states(self._config.programs.systemctl, ("kubelet", "containerd"))
        healthz = await kubelet_healthz(self._config.health.kubelet_healthz_url)
        self._out.health({**sample, "services": services, "kubelet_healthz": healthz})
        if self._driver.state.phase in lc.NODE_PHASES:
            healthy = all(v == "active" for v in services.values()) and healthz == "ok"
            self._driver.post(lc.HealthObserved(healthy))


async def status_loop(out: Outbound, interval: float, stamp: Callable[[], None]) -> None:
    """Every change publishes a status (publish_status notes the time); this loop only fills
    the silences, so a quiet host sends one every `interval`, not more."""
    while True:
        stamp()
        due = out.last_status_at + interval - time.monotonic()
        if due <= 0:
            out.publish_status()
            continue
        await asyncio.sleep(min(due, 10.0))


__all__ = ["HealthMonitor", "LifecycleEffects", "service_states", "status_loop"]
