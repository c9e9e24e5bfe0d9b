"""``packages.index_fresh``: the OS package index is fresh enough for ``nodeadm install``.

With ``checks.refresh_package_index: auto`` a stale index is refreshed once, before judging,
when the caller allows changes. "Once" is enforced across preflight runs and restarts: each
automatic attempt is recorded in ``state_dir`` and at most one is made per hour, whatever
the outcome, so a fleet retrying a failing join does not hammer its mirrors. Judging
freshness itself lives in `agent.host.packages`.
"""

from __future__ import annotations

import dataclasses

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    failed,
    human_duration,
    one_line,
    passed,
    skipped,
)
from agent.core.timefmt import iso
from agent.host.packages import (
    IndexAge,
    PackageIndexError,
    index_age,
    manager_for,
    read_record,
    refresh_argv,
    refresh_package_index,
    write_record,
)

AUTO_REFRESH_EVERY_S = 3600.0


def _remedy(ctx: CheckContext, manager: str) -> str:
    cmd = " ".join(refresh_argv(ctx.config, manager))
    return f"run `{cmd}` on the host, or send the refresh-package-index command"


def _stale(age: IndexAge, now: float, max_age_s: float) -> bool:
    return age.newest is None or now - age.newest > max_age_s


async def _auto_refresh(ctx: CheckContext, manager: str) -> CheckVerdict | None:
    """Refresh once and record the attempt; a verdict only when the refresh failed."""
    record = read_record(ctx.state_dir)
    # Record the attempt before making it: a crash mid-refresh must not lift the limit.
    write_record(
        ctx.state_dir, dataclasses.replace(record, auto_attempt_at=ctx.now, auto_attempt_error=None)
    )
    ctx.log.info("package_index.refresh", manager=manager, reason="stale")
    try:
        await refresh_package_index(ctx.config, ctx.host, ctx.state_dir)
    except PackageIndexError as e:
        latest = read_record(ctx.state_dir)
        write_record(
            ctx.state_dir, dataclasses.replace(latest, auto_attempt_error=one_line(str(e))[-500:])
        )
        ctx.log.warning("package_index.refresh_failed", manager=manager, error=str(e))
        if e.lock_held:
            remedy = (
                "wait for the other package manager run (unattended-upgrades, cloud-init) to "
                "finish; " + _remedy(ctx, manager)
            )
        else:
            remedy = (
                "fix the package sources (network, proxy, mirror URL, signing keys), then "
                + _remedy(ctx, manager)
            )
        return failed(
            f"the package index is stale and refreshing it failed: {one_line(str(e))}",
            remedy,
            {"manager": manager, "refreshed": False, "error": e.tail},
        )
    return None


def _why_not_refreshed(ctx: CheckContext) -> str:
    if ctx.config.checks.refresh_package_index == "never":
        return " (checks.refresh_package_index is never, so the agent does not refresh it)"
    if not ctx.allow_changes:
        return ""
    record = read_record(ctx.state_dir)
    if record.auto_attempt_at is None:
        return ""
    ago = human_duration(ctx.now - record.auto_attempt_at)
    outcome = f" and failed: {record.auto_attempt_error}" if record.auto_attempt_error else ""
    return (
        f"; the agent last tried to refresh it {ago} ago{outcome} (it tries at most once an hour)"
    )


def _attempt_due(ctx: CheckContext) -> bool:
    at = read_record(ctx.state_dir).auto_attempt_at
    # abs(): a clock stepped back must not block refreshes for the size of the step.
    return at is None or abs(ctx.now - at) >= AUTO_REFRESH_EVERY_S


async def check_index_fresh(ctx: CheckContext) -> CheckVerdict:
    if ctx.config.host.mode == "appliance":
        # The image carries nodeadm's artifacts and the agent never installs there: a stale
        # index would block the join for nothing, and apt-get update would write into it.
        return skipped("appliance mode: nothing is installed; the image carries Kubernetes")
    a = ctx.assignment
    if a is not None and ctx.host.tracker_present() and ctx.installed_minor == a.minor:
        return skipped(
            f"nothing left to install: nodeadm's tracker exists and Kubernetes {a.minor} is "
            "recorded as installed"
        )
    manager = manager_for(ctx.host)
    max_age_h = ctx.config.checks.package_index_max_age_h
    max_age_s = max_age_h * 3600
    age = index_age(ctx.host, ctx.state_dir, manager)
    refreshed = False
    may_change = ctx.config.checks.refresh_package_index == "auto" and ctx.allow_changes
    if _stale(age, ctx.now, max_age_s) and may_change and _attempt_due(ctx):
        failure = await _auto_refresh(ctx, manager)
        if failure is not None:
            return failure
        refreshed = True
        age = index_age(ctx.host, ctx.state_dir, manager)
    details = {
        "manager": manager,
        "max_age_h": max_age_h,
        "age_s": None if age.newest is None else max(0, int(ctx.now - age.newest)),
        "source": age.source,
        "sources": {k: None if v is None else iso(v) for k, v in age.sources.items()},
        "refreshed": refreshed,
    }
    if age.newest is None:
        where = "/var/lib/apt/lists" if manager == "apt" else "/var/cache/dnf"
        return failed(
            f"the {manager} package index was never refreshed (nothing under {where}, and no "
            f"record of a refresh){_why_not_refreshed(ctx)}",
            _remedy(ctx, manager),
            details,
        )
    ago = human_duration(ctx.now - age.newest)
    if _stale(age, ctx.now, max_age_s):
        return failed(
            f"the {manager} package index was last refreshed {ago} ago ({age.source}); "
            f"nodeadm install needs it fresher than {max_age_h:g} h{_why_not_refreshed(ctx)}",
            _remedy(ctx, manager),
            details,
        )
    if refreshed:
        return passed(f"the {manager} package index was stale; the agent refreshed it", details)
    return passed(f"the {manager} package index was refreshed {ago} ago ({age.source})", details)


CHECK = Check(
    id="packages.index_fresh",
    title="Package index is fresh",
    remedy="run `apt-get update` (or `dnf makecache --refresh`) on the host, or send the "
    "refresh-package-index command",
    # Room for the lock wait (300 s) plus one bounded refresh (300 s).
    timeout_s=660.0,
    needs_assignment=False,
    run=check_index_fresh,
)
