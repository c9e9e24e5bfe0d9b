"""What a preflight check is: a declared unit with an id, a title, a timeout and one `run`.

Each check of the README check table is a `Check` value: its id and title, the remedy an operator sees
when it does not pass, its time budget, whether it needs an assignment, and an async `run`
that looks at the host through a `CheckContext` and returns a `CheckVerdict` (status,
message, optional remedy, details). Checks never build `CheckResult`s themselves: the runner
adds the id, title, duration and the default remedy, and turns timeouts and crashes into
``error`` results, so a check is only the judgement.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.assignment import Assignment
from agent.core.checks import CheckStatus
from agent.core.config import Config
from agent.host.hostroot import HostRoot, arch
from agent.logs import Log


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may look at; built once per preflight run by the caller.

    ``installed_minor`` is the Kubernetes major.minor the agent recorded as installed (the
    nodeadm tracker holds no version). ``addresses`` are the host's IPv4 addresses, found by
    the caller. ``allow_changes`` lets checks refresh the package index and add the VPC
    route; a read-only ``edge-agent check`` passes False. ``arch`` is the kernel's machine
    name; it defaults to this machine, and tests set it to try other architectures.
    """

    config: Config
    host: HostRoot
    assignment: Assignment | None
    state_dir: Path
    installed_minor: str | None
    addresses: tuple[str, ...]
    now: float
    allow_changes: bool
    log: Log
    arch: str = field(default_factory=arch)

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        assignment: Assignment | None = None,
        installed_minor: str | None = None,
        addresses: tuple[str, ...] = (),
        now: float | None = None,
        allow_changes: bool = False,
        log: Log | None = None,
    ) -> CheckContext:
        """A context whose host root and state dir come from the config."""
        if log is None:
            import structlog

            log = structlog.get_logger("edge_agent.checks")
        return cls(
            config=config,
            host=HostRoot(config.host.root),
            assignment=assignment,
            state_dir=config.state_dir,
            installed_minor=installed_minor,
            addresses=addresses,
            now=time.time() if now is None else now,
            allow_changes=allow_changes,
            log=log,
        )


@dataclass(frozen=True)
class CheckVerdict:
    """A check's judgement. ``remedy`` None means the check's declared remedy."""

    status: CheckStatus
    message: str
    remedy: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)


def passed(message: str, details: Mapping[str, object] | None = None) -> CheckVerdict:
    return CheckVerdict(CheckStatus.PASS, message, None, dict(details or {}))


def warned(
    message: str, remedy: str | None = None, details: Mapping[str, object] | None = None
) -> CheckVerdict:
    return CheckVerdict(CheckStatus.WARN, message, remedy, dict(details or {}))


def failed(
    message: str, remedy: str | None = None, details: Mapping[str, object] | None = None
) -> CheckVerdict:
    return CheckVerdict(CheckStatus.FAIL, message, remedy, dict(details or {}))


def skipped(message: str, details: Mapping[str, object] | None = None) -> CheckVerdict:
    return CheckVerdict(CheckStatus.SKIP, message, None, dict(details or {}))


def errored(
    message: str, remedy: str | None = None, details: Mapping[str, object] | None = None
) -> CheckVerdict:
    """The check could not judge (a missing optional dependency, an unreadable source)."""
    return CheckVerdict(CheckStatus.ERROR, message, remedy, dict(details or {}))


CheckFn = Callable[[CheckContext], Awaitable[CheckVerdict]]


@dataclass(frozen=True)
class Check:
    """One preflight check of the README check table, declared once in the registry."""

    id: str
    title: str
    remedy: str
    timeout_s: float
    needs_assignment: bool
    run: CheckFn


def require_assignment(ctx: CheckContext) -> Assignment:
    """The assignment of a check declared ``needs_assignment`` (the runner guarantees it)."""
    if ctx.assignment is None:
        raise RuntimeError("this check needs an assignment")
    return ctx.assignment


def human_duration(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``12 min``, ``40 s``: how long ago, for people."""
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


def one_line(text: str) -> str:
    """A program's multi-line output tail as one line, for a message that is one line."""
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())
