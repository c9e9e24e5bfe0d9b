"""The nodeadm runner: install, init, upgrade, uninstall, debug and version on this host.

`NodeadmRunner` turns an `Assignment` into nodeadm's argument lists and runs one step at a time
(an `asyncio.Lock`), judging results the way nodeadm's quirks require: init and upgrade exit 0
when nothing is installed, so success also needs the tracker and, for init, kubelet ``active``.
Output goes to ``state_dir/logs/nodeadm-<step>.log`` and each line to ``on_line`` and the log.
Under systemd steps run as transient units (docs/systemd.md: the agent's sandbox is inherited
by children, and a restart must not kill an in-flight nodeadm); process mechanics live in
`agent.host.nodeadm_proc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.assignment import Assignment
from agent.core.config import Config
from agent.core.nodeadm_debug import DebugItem, parse_debug_output
from agent.core.nodeadm_errors import (
    NodeadmLine,
    classify,
    parse_line,
    scrub_line,
)
from agent.core.redact import scrub_text
from agent.host.hostroot import HostRoot
from agent.host.nodeadm_proc import (
    RunRecord,
    RunResult,
    end_recorded,
    repair_dpkg,
    run_step,
)
from agent.host.nodeadm_unit import step_unit, systemd_run_argv
from agent.host.nodeconfig_file import write_nodeconfig
from agent.host.proc import ProcessError, transient, use_transient_units
from agent.host.proc import run as run_program
from agent.logs import Log

RUN_RECORD = "nodeadm-run.json"
SKIP_DRAINED = "pod-validation,node-validation"
MAX_LINES = 2000
_VERSION = re.compile(r"Version:\s*(\S+)")


@dataclass(frozen=True)
class NodeadmOutcome:
    """How one step ended; ``code`` is a contract ``last_error.code``, None on success."""

    step: str
    ok: bool
    exit_code: int | None
    code: str | None
    message: str
    duration_s: float
    log_path: Path | None
    node_name: str | None = None
    timed_out: bool = False
    canceled: bool = False


@dataclass(frozen=True)
class DebugReport:
    ok: bool
    items: tuple[DebugItem, ...]
    exit_code: int | None = None
    message: str | None = None
    log_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``nodeadm-debug`` command's result (docs/controller.md)."""
        return {"ok": self.ok, "items": [i.as_dict() for i in self.items]}


