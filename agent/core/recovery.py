"""A host whose agent lost its own state: what the host's facts say is already done.

The rule: tracker present, kubelet ``active`` and a node identity (SSM registration, or the
IAM-RA node name) mean the host is joined: resume in ``joined`` with the assignment's
Kubernetes version, running nothing. The tracker alone means an install finished: record the
assignment's version as installed, so the join's preflight skips install and runs ``nodeadm
init`` only. Nothing at all: a fresh join. The tracker holds no version, so the assignment's
is assumed; a host installed with another version is caught by nodeadm (init) or by the next
upgrade, as it would be for any host. Pure: `step()` applies it to a `HostRecovered` event.
"""

from __future__ import annotations

from dataclasses import replace

from agent.core.assignment import Assignment
from agent.core.phases import HostFacts, Phase, State


def _joined(facts: HostFacts) -> bool:
    return facts.tracker and facts.kubelet == "active" and bool(facts.node_name)


def recovery_reason(a: Assignment, facts: HostFacts) -> str:
    """What the facts mean, in words, for the log and the ``state_lost`` event."""
    seen = (
        f"tracker {'present' if facts.tracker else 'absent'}, kubelet {facts.kubelet}, "
        f"node {facts.node_name or 'not registered'}"
    )
    if _joined(facts):
        return f"recovered from the host ({seen}): already joined"
    if facts.tracker:
        return (
            f"recovered from the host ({seen}): Kubernetes {a.kubernetes_version} taken as "
            "installed; the join runs nodeadm init only"
        )
    return f"nothing done on the host ({seen}): a fresh join"


def recovered_state(state: State, a: Assignment, facts: HostFacts, now: float) -> State:
    """The state the facts call for (the assignment itself is then taken as usual)."""
    if _joined(facts):
        return replace(
            state,
            phase=Phase.JOINED,
            phase_since=now,
            reason=recovery_reason(a, facts),
            assignment=a,
            op=None,
            op_args={},
            installed_version=a.kubernetes_version,
            joined_identity=a.identity(),
            node_name=facts.node_name,
            failures=0,
            retry_at=None,
            unhealthy_since=None,
        )
    if facts.tracker:
        return replace(state, installed_version=a.kubernetes_version)
    return state


__all__ = ["HostFacts", "recovered_state", "recovery_reason"]
