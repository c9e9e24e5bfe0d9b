"""The runner: order, assignment gating, `only`, timeouts and crashes become ``error``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.checks import CHECK_IDS, CHECKS, UnknownCheck, run_checks
from agent.checks.base import Check, CheckContext, CheckFn, CheckVerdict, failed, passed
from agent.core.checks import CheckStatus
from agent.testing import CapturingLog
from devtools.fakehost import make_host
from tests.checks.helpers import assignment, config, context

CONTRACT_ORDER = (
    "os.supported",
    "packages.index_fresh",
    "mounts.bind",
    "mounts.writable",
    "kubernetes.version",
    "credentials",
    "network.cidrs",
    "network.node_ip",
    "network.firewall",
    "network.route_to_vpc",
    "system.swap",
    "system.disk",
    "system.systemd",
    "system.clock",
    "nodeadm.binary",
)
# The agent's own checks, after the published table's.
EXTENSIONS = ("config.files", "nodeadm.proxy", "nodeadm.ssm_agent", "nodeadm.containerd_unit")


@pytest.fixture
def ctx(tmp_path: Path) -> CheckContext:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(
        tmp_path,
        root,
        programs={"nodeadm": str(tmp_path / "missing-nodeadm"), "timedatectl": "/bin/false"},
        checks={"min_free_disk_gb": 0},
    )
    return context(cfg)


def test_registry_is_the_contract_table_in_order() -> None:
    assert CHECK_IDS == CONTRACT_ORDER + EXTENSIONS
    assert tuple(c.id for c in CHECKS) == CONTRACT_ORDER + EXTENSIONS
    assert all(c.title and c.remedy and c.timeout_s > 0 for c in CHECKS)


async def test_all_checks_run_in_order_and_without_assignment_skip(ctx: CheckContext) -> None:
    results = await run_checks(ctx)
    assert [r.id for r in results] == list(CONTRACT_ORDER + EXTENSIONS)
    by_id = {r.id: r for r in results}
    for check in CHECKS:
        if check.needs_assignment:
            assert by_id[check.id].status is CheckStatus.SKIP
            assert by_id[check.id].message == "no assignment yet"
    assert all(r.duration_ms >= 0 for r in results)
    assert by_id["system.swap"].status is CheckStatus.PASS
    assert by_id["nodeadm.binary"].status is CheckStatus.FAIL


async def test_only_runs_the_named_checks_in_registry_order(ctx: CheckContext) -> None:
    results = await run_checks(ctx, only=["system.swap", "os.supported"])
    assert [r.id for r in results] == ["os.supported", "system.swap"]


async def test_unknown_id_lists_the_valid_ones(ctx: CheckContext) -> None:
    with pytest.raises(UnknownCheck) as info:
        await run_checks(ctx, only=["system.swap", "system.swapp"])
    assert info.value.check_id == "system.swapp"
    assert info.value.valid == CHECK_IDS
    assert "system.swapp" in str(info.value)
    assert "nodeadm.binary" in str(info.value)


def _check(check_id: str, run: CheckFn, *, timeout_s: float = 5.0, needs: bool = False) -> Check:
    return Check(check_id, f"title of {check_id}", "the default remedy", timeout_s, needs, run)


async def test_a_hanging_check_times_out_and_the_run_goes_on(ctx: CheckContext) -> None:
    async def hang(_: CheckContext) -> CheckVerdict:
        await asyncio.sleep(30)
        return passed("never")

    async def fine(_: CheckContext) -> CheckVerdict:
        return passed("fine")

    checks = [_check("t.hang", hang, timeout_s=0.2), _check("t.fine", fine)]
    hung, ok = await run_checks(ctx, checks=checks)
    assert hung.status is CheckStatus.ERROR
    assert hung.message == "timed out after 0.2 s"
    assert hung.remedy
    assert 150 <= hung.duration_ms < 2000
    assert ok.status is CheckStatus.PASS


async def test_an_exception_is_an_error_result_with_its_message(ctx: CheckContext) -> None:
    async def boom(_: CheckContext) -> CheckVerdict:
        raise ValueError("mountinfo line 7 is garbage")

    async def own_timeout(_: CheckContext) -> CheckVerdict:
        raise TimeoutError("the check's own timeout, not the runner's")

    results = await run_checks(ctx, checks=[_check("t.boom", boom), _check("t.own", own_timeout)])
    assert [r.status for r in results] == [CheckStatus.ERROR, CheckStatus.ERROR]
    assert "ValueError: mountinfo line 7 is garbage" in results[0].message
    assert "the check's own timeout" in results[1].message
    log = ctx.log
    assert isinstance(log, CapturingLog)
    assert any(e["check"] == "t.boom" for e in log.events("check.crashed"))


async def test_default_remedy_fills_problems_only(ctx: CheckContext) -> None:
    async def bad(_: CheckContext) -> CheckVerdict:
        return failed("it is broken", details={"why": 1})

    async def good(_: CheckContext) -> CheckVerdict:
        return passed("it works")

    bad_r, good_r = await run_checks(ctx, checks=[_check("t.bad", bad), _check("t.good", good)])
    assert bad_r.remedy == "the default remedy"
    assert bad_r.details == {"why": 1}
    assert bad_r.title == "title of t.bad"
    assert good_r.remedy == ""


async def test_needs_assignment_runs_once_there_is_one(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    seen = []

    async def record(c: CheckContext) -> CheckVerdict:
        seen.append(c.assignment)
        return passed("ran")

    check = _check("t.needs", record, needs=True)
    cfg = config(tmp_path, root)
    [skipped] = await run_checks(context(cfg), checks=[check])
    assert skipped.status is CheckStatus.SKIP
    assert not seen
    [ran] = await run_checks(context(cfg, assignment()), checks=[check])
    assert ran.status is CheckStatus.PASS
    assert seen


def test_build_takes_root_and_state_dir_from_the_config(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    cfg = config(tmp_path, root)
    built = CheckContext.build(cfg, addresses=("10.0.0.1",))
    assert built.host.root == root
    assert built.state_dir == tmp_path / "state"
    assert built.allow_changes is False
    assert built.arch in ("x86_64", "aarch64") or built.arch
