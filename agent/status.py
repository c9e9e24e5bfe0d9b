"""The Status object, built from the lifecycle state and the last checks.

Its published shape is docs/api/schemas/status.schema.json. Used for the retained status
message, the ``get-status`` reply, and `edge-agent status` (agent/status_report.py, which
reads the persisted state). A state disk the agent cannot write (full, failing) is the
agent's own trouble, not the lifecycle's: it is shown as ``last_error``
(``state_storage_full`` / ``state_storage_failed``) unless the host has an error of its own,
which keeps priority as it does over link errors.
"""

from __future__ import annotations

from typing import Any

from agent import __version__
from agent.core import lifecycle as lc
from agent.core.timefmt import iso
from agent.state.record import Record


def checks_object(checks: list[dict[str, Any]], ts: float | None) -> dict[str, Any] | None:
    if not checks or ts is None:
        return None
    blocking = [c for c in checks if c.get("status") in ("fail", "error")]
    return {
        "passed": sum(c.get("status") == "pass" for c in checks),
        "warned": sum(c.get("status") == "warn" for c in checks),
        "failed": len(blocking),
        "failing": [c.get("id") for c in blocking],
        "ts": iso(ts),
    }


def status_from(
    state: lc.State,
    *,
    uid: str,
    mode: str,
    seq: int,
    ts: str,
    nodeadm_version: str | None,
    checks: dict[str, Any] | None,
    storage: lc.LastError | None = None,
) -> dict[str, Any]:
    a = state.assignment
    le = state.last_error
    if storage is not None and (le is None or le.code in lc.LINK_CODES):
        le = storage
    return {
        "uid": uid,
        "agent_version": __version__,
        "mode": mode,
        "phase": str(state.phase),
        "phase_since": iso(state.phase_since) if state.phase_since else ts,
        "ts": ts,
        "seq": seq,
        "kubernetes_version": state.installed_version,
        "target_kubernetes_version": a.kubernetes_version if a else None,
        "node_name": state.node_name or (a.node_name_hint if a else None),
        "credential_provider": a.credential_provider if a else None,
        "assignment_revision": a.revision if a else None,
        "nodeadm_version": nodeadm_version,
        "checks": checks,
        "last_error": {"code": le.code, "message": le.message, "ts": iso(le.ts)} if le else None,
    }


def build_status(
    state: lc.State,
    *,
    uid: str,
    mode: str,
    seq: int,
    ts: str,
    record: Record,
    storage: lc.LastError | None,
) -> dict[str, Any]:
    """The running agent's status: the lifecycle state plus what the record remembers."""
    return status_from(
        state,
        uid=uid,
        mode=mode,
        seq=seq,
        ts=ts,
        nodeadm_version=record.nodeadm_version,
        checks=checks_object(record.checks, record.checks_ts),
        storage=storage,
    )
