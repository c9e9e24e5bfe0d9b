"""What `edge-agent status` reports: whether the daemon runs, and the host's last known state.

Read from ``state_dir`` only, so it answers with or without a daemon, broker or controller.
Whether a daemon runs comes from its pid file and the process's liveness (a file left by a
crash does not count). The phase is the persisted one: after a stop it is the phase the host
was left in, and before any run there is none, so none is shown (no phase or time is made
up). Exit code 0 when the daemon runs, 3 when not, as LSB ``status`` and ``systemctl
status`` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.timefmt import iso
from agent.state.pidfile import liveness
from agent.state.store import StateStore
from agent.status import checks_object, status_from

EX_RUNNING, EX_NOT_RUNNING = 0, 3


@dataclass(frozen=True)
class StatusReport:
    status: dict[str, Any]  # the Status object, with running, pid and running_since
    ever_ran: bool
    stale_pid: int | None  # a pid file whose process is gone (an unclean stop)

    @property
    def running(self) -> bool:
        return bool(self.status["running"])

    @property
    def exit_code(self) -> int:
        return EX_RUNNING if self.running else EX_NOT_RUNNING


def read_report(state_dir: Path, *, uid: str | None, mode: str, now: float) -> StatusReport:
    live = liveness(state_dir)
    running = live.running and live.record is not None
    saved: dict[str, Any] = {}
    try:
        doc = json.loads((state_dir / "status.json").read_text())
        saved = doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        saved = {}
    ever_ran = bool(saved) or any(
        (state_dir / name).exists() for name in ("state.json", "state.json.bak")
    )
    ts = iso(now)
    if ever_ran:
        # The state file is the truth; status.json adds what only the daemon knows (seq).
        loaded = StateStore(state_dir).load()
        status = status_from(
            loaded.state,
            uid=uid or str(saved.get("uid") or ""),
            mode=mode,
            seq=int(saved.get("seq") or 0),
            ts=ts,
            nodeadm_version=loaded.extra.get("nodeadm_version"),
            checks=checks_object(loaded.checks, loaded.checks_ts),
        )
        if loaded.state.phase_since is None:
            status["phase_since"] = None  # never stamped: say so rather than "now"
    else:
        status = _never_ran(uid, mode, ts)
    rec = live.record
    status["running"] = running
    status["pid"] = rec.pid if running and rec else None
    status["running_since"] = iso(rec.started) if running and rec and rec.started else None
    stale = rec.pid if rec is not None and not running else None
    return StatusReport(status, ever_ran, stale)


def _never_ran(uid: str | None, mode: str, ts: str) -> dict[str, Any]:
    from agent import __version__

    keys = (
        "phase",
        "phase_since",
        "kubernetes_version",
        "target_kubernetes_version",
        "node_name",
        "credential_provider",
        "assignment_revision",
        "nodeadm_version",
        "checks",
        "last_error",
    )
    return {
        "uid": uid,
        "agent_version": __version__,
        "mode": mode,
        "ts": ts,
        "seq": None,
        **dict.fromkeys(keys),
    }


def render(report: StatusReport, state_dir: Path) -> str:
    s = report.status
    if report.running:
        lines = [f"edge-agent: running (pid {s['pid']}) since {s['running_since'] or '?'}"]
    elif report.stale_pid is not None:
        lines = [
            f"edge-agent: not running (pid {report.stale_pid} in its pid file is gone: "
            "the daemon did not stop cleanly)"
        ]
    else:
        lines = ["edge-agent: not running"]
    if not report.ever_ran:
        lines.append(f"no state in {state_dir}: the daemon has not run with this configuration")
        return "\n".join(lines)
    last = "phase" if report.running else "last phase"
    since = f" since {s['phase_since']}" if s["phase_since"] else ""
    lines += [
        f"uid:        {s['uid'] or '-'}",
        f"{last + ':':<12}{s['phase']}{since}",
        f"kubernetes: {s['kubernetes_version'] or '-'} "
        f"(target {s['target_kubernetes_version'] or '-'})",
        f"node:       {s['node_name'] or '-'}  provider {s['credential_provider'] or '-'}"
        f"  assignment revision {s['assignment_revision'] or '-'}",
    ]
    c = s["checks"]
    if c:
        failing = ", ".join(c["failing"]) or "none"
        lines.append(
            f"checks:     {c['passed']} passed, {c['warned']} warned, {c['failed']} failed "
            f"(failing: {failing}) at {c['ts']}"
        )
    le = s["last_error"]
    if le:
        lines.append(f"last error: {le['code']}: {le['message']} ({le['ts']})")
    return "\n".join(lines)
