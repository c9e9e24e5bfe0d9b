"""A host whose agent lost its own state: what the host's facts say is already done.

The rule: tracker present, kubelet ``active`` and a node identity (SSM registration, or the
IAM-RA node name) mean the host is joined: resume in ``joined``, running nothing. The tracker
alone means an install finished: record the installed version, so the join's preflight skips
install when it is the wanted one and runs ``nodeadm init`` only. Nothing at all: a fresh
join. The tracker holds no version and ``nodeadm init`` never compares the installed kubelet
with the wanted one, so the version is what the installed kubelet reports
(``kubelet --version``), never assumed from the assignment; a tracker whose kubelet does not
say leaves nothing recorded as installed, and the (idempotent) install runs again. Pure:
`step()` applies it to a `HostRecovered` event.
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
        have = facts.kubelet_version
        if have is not None and have.split(".")[:2] == a.kubernetes_version.split(".")[:2]:
            return (
                f"recovered from the host ({seen}): kubelet reports {have}, so Kubernetes "
                f"{a.kubernetes_version} is installed; the join runs nodeadm init only"
            )
        return (
            f"recovered from the host ({seen}): kubelet reports {have or 'no version'}, not "
            f"Kubernetes {a.kubernetes_version}; the join installs it again"
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
            op_args=None,
            # A joined host whose kubelet did not say its version keeps the assignment's: it
            # runs and is registered, and the next assignment's upgrade check still applies.
            installed_version=facts.kubelet_version or a.kubernetes_version,
            joined_identity=a.identity(),
            node_name=facts.node_name,
            failures=0,
            retry_at=None,
            unhealthy_since=None,
        )
    if facts.tracker:
        return replace(state, installed_version=facts.kubelet_version)
    return state


__all__ = ["HostFacts", "recovered_state", "recovery_reason"]