class NodeadmRunner:
    def __init__(
        self,
        config: Config,
        host: HostRoot,
        *,
        on_line: Callable[[str, NodeadmLine], None],
        log: Log,
        secrets: Callable[[], Sequence[str]] = lambda: (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cfg = config
        self._host = host
        self._on_line = on_line
        self._log = log
        self._secrets = secrets
        self._env = dict(env or {})
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.running: str | None = None

    def configure(self, config: Config) -> None:
        """A reload's new settings (timeouts, programs, config path) for the next step."""
        self._cfg = config

    @property
    def record_path(self) -> Path:
        return self._cfg.state_dir / RUN_RECORD

    def log_path(self, step: str) -> Path:
        return self._cfg.state_dir / "logs" / f"nodeadm-{step}.log"

    def cancel(self) -> bool:
        """End the step in flight (its outcome then says ``canceled``); False if none."""
        if self.running is None:
            return False
        self._stop.set()
        return True

    # -- steps ---------------------------------------------------------------------------

    async def install(self, a: Assignment) -> NodeadmOutcome:
        t = self._cfg.nodeadm.install_timeout_s
        argv = [
            self._cfg.programs.nodeadm, "install", a.kubernetes_version,
            "-p", a.credential_provider,
            "--containerd-source", a.containerd_source,
            "-r", a.cluster.region,
            "-t", _duration(t),
        ]  # fmt: skip
        async with self._slot("install"):
            await repair_dpkg(
                self._host.path("/var/lib/dpkg/updates"),
                self._cfg.programs.dpkg,
                self._env,
                self._log,
                wrap=self._host_change("dpkg-repair"),
                install_unit=step_unit("install")
                if use_transient_units(self._cfg.nodeadm.systemd_run)
                else None,
                systemctl=self._cfg.programs.systemctl,
            )
            result, lines = await self._execute("install", argv, _outer(t), a)
            return self._outcome(
                "install", result, lines, a, t, tracker_present=self._host.tracker_present()
            )

    async def init(self, a: Assignment, config_path: Path) -> NodeadmOutcome:
        argv = [self._cfg.programs.nodeadm, "init", "-c", _uri(config_path)]
        t = self._cfg.nodeadm.init_timeout_s
        async with self._slot("init"):
            refused = self._write_config(a, config_path)
            if refused is not None:
                return refused
            result, lines = await self._execute("init", argv, t, a)
            tracker = self._host.tracker_present()
            active = await self._kubelet_active() if result.exit_code == 0 and tracker else None
            return self._outcome(
                "init", result, lines, a, t, tracker_present=tracker, kubelet_active=active
            )

    async def upgrade(self, a: Assignment, config_path: Path, drained: bool) -> NodeadmOutcome:
        t = self._cfg.nodeadm.upgrade_timeout_s
        argv = [
            self._cfg.programs.nodeadm, "upgrade", a.kubernetes_version,
            "-c", _uri(config_path), "-t", _duration(t),
        ]  # fmt: skip
        if drained:
            argv += ["--skip", SKIP_DRAINED]
        async with self._slot("upgrade"):
            refused = self._write_config(a, config_path)
            if refused is not None:
                return refused
            result, lines = await self._execute("upgrade", argv, _outer(t), a)
            return self._outcome(
                "upgrade", result, lines, a, t, tracker_present=self._host.tracker_present()
            )

    async def uninstall(
        self, force: bool = False, drained: bool = False, *, remove_kubelet_certs: bool = False
    ) -> NodeadmOutcome:
        argv = [self._cfg.programs.nodeadm, "uninstall"]
        if drained:
            argv += ["--skip", SKIP_DRAINED]
        if force:
            argv.append("--force")
        t = self._cfg.nodeadm.uninstall_timeout_s
        async with self._slot("uninstall"):
            result, lines = await self._execute("uninstall", argv, t, None)
            outcome = self._outcome(
                "uninstall", result, lines, None, t, tracker_present=self._host.tracker_present()
            )
            if outcome.ok and remove_kubelet_certs:
                # nodeadm keeps /var/lib/kubelet (#664), and with it the serving certs of
                # the old cluster: a join to another cluster then fails x509 checks (#413).
                await self._remove_kubelet_certs()
            return outcome

    def _host_change(self, name: str) -> Callable[[list[str]], list[str]]:
        """How a command that writes outside the agent's sandbox is run (docs/systemd.md)."""
        if not use_transient_units(self._cfg.nodeadm.systemd_run):
            return lambda argv: argv
        return lambda argv: transient(self._cfg.programs.systemd_run, name, argv, self._env)

    async def _remove_kubelet_certs(self) -> None:
        pki = self._host.path("/var/lib/kubelet/pki")
        if use_transient_units(self._cfg.nodeadm.systemd_run):
            # /var/lib/kubelet is read-only inside the agent's sandbox: remove it from a
            # transient unit. Transient units run in the host's namespace: host paths apply.
            argv = self._host_change("kubelet-certs")(["rm", "-rf", "--", "/var/lib/kubelet/pki"])
            try:
                await run_program(argv, timeout=120, env=self._env)
            except ProcessError as e:
                self._log.warning("nodeadm.kubelet_certs_not_removed", error=e.reason)
                return
        else:
            shutil.rmtree(pki, ignore_errors=True)
        self._log.info("nodeadm.kubelet_certs_removed", path="/var/lib/kubelet/pki")

    async def debug(self, config_path: Path) -> DebugReport:
        """``nodeadm debug``: read-only and short, so it runs beside a step in flight.

        It takes neither the step lock nor the run record. Its active-node validation waits
        up to 5 minutes for a Ready node, so its limit is its own (``debug_timeout_s``); when
        it is hit, the items printed so far are reported and the one in flight fails.
        """
        argv = [self._cfg.programs.nodeadm, "debug", "-c", _uri(config_path), "--no-color"]
        limit = self._cfg.nodeadm.debug_timeout_s
        lines: deque[NodeadmLine] = deque(maxlen=MAX_LINES)
        secrets = self._secret_list(None)
        log_path = self.log_path("debug")
        result = await run_step(
            argv,
            step="debug",
            log_path=log_path,
            record_path=None,
            timeout=limit,
            on_text=lambda text: self._take("debug", text, lines, secrets),
            stop=asyncio.Event(),
            env=self._env,
        )
        try:
            text = log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        unfinished = None
        if result.timed_out:
            unfinished = f"still running when nodeadm debug was stopped after {limit:g} s"
        items = tuple(parse_debug_output(text, secrets, unfinished=unfinished))
        ok = result.exit_code == 0 and all(i.ok for i in items)
        message = None
        if not ok:
            _, message = classify(
                "debug", result.exit_code, list(lines), result.timed_out,
                timeout_s=limit, secrets=secrets,
            )  # fmt: skip
            if result.spawn_error:
                message = result.spawn_error
        return DebugReport(ok, items, result.exit_code, message, log_path)

    async def version(self) -> str | None:
        """nodeadm's release tag (``v1.0.20``) from ``nodeadm version``; None if it fails."""
        try:
            result = await run_program(
                [self._cfg.programs.nodeadm, "version"], timeout=30, env=self._env
            )
        except ProcessError as e:
            self._log.warning("nodeadm.version_failed", error=e.reason)
            return None
        match = _VERSION.search(result.stdout) or _VERSION.search(result.stderr)
        return match.group(1) if result.ok and match else None

    async def end_orphan(self) -> str | None:
        """End a nodeadm left running by an earlier agent process; what was ended, or None.

        Call at start, before any step. A stale record (the run is gone, or the pid now
        belongs to another process) is simply deleted.
        """
        if self._lock.locked():
            return None  # the record belongs to our own step in flight
        return await self._end_orphan()

    # -- machinery -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, step: str) -> AsyncIterator[None]:
        async with self._lock:
            # An earlier agent's run would be a second nodeadm on the host: end it first.
            await self._end_orphan()
            self._stop = asyncio.Event()
            self.running = step
            try:
                yield
            finally:
                self.running = None

    async def _end_orphan(self) -> str | None:
        path = self.record_path
        if not path.exists():
            return None
        record = RunRecord.load(path)
        description = None
        if record is not None:
            description = await end_recorded(record, self._cfg.programs.systemctl, self._env)
        with contextlib.suppress(OSError):
            path.unlink()
        if description:
            self._log.warning("nodeadm.orphan_ended", description=description)
        return description

    def _secret_list(self, a: Assignment | None) -> list[str]:
        out = list(self._secrets())
        if a is not None and a.ssm is not None:
            out.append(a.ssm.activation_code)
        return out

    def _take(self, step: str, text: str, lines: deque[NodeadmLine], secrets: list[str]) -> None:
        line = parse_line(text)
        if line is None:
            return
        line = scrub_line(line, secrets)
        lines.append(line)
        try:
            self._on_line(step, line)
        except Exception as e:  # noqa: BLE001 - a failing consumer must not abort a join
            self._log.warning("nodeadm.on_line_failed", step=step, error=repr(e))
        method = {
            "debug": self._log.debug,
            "warn": self._log.warning,
            "error": self._log.error,
            "dpanic": self._log.error,
            "panic": self._log.error,
            "fatal": self._log.error,
        }.get(line.level, self._log.info)
        method("nodeadm.line", step=step, nodeadm_level=line.level, text=line.msg,
               fields=dict(line.fields))  # fmt: skip

    async def _execute(
        self, step: str, nodeadm_argv: list[str], timeout: float, a: Assignment | None
    ) -> tuple[RunResult, list[NodeadmLine]]:
        lines: deque[NodeadmLine] = deque(maxlen=MAX_LINES)
        secrets = self._secret_list(a)
        log_path = self.log_path(step)
        if self._stop.is_set():  # canceled while preparing (dpkg repair): run nothing
            return RunResult(None, False, True, 0.0, log_path), []
        argv, unit = self._wrap(step, nodeadm_argv, log_path)
        self._log.info("nodeadm.start", step=step, argv=argv, unit=unit, timeout_s=timeout)
        result = await run_step(
            argv,
            step=step,
            log_path=log_path,
            record_path=self.record_path,
            timeout=timeout,
            on_text=lambda text: self._take(step, text, lines, secrets),
            stop=self._stop,
            env=self._env,
            unit=unit,
            systemctl=self._cfg.programs.systemctl,
            log=self._log,
        )
        return result, list(lines)

    def _wrap(self, step: str, argv: list[str], log_path: Path) -> tuple[list[str], str | None]:
        if not use_transient_units(self._cfg.nodeadm.systemd_run):
            return argv, None
        unit = step_unit(step)
        wrapped = systemd_run_argv(self._cfg.programs.systemd_run, unit, log_path, argv, self._env)
        return wrapped, unit

    def _write_config(self, a: Assignment, path: Path) -> NodeadmOutcome | None:
        try:
            write_nodeconfig(path, a)
        except ValueError as e:
            code, message = "bad_assignment", str(e)
        except OSError as e:
            code, message = "nodeadm_failed", f"cannot write the NodeConfig to {path}: {e}"
        else:
            return None
        self._log.warning("nodeadm.nodeconfig_refused", error=message)
        return NodeadmOutcome(
            step=self.running or "init", ok=False, exit_code=None, code=code,
            message=message, duration_s=0.0, log_path=None,
        )  # fmt: skip

    async def _kubelet_active(self) -> bool:
        try:
            result = await run_program(
                [self._cfg.programs.systemctl, "is-active", "kubelet"], timeout=30, env=self._env
            )
        except ProcessError:
            return False
        return result.stdout.strip() == "active"

    def _outcome(
        self,
        step: str,
        result: RunResult,
        lines: list[NodeadmLine],
        a: Assignment | None,
        timeout: float,
        *,
        tracker_present: bool | None = None,
        kubelet_active: bool | None = None,
    ) -> NodeadmOutcome:
        secrets = self._secret_list(a)
        if result.spawn_error is not None:
            code: str | None = "nodeadm_failed"
            message = scrub_text(result.spawn_error, secrets)
        elif result.canceled:
            code, message = "canceled", f"nodeadm {step} was canceled and its processes ended."
        else:
            code, message = classify(
                step, result.exit_code, lines, result.timed_out,
                tracker_present=tracker_present, kubelet_active=kubelet_active,
                timeout_s=timeout, secrets=secrets,
            )  # fmt: skip
        node_name = None
        if a is not None and step in ("init", "upgrade"):
            node_name = (
                self._host.ssm_node_name() if a.credential_provider == "ssm" else a.node_name_hint
            )
        outcome = NodeadmOutcome(
            step=step, ok=code is None, exit_code=result.exit_code, code=code, message=message,
            duration_s=round(result.duration_s, 3), log_path=result.log_path,
            node_name=node_name, timed_out=result.timed_out, canceled=result.canceled,
        )  # fmt: skip
        (self._log.info if outcome.ok else self._log.warning)(
            "nodeadm.finished", step=step, ok=outcome.ok, code=code, exit_code=result.exit_code,
            duration_s=outcome.duration_s, message=message,
        )  # fmt: skip
        return outcome


def _duration(seconds: float) -> str:
    """A Go duration nodeadm's ``-t`` accepts (``1800s``); never below one second."""
    return f"{max(1, int(seconds))}s"


def _outer(seconds: float) -> float:
    # nodeadm honours -t itself and then says *what* timed out ("context deadline exceeded:
    # running command [apt ...]"); our own deadline comes a little later as the backstop.
    return seconds + min(120.0, max(10.0, seconds * 0.05))


def _uri(path: Path) -> str:
    # file://<absolute path>: nodeadm reads file://root/x.yaml as the relative root/x.yaml.
    return f"file://{path.resolve()}"
