"""A lost state rebuilt from the host's facts, as one event of the pure machine: each row is
what the host shows, and where the lifecycle goes from there (with what it runs next)."""

from __future__ import annotations

import pytest

from agent.core import lifecycle as lc
from agent.core.recovery import recovery_reason
from tests.core.test_lifecycle import asg, run, steps

FRESH = lc.State(phase=lc.Phase.AWAITING_ASSIGNMENT)
SSM_NODE = "mi-0123456789abcdef0"


@pytest.mark.parametrize(
    ("facts", "phase", "installed", "runs", "words"),
    [
        # Tracker, active kubelet and a node identity: joined already, nothing is run.
        (lc.HostFacts(True, "active", SSM_NODE, "1.31.4"), lc.Phase.JOINED, "1.31.4", [],
         "already joined"),
        # Joined, but kubelet did not say its version: the assignment's is kept.
        (lc.HostFacts(True, "active", SSM_NODE), lc.Phase.JOINED, "1.31", [], "already joined"),
        # The tracker alone: what kubelet reports is installed; preflight then skips install.
        (lc.HostFacts(True, "inactive", SSM_NODE, "1.31.4"), lc.Phase.PREFLIGHT, "1.31.4",
         ["RunChecks"], "nodeadm init only"),
        (lc.HostFacts(True, "active", None, "1.31.4"), lc.Phase.PREFLIGHT, "1.31.4",
         ["RunChecks"], "nodeadm init only"),
        # The tracker, but kubelet says nothing: nothing is taken as installed.
        (lc.HostFacts(True, "inactive", SSM_NODE), lc.Phase.PREFLIGHT, None, ["RunChecks"],
         "reports no version, not Kubernetes 1.31; the join installs it again"),
        # Nothing on the host: a fresh join.
        (lc.HostFacts(False, "active", SSM_NODE), lc.Phase.PREFLIGHT, None, ["RunChecks"],
         "a fresh join"),
        (lc.HostFacts(False, "unknown", None), lc.Phase.PREFLIGHT, None, ["RunChecks"],
         "a fresh join"),
    ],
)  # fmt: skip
def test_host_recovered_resumes_where_the_host_is(
    facts: lc.HostFacts, phase: lc.Phase, installed: str | None, runs: list[str], words: str
) -> None:
    a = asg()
    s, actions = run(FRESH, lc.HostRecovered(a, facts), now=50.0)
    assert s.phase is phase
    assert s.assignment == a
    assert s.installed_version == installed
    assert steps(actions) == runs
    assert words in recovery_reason(a, facts)
    if phase is lc.Phase.JOINED:
        assert s.node_name == SSM_NODE and s.joined_identity == a.identity()
        assert s.phase_since == 50.0


def test_an_installed_host_then_runs_init_without_install() -> None:
    a = asg()
    s, _ = run(FRESH, lc.HostRecovered(a, lc.HostFacts(True, "inactive", None, "1.31.4")))
    s, actions = run(s, lc.ChecksDone(blocking=(), tracker_present=True))
    assert s.phase is lc.Phase.JOINING
    assert steps(actions) == ["init"]


def test_a_host_installed_with_another_version_is_installed_again() -> None:
    # aws/eks-hybrid v1.0.20 internal/node/hybrid/versionskew_validator.go: init compares
    # kubelet with the control plane only, never with the version the agent wants, so
    # recovery must not take the assignment's version as the installed one.
    a = asg()  # wants 1.31
    s, _ = run(FRESH, lc.HostRecovered(a, lc.HostFacts(True, "inactive", None, "1.30.11")))
    assert s.installed_version == "1.30.11"
    s, actions = run(s, lc.ChecksDone(blocking=(), tracker_present=True))
    assert s.phase is lc.Phase.INSTALLING
    assert steps(actions) == ["install"]


def test_a_recovered_joined_host_keeps_a_newer_assignment_that_follows() -> None:
    a = asg()
    s, _ = run(FRESH, lc.HostRecovered(a, lc.HostFacts(True, "active", SSM_NODE)))
    s, _ = run(s, lc.AssignmentArrived(asg(revision=2, kubernetes_version="1.32")))
    assert s.phase is lc.Phase.JOINED  # an upgrade waits for the controller's drained: true
    assert s.assignment is not None and s.assignment.revision == 2
