"""Table-driven tests of the pure lifecycle state machine (docs/architecture.md): no fixtures, no I/O."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from agent.core import lifecycle as lc
from agent.core.assignment import parse_assignment
from agent.testing import sample_assignment

BASE: dict[str, Any] = sample_assignment(cluster__name="c1")
P = lc.Policy(retry_backoff_s=60, retry_cap_s=1800, degraded_after_s=120)


def asg(**changes: Any) -> Any:
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        if k == "cluster_name":
            d["cluster"]["name"] = v
        else:
            d[k] = v
    return parse_assignment(d)


def joined(version: str = "1.31") -> lc.State:
    a = asg(kubernetes_version=version)
    return lc.State(
        phase=lc.Phase.JOINED,
        assignment=a,
        installed_version=version,
        joined_identity=a.identity(),
        node_name="mi-0123456789abcdef0",
    )


def run(s: lc.State, *events: lc.Event, now: float = 1000.0, p: lc.Policy = P):
    actions: list[lc.Action] = []
    for e in events:
        s, acts = lc.step(s, e, now, p)
        actions.extend(acts)
    return s, actions


def steps(actions: list[lc.Action]) -> list[str]:
    return [
        a.step if isinstance(a, lc.RunStep) else type(a).__name__
        for a in actions
        if not isinstance(a, lc.Note)
    ]


def test_fresh_host_walks_every_phase_to_joined() -> None:
    s, acts = run(lc.State(), lc.Boot(registering=True))
    assert s.phase is lc.Phase.REGISTERING and acts == []
    s, _ = run(s, lc.Registered())
    assert s.phase is lc.Phase.AWAITING_ASSIGNMENT
    s, acts = run(s, lc.AssignmentArrived(asg()))
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]
    s, acts = run(s, lc.ChecksDone(blocking=(), tracker_present=False))
    assert s.phase is lc.Phase.INSTALLING and steps(acts) == ["install"]
    s, acts = run(s, lc.StepDone("install", ok=True))
    assert s.phase is lc.Phase.JOINING and steps(acts) == ["init"]
    assert s.installed_version == "1.31"
    s, acts = run(s, lc.StepDone("init", ok=True, node_name="mi-1"))
    assert s.phase is lc.Phase.JOINED and acts == [] and s.node_name == "mi-1"
    assert s.joined_identity == ("c1", "us-west-2", "ssm") and s.last_error is None


def test_without_controller_boot_goes_straight_to_awaiting_assignment() -> None:
    s, _ = run(lc.State(), lc.Boot(registering=False))
    assert s.phase is lc.Phase.AWAITING_ASSIGNMENT


@pytest.mark.parametrize(
    ("tracker", "installed", "expected_step"),
    [
        (True, "1.31", "init"),
        (False, "1.31", "install"),
        (True, None, "install"),
        (True, "1.30", "install"),
    ],
)
def test_install_skipped_only_when_tracker_and_recorded_version_agree(
    tracker: bool, installed: str | None, expected_step: str
) -> None:
    s = lc.State(
        phase=lc.Phase.PREFLIGHT, assignment=asg(), op=lc.Op.JOIN, installed_version=installed
    )
    _, acts = run(s, lc.ChecksDone(blocking=(), tracker_present=tracker))
    assert steps(acts) == [expected_step]


APPLIANCE = replace(P, appliance=True)


@pytest.mark.parametrize(
    ("wanted", "tracker", "kubelet", "phase", "step", "installed", "says"),
    [
        ("1.31", True, "1.31.7", lc.Phase.JOINING, "init", "1.31.7", None),
        ("1.31.7", True, "1.31.7", lc.Phase.JOINING, "init", "1.31.7", None),
        ("1.31.2", True, "1.31.7", lc.Phase.FAILED, None, None, "carries Kubernetes 1.31.7"),
        ("1.31", True, "1.30.5", lc.Phase.FAILED, None, None, "carries Kubernetes 1.30.5"),
        ("1.31", False, "1.31.7", lc.Phase.FAILED, None, None, "no /opt/nodeadm/tracker"),
        ("1.31", True, None, lc.Phase.FAILED, None, None, "no kubelet that reports"),
    ],
)
def test_appliance_never_installs_and_inits_only_the_image_version(
    wanted: str,
    tracker: bool,
    kubelet: str | None,
    phase: lc.Phase,
    step: str | None,
    installed: str | None,
    says: str | None,
) -> None:
    s = lc.State(phase=lc.Phase.PREFLIGHT, assignment=asg(kubernetes_version=wanted), op=lc.Op.JOIN)
    done = lc.ChecksDone(blocking=(), tracker_present=tracker, kubelet_version=kubelet)
    s, acts = run(s, done, p=APPLIANCE)
    assert s.phase is phase
    assert steps(acts) == ([step] if step else [])
    assert s.installed_version == installed
    if says is None:
        assert s.last_error is None
    else:
        assert s.last_error is not None and s.last_error.code == "requires_new_image"
        assert says in s.last_error.message and f"Kubernetes {wanted} needs" in s.last_error.message
        assert s.retry_at is not None  # looked at again later; a boot looks at once (below)


def test_appliance_boot_rechecks_the_image_instead_of_resuming_an_install() -> None:
    s = lc.State(phase=lc.Phase.INSTALLING, assignment=asg(), op=lc.Op.JOIN)
    s, acts = run(s, lc.Boot(registering=False), p=APPLIANCE)
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]
    # Agent mode resumes the interrupted install, as before.
    s, acts = run(replace(s, phase=lc.Phase.INSTALLING), lc.Boot(registering=False))
    assert steps(acts) == ["install"]


def test_a_boot_after_requires_new_image_looks_at_the_image_at_once() -> None:
    s = lc.State(phase=lc.Phase.PREFLIGHT, assignment=asg(), op=lc.Op.JOIN, failures=8)
    s, _ = run(s, lc.ChecksDone((), tracker_present=True, kubelet_version="1.30.5"), p=APPLIANCE)
    assert s.retry_at == 1000.0 + 1800  # capped backoff
    s, _ = run(s, lc.Boot(registering=False), now=2000.0, p=APPLIANCE)
    s, acts = run(s, lc.Tick(), now=2000.0, p=APPLIANCE)
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]
    s, acts = run(s, lc.ChecksDone((), tracker_present=True, kubelet_version="1.31.1"), p=APPLIANCE)
    assert s.phase is lc.Phase.JOINING and steps(acts) == ["init"]


def test_blocking_checks_fail_preflight_and_retry_with_capped_backoff() -> None:
    s = lc.State(phase=lc.Phase.PREFLIGHT, assignment=asg(), op=lc.Op.JOIN)
    s, acts = run(s, lc.ChecksDone(blocking=("system.swap",), tracker_present=False), now=0)
    assert s.phase is lc.Phase.PREFLIGHT_FAILED and acts == []
    assert s.last_error and s.last_error.code == "preflight_failed"
    assert "system.swap" in s.last_error.message and s.retry_at == 60
    s, acts = run(s, lc.Tick(), now=59)
    assert acts == [] and s.phase is lc.Phase.PREFLIGHT_FAILED
    s, acts = run(s, lc.Tick(), now=60)
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]
    delays = []
    for n in range(10):
        s, _ = run(s, lc.ChecksDone(blocking=("x",), tracker_present=False), now=1000.0 * n)
        delays.append(s.retry_at - 1000.0 * n)
        s = replace(s, phase=lc.Phase.PREFLIGHT)
    assert delays[:3] == [120, 240, 480] and max(delays) == 1800


def test_nodeadm_failure_records_code_and_retries_the_same_operation() -> None:
    s = lc.State(phase=lc.Phase.INSTALLING, assignment=asg(), op=lc.Op.JOIN)
    s, _ = run(
        s,
        lc.StepDone("install", ok=False, code="package_install_timeout", message="apt timed out"),
        now=10,
    )
    assert s.phase is lc.Phase.FAILED and s.last_error.code == "package_install_timeout"
    s, acts = run(s, lc.Tick(), now=10 + 60)
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]


def test_a_stale_step_result_is_ignored() -> None:
    s = lc.State(phase=lc.Phase.JOINING, assignment=asg(), op=lc.Op.JOIN)
    s2, acts = run(s, lc.StepDone("install", ok=True))
    assert s2 == s and acts == []


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (lc.Phase.INSTALLING, ["install"]),
        (lc.Phase.JOINING, ["init"]),
        (lc.Phase.UPGRADING, ["upgrade"]),
        (lc.Phase.UNINSTALLING, ["uninstall"]),
        (lc.Phase.PREFLIGHT, ["RunChecks"]),
        (lc.Phase.JOINED, []),
        (lc.Phase.DEGRADED, []),
    ],
)
def test_restart_resumes_the_persisted_phase(phase: lc.Phase, expected: list[str]) -> None:
    s = lc.State(phase=phase, assignment=asg(), op=lc.Op.JOIN, installed_version="1.31")
    s2, acts = run(s, lc.Boot(registering=True))
    assert s2.phase is phase and steps(acts) == expected


def test_joined_host_does_not_leave_joined_when_registration_fails() -> None:
    s, _ = run(
        joined(),
        lc.Boot(registering=True),
        lc.ErrorSeen("controller_unreachable", "connect refused"),
    )
    assert s.phase is lc.Phase.JOINED and s.last_error.code == "controller_unreachable"
    s, _ = run(s, lc.ErrorCleared("controller_unreachable"))
    assert s.last_error is None


@pytest.mark.parametrize(
    ("change", "drained", "appliance", "phase", "code", "step"),
    [
        ({"kubernetes_version": "1.32"}, False, False, lc.Phase.JOINED, "awaiting_drain", None),
        ({"kubernetes_version": "1.32"}, True, False, lc.Phase.UPGRADING, None, "upgrade"),
        ({"kubernetes_version": "1.32"}, True, True, lc.Phase.JOINED, "requires_new_image", None),
        ({"cluster_name": "c2"}, False, False, lc.Phase.JOINED, "awaiting_drain", None),
        ({"cluster_name": "c2"}, True, False, lc.Phase.UNINSTALLING, None, "uninstall"),
        ({"cluster_name": "c2"}, True, True, lc.Phase.UNINSTALLING, None, "uninstall"),
        ({}, False, False, lc.Phase.JOINED, None, None),
    ],
)
def test_new_assignment_on_a_joined_host(
    change: dict[str, Any],
    drained: bool,
    appliance: bool,
    phase: lc.Phase,
    code: str | None,
    step: str | None,
) -> None:
    a = asg(revision=2, drained=drained, **change)
    s, acts = run(joined(), lc.AssignmentArrived(a), p=replace(P, appliance=appliance))
    assert s.phase is phase
    assert (s.last_error.code if s.last_error else None) == code
    assert steps(acts) == ([step] if step else [])


def test_upgrade_success_records_the_new_version() -> None:
    s, acts = run(
        joined(), lc.AssignmentArrived(asg(revision=2, kubernetes_version="1.32", drained=True))
    )
    assert acts[-1] == lc.RunStep("upgrade", lc.UpgradeArgs("1.32", drained=True))
    s, _ = run(s, lc.StepDone("upgrade", ok=True))
    assert s.phase is lc.Phase.JOINED and s.installed_version == "1.32" and s.op is None


def test_new_cluster_uninstalls_then_joins_fresh() -> None:
    s, acts = run(joined(), lc.AssignmentArrived(asg(revision=2, cluster_name="c2", drained=True)))
    assert acts[-1] == lc.RunStep(
        "uninstall", lc.UninstallArgs(force=False, drained=True, remove_kubelet_certs=True)
    )
    s, acts = run(s, lc.StepDone("uninstall", ok=True))
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]
    assert s.installed_version is None and s.joined_identity is None
    s, acts = run(s, lc.ChecksDone(blocking=(), tracker_present=False))
    assert steps(acts) == ["install"]


def test_older_revision_is_ignored_with_a_note() -> None:
    s0 = replace(joined(), assignment=asg(revision=5))
    s, acts = run(
        s0, lc.AssignmentArrived(asg(revision=4, kubernetes_version="1.32", drained=True))
    )
    assert s == s0
    assert isinstance(acts[0], lc.Note) and acts[0].fields["action"] == "ignored"


def test_join_auto_off_waits_for_the_join_command() -> None:
    p = replace(P, auto_join=False)
    s, _ = run(lc.State(phase=lc.Phase.AWAITING_ASSIGNMENT), lc.AssignmentArrived(asg()), p=p)
    assert s.phase is lc.Phase.AWAITING_ASSIGNMENT
    s, acts = run(s, lc.JoinRequested(), p=p)
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]


def test_join_without_assignment_is_an_error_not_a_crash() -> None:
    s, acts = run(lc.State(phase=lc.Phase.AWAITING_ASSIGNMENT), lc.JoinRequested())
    assert acts == [] and s.last_error.code == "no_assignment"


def test_degraded_after_sustained_unhealthiness_and_back() -> None:
    s, _ = run(joined(), lc.HealthObserved(False), now=0)
    assert s.phase is lc.Phase.JOINED and s.unhealthy_since == 0
    s, _ = run(s, lc.HealthObserved(False), now=119)
    assert s.phase is lc.Phase.JOINED
    s, _ = run(s, lc.HealthObserved(False), now=120)
    assert s.phase is lc.Phase.DEGRADED
    s, _ = run(s, lc.HealthObserved(True), now=130)
    assert s.phase is lc.Phase.JOINED and s.unhealthy_since is None


def test_a_brief_blip_does_not_degrade() -> None:
    s, _ = run(joined(), lc.HealthObserved(False), now=0)
    s, _ = run(s, lc.HealthObserved(True), now=50)
    s, _ = run(s, lc.HealthObserved(False), now=100)
    s, _ = run(s, lc.HealthObserved(False), now=200)
    assert s.phase is lc.Phase.JOINED


def test_uninstall_command_sticks_until_a_join() -> None:
    s, acts = run(joined(), lc.UninstallRequested(force=True, drained=True))
    assert s.phase is lc.Phase.UNINSTALLING and acts[0].args == lc.UninstallArgs(
        force=True, drained=True
    )
    s, _ = run(s, lc.StepDone("uninstall", ok=True))
    assert s.phase is lc.Phase.UNINSTALLED
    s, acts = run(s, lc.AssignmentArrived(asg(revision=2)))
    assert s.phase is lc.Phase.UNINSTALLED and steps(acts) == []
    s, acts = run(s, lc.JoinRequested())
    assert s.phase is lc.Phase.PREFLIGHT


def test_canceled_step_fails_without_automatic_retry() -> None:
    s = lc.State(phase=lc.Phase.INSTALLING, assignment=asg(), op=lc.Op.JOIN)
    s, _ = run(s, lc.StepDone("install", ok=False, canceled=True))
    assert s.phase is lc.Phase.FAILED and s.last_error.code == "canceled" and s.retry_at is None
    s, acts = run(s, lc.Tick(), now=10**9)
    assert acts == []


def test_state_round_trips_through_json() -> None:
    s = replace(
        joined(),
        last_error=lc.LastError("awaiting_drain", "m", 5.0),
        failures=2,
        op=lc.Op.UPGRADE,
        op_args=lc.UpgradeArgs("1.32", drained=True),
    )
    again = lc.from_json(lc.to_json(s), parse_assignment)
    assert again == s


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (lc.Op.JOIN, None),
        (lc.Op.UPGRADE, lc.UpgradeArgs("1.32.4", drained=True)),
        (lc.Op.UPGRADE, lc.UpgradeArgs("1.32", drained=False)),
        (lc.Op.UNINSTALL, lc.UninstallArgs(force=True, drained=False)),
        (lc.Op.REJOIN, lc.UninstallArgs(force=False, drained=True, remove_kubelet_certs=True)),
    ],
)
def test_every_operations_arguments_round_trip_through_json(
    op: lc.Op, args: lc.OpArgs
) -> None:
    s = replace(joined(), phase=lc.Phase.FAILED, op=op, op_args=args)
    assert lc.from_json(lc.to_json(s), parse_assignment) == s


@pytest.mark.parametrize(
    ("op", "raw", "expected"),
    [
        # What earlier releases wrote: one flat object, keys by operation.
        (
            "upgrade",
            {"kubernetes_version": "1.32", "drained": True},
            lc.UpgradeArgs("1.32", drained=True),
        ),
        (
            "uninstall",
            {"force": True, "drained": True},
            lc.UninstallArgs(force=True, drained=True),
        ),
        (
            "rejoin",
            {"force": False, "drained": True, "remove_kubelet_certs": True},
            lc.UninstallArgs(drained=True, remove_kubelet_certs=True),
        ),
        # A key this release does not know is ignored, not fatal.
        (
            "upgrade",
            {"kubernetes_version": "1.32", "drained": True, "surge": 3},
            lc.UpgradeArgs("1.32", drained=True),
        ),
        ("upgrade", {}, lc.UpgradeArgs()),
        ("upgrade", None, lc.UpgradeArgs()),
        ("join", {}, None),
        (None, {"force": True}, None),
    ],
)
def test_op_args_from_an_older_state_file(
    op: str | None, raw: dict[str, Any] | None, expected: lc.OpArgs
) -> None:
    d = {"phase": "failed", "op": op, "op_args": raw}
    assert lc.from_json(d, parse_assignment).op_args == expected


def test_op_args_missing_from_an_older_state_file() -> None:
    s = lc.from_json({"phase": "upgrading", "op": "upgrade"}, parse_assignment)
    assert s.op_args == lc.UpgradeArgs()


def test_link_errors_never_hide_or_clear_a_lifecycle_failure() -> None:
    s = lc.State(
        phase=lc.Phase.FAILED,
        assignment=asg(),
        op=lc.Op.JOIN,
        last_error=lc.LastError("ssm_activation_expired", "expired", 1.0),
    )
    s2, _ = run(
        s, lc.ErrorSeen("controller_unreachable", "down"), lc.ErrorCleared("controller_unreachable")
    )
    assert s2.last_error == s.last_error
    s3, _ = run(
        joined(),
        lc.ErrorSeen("broker_unreachable", "down"),
        lc.ErrorSeen("controller_unreachable", "down too"),
    )
    assert s3.last_error is not None and s3.last_error.code == "controller_unreachable"


def test_a_cancel_holds_across_a_restart_until_a_new_join() -> None:
    s = lc.State(phase=lc.Phase.INSTALLING, assignment=asg(), op=lc.Op.JOIN)
    s, _ = run(s, lc.StepDone("install", ok=False, canceled=True))
    s, acts = run(s, lc.Boot(registering=True), lc.Tick(), now=10**9)
    assert s.phase is lc.Phase.FAILED and acts == [] and s.retry_at is None
    s, acts = run(s, lc.JoinRequested())
    assert s.phase is lc.Phase.PREFLIGHT and steps(acts) == ["RunChecks"]


def test_canceled_preflight_is_a_cancel_not_a_failed_check() -> None:
    s = lc.State(phase=lc.Phase.PREFLIGHT, assignment=asg(), op=lc.Op.JOIN)
    s, _ = run(s, lc.ChecksDone(blocking=(), tracker_present=False, canceled=True))
    assert s.phase is lc.Phase.FAILED and s.last_error.code == "canceled" and s.retry_at is None


def test_a_successful_step_keeps_a_link_error_that_still_holds() -> None:
    s = lc.State(
        phase=lc.Phase.JOINING,
        assignment=asg(),
        op=lc.Op.JOIN,
        installed_version="1.31",
        last_error=lc.LastError("broker_unreachable", "down", 1.0),
    )
    s, _ = run(s, lc.StepDone("init", ok=True, node_name="mi-1"))
    assert s.phase is lc.Phase.JOINED and s.last_error is not None
    assert s.last_error.code == "broker_unreachable"
