"""Runs preflight checks: ordering, assignment gating, timeouts, crash containment, timing.

Checks run one after another in registry order. That is deliberate: they are quick, some
change the host (the package index refresh, the VPC route), and the refresh must finish
before anything judges the index. Each check gets its own time budget; a check that times
out or raises becomes an ``error`` result and the run goes on, so one broken check never
hides the others' verdicts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from agent import _compat
from agent.checks.base import Check, CheckContext, CheckVerdict, skipped
from agent.checks.registry import CHECK_IDS, CHECKS
from agent.core.checks import CheckResult, CheckStatus

__all__ = ["CHECK_IDS", "NO_ASSIGNMENT", "UnknownCheck", "run_check", "run_checks", "select"]

NO_ASSIGNMENT = "no assignment yet"
CRASH_REMEDY = (
    "this is a bug in the agent or an unexpected host state: see the agent's log and report it"
)


class UnknownCheck(Exception):
    """``only`` named an id that is not a check."""

    def __init__(self, check_id: str, valid: Sequence[str] = CHECK_IDS) -> None:
        super().__init__(f"unknown check {check_id!r}; valid ids: {', '.join(valid)}")
        self.check_id = check_id
        self.valid = tuple(valid)


def select(only: Sequence[str] | None, checks: Sequence[Check] = CHECKS) -> list[Check]:
    """The checks to run, in registry order; `UnknownCheck` for an id that is not one."""
    if only is None:
        return list(checks)
    known = {c.id for c in checks}
    for check_id in only:
        if check_id not in known:
            raise UnknownCheck(check_id, [c.id for c in checks])
    wanted = set(only)
    return [c for c in checks if c.id in wanted]


async def _verdict(check: Check, ctx: CheckContext) -> CheckVerdict:
    if check.needs_assignment and ctx.assignment is None:
        return skipped(NO_ASSIGNMENT)
    deadline = _compat.timeout(check.timeout_s)
    try:
        async with deadline:
            return await check.run(ctx)
    except TimeoutError:
        if not deadline.expired():
            raise  # a TimeoutError of the check's own: a crash, handled by the caller
        return CheckVerdict(
            CheckStatus.ERROR,
            f"timed out after {check.timeout_s:g} s",
            "see the agent's log for what the check was waiting on, and run it again",
        )


async def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    """One check as a `CheckResult`; never raises (except on cancellation)."""
    start = time.monotonic()
    try:
        verdict = await _verdict(check, ctx)
    except Exception as e:  # noqa: BLE001 -- a broken check must not take the run down
        ctx.log.error("check.crashed", check=check.id, error=f"{type(e).__name__}: {e}")
        verdict = CheckVerdict(
            CheckStatus.ERROR, f"the check failed: {type(e).__name__}: {e}", CRASH_REMEDY
        )
    duration_ms = int((time.monotonic() - start) * 1000)
    shows_remedy = verdict.status in (CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.ERROR)
    result = CheckResult(
        id=check.id,
        title=check.title,
        status=verdict.status,
        message=verdict.message,
        remedy=(verdict.remedy or check.remedy) if shows_remedy else "",
        duration_ms=duration_ms,
        details=dict(verdict.details),
    )
    ctx.log.debug("check.done", check=check.id, status=str(result.status), duration_ms=duration_ms)
    return result


async def run_checks(
    ctx: CheckContext,
    only: Sequence[str] | None = None,
    checks: Sequence[Check] = CHECKS,
) -> list[CheckResult]:
    """Run the checks (all, or those named in ``only``) in registry order."""
    return [await run_check(check, ctx) for check in select(only, checks)]
