"""The twelve remote commands of docs/controller.md, each a small declared unit.

Each `CommandSpec` names its argument rules, whether it is exclusive, and its timeout; the
work itself is done by the agent through the narrow `AgentOps` interface, so these units hold
no state and two agents in one process never share anything.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from agent.commands.dispatcher import ArgsError, CommandSpec, Progress
from agent.core.checks import summary

# The shape an assignment's kubernetes_version has (agent/core/assignment.py): a malformed
# version must be refused here, not handed to nodeadm to fail and be retried forever.
# ASCII digits only (`\d` would take fullwidth or Arabic-Indic digits); used with fullmatch.
_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")


class AgentOps(Protocol):
    agent_version: str

    def uptime_s(self) -> int: ...
    def status(self) -> dict[str, Any]: ...
    def check_ids(self) -> tuple[str, ...]: ...
    async def run_checks_now(self, only: list[str] | None) -> list[Any]: ...
    async def refresh_package_index(self) -> dict[str, Any]: ...
    async def sync_assignment(self) -> dict[str, Any]: ...
    async def join(self, progress: Progress) -> dict[str, Any]: ...
    async def upgrade(self, version: str, drained: bool, progress: Progress) -> dict[str, Any]: ...
    async def uninstall(self, force: bool, drained: bool, progress: Progress) -> dict[str, Any]: ...
    async def nodeadm_debug(self) -> dict[str, Any]: ...
    async def collect_diagnostics(self, upload: bool, progress: Progress) -> dict[str, Any]: ...
    def set_log_level(self, level: str) -> None: ...
    def cancel_command(self, command_id: str) -> bool: ...
    def cancel_lifecycle_work(self) -> None: ...


def _only(allowed: dict[str, type | tuple[type, ...]], args: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ArgsError(f"unexpected argument {unknown[0]!r}")
    for key, kind in allowed.items():
        if key in args and args[key] is not None and not isinstance(args[key], kind):
            raise ArgsError(f"{key} has the wrong type")
        if isinstance(args.get(key), bool) and kind is int:
            raise ArgsError(f"{key} has the wrong type")
    return args


def _no_args(args: dict[str, Any]) -> dict[str, Any]:
    return _only({}, args)


def build_specs(ops: AgentOps, *, debug_timeout_s: float = 420.0) -> dict[str, CommandSpec]:
    """The command table for one agent. `debug_timeout_s` is nodeadm debug's own limit: the
    command's is longer, so the runner can still return the items printed when it is hit."""

    async def ping(_a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return {"pong": True, "agent_version": ops.agent_version, "uptime_s": ops.uptime_s()}

    async def get_status(_a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return ops.status()

    def checks_args(args: dict[str, Any]) -> dict[str, Any]:
        _only({"only": list}, args)
        only = args.get("only")
        if only is not None:
            known = ops.check_ids()
            for cid in only:
                if not isinstance(cid, str) or cid not in known:
                    raise ArgsError(f"unknown check id {cid!r}; known: {', '.join(known)}")
        return args

    async def run_checks(a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        results = await ops.run_checks_now(a.get("only"))
        return {"checks": [r.to_dict() for r in results], "summary": summary(results)}

    async def refresh(_a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return await ops.refresh_package_index()

    async def sync(_a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return await ops.sync_assignment()

    async def join(_a: dict[str, Any], p: Progress) -> dict[str, Any]:
        return await ops.join(p)

    def upgrade_args(args: dict[str, Any]) -> dict[str, Any]:
        _only({"kubernetes_version": str, "drained": bool}, args)
        v = args.get("kubernetes_version")
        if not isinstance(v, str) or not v:
            raise ArgsError('kubernetes_version (a string such as "1.32") is required')
        if not _VERSION.fullmatch(v):
            raise ArgsError(f'kubernetes_version {v[:32]!r} is not a version such as "1.32"')
        return args

    async def upgrade(a: dict[str, Any], p: Progress) -> dict[str, Any]:
        return await ops.upgrade(a["kubernetes_version"], bool(a.get("drained", False)), p)

    async def uninstall(a: dict[str, Any], p: Progress) -> dict[str, Any]:
        return await ops.uninstall(bool(a.get("force", False)), bool(a.get("drained", False)), p)

    async def debug(_a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return await ops.nodeadm_debug()

    async def diagnostics(a: dict[str, Any], p: Progress) -> dict[str, Any]:
        return await ops.collect_diagnostics(bool(a.get("upload", True)), p)

    def level_args(args: dict[str, Any]) -> dict[str, Any]:
        _only({"level": str}, args)
        if args.get("level") not in ("debug", "info", "warning", "error"):
            raise ArgsError("level must be one of debug, info, warning, error")
        return args

    async def set_level(a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        ops.set_log_level(a["level"])
        return {"level": a["level"]}

    def cancel_args(args: dict[str, Any]) -> dict[str, Any]:
        _only({"command_id": str}, args)
        if not args.get("command_id"):
            raise ArgsError("command_id is required")
        return args

    async def cancel(a: dict[str, Any], _p: Progress) -> dict[str, Any]:
        return {"canceled": ops.cancel_command(a["command_id"])}

    lifecycle_cancel = ops.cancel_lifecycle_work
    specs = [
        CommandSpec("ping", ping, _no_args, timeout_s=10),
        CommandSpec("get-status", get_status, _no_args, timeout_s=10),
        CommandSpec("run-checks", run_checks, checks_args, timeout_s=600),
        CommandSpec("refresh-package-index", refresh, _no_args, exclusive=True, timeout_s=900),
        CommandSpec("sync-assignment", sync, _no_args, timeout_s=120),
        CommandSpec(
            "join", join, _no_args, exclusive=True, timeout_s=3 * 3600, on_cancel=lifecycle_cancel
        ),
        CommandSpec(
            "upgrade",
            upgrade,
            upgrade_args,
            exclusive=True,
            timeout_s=3 * 3600,
            on_cancel=lifecycle_cancel,
        ),
        CommandSpec(
            "uninstall",
            uninstall,
            lambda a: _only({"force": bool, "drained": bool}, a),
            exclusive=True,
            timeout_s=3600,
            on_cancel=lifecycle_cancel,
        ),
        CommandSpec("nodeadm-debug", debug, _no_args, timeout_s=debug_timeout_s + 30),
        CommandSpec(
            "collect-diagnostics", diagnostics, lambda a: _only({"upload": bool}, a), timeout_s=600
        ),
        CommandSpec("set-log-level", set_level, level_args, timeout_s=10),
        CommandSpec("cancel", cancel, cancel_args, timeout_s=10),
    ]
    return {s.name: s for s in specs}
