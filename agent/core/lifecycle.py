"""The host lifecycle (contract §6) as a pure state machine.

``step(state, event, now, policy) -> (state, actions)``: no asyncio, no clock, no I/O. The
driver (agent/lifecycle_driver.py) turns timers, check runs and nodeadm runs into events and
carries out the actions; it persists the state after every step, so a crash at any point
resumes from the last persisted phase and never re-runs a step the state says is done.

The rules an operator relies on:
- a fresh host goes registering → awaiting_assignment → preflight → installing → joining → joined;
- install is skipped when the tracker exists and the agent recorded this major.minor installed;
- failures go to `failed` (or `preflight_failed`) with `last_error`, retried with capped backoff;
- a new Kubernetes version upgrades, a new cluster/provider uninstalls and re-joins, and both
  wait for the controller's ``drained: true``; appliance images cannot change version in place;
- an interrupted installing/joining/upgrading/uninstalling re-runs that step after a restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from agent._compat import StrEnum
from agent.core.assignment import Assignment
from agent.core.backoff import capped_exponential


class Phase(StrEnum):
    STARTING = "starting"
    REGISTERING = "registering"
    AWAITING_ASSIGNMENT = "awaiting_assignment"
    PREFLIGHT = "preflight"
    PREFLIGHT_FAILED = "preflight_failed"
    INSTALLING = "installing"
    JOINING = "joining"
    JOINED = "joined"
    DEGRADED = "degraded"
    FAILED = "failed"
    UPGRADING = "upgrading"
    UNINSTALLING = "uninstalling"
    UNINSTALLED = "uninstalled"


# Phases in which a nodeadm step is (or was, before a crash) running.
RUNNING_PHASES = MappingProxyType(
    {
        Phase.INSTALLING: "install",
        Phase.JOINING: "init",
        Phase.UPGRADING: "upgrade",
        Phase.UNINSTALLING: "uninstall",
    }
)
NODE_PHASES = frozenset({Phase.JOINED, Phase.DEGRADED})
# Errors of the agent's links (controller, broker) rather than of the host's lifecycle.
LINK_CODES = frozenset(
    {
        "controller_unreachable",
        "registration_failed",
        "registration_refused",
        "uid_conflict",
        "broker_unreachable",
        "broker_refused",
    }
)


class Op(StrEnum):
    """What the agent is trying to achieve; kept so a retry resumes the right thing."""

    JOIN = "join"
    UPGRADE = "upgrade"
    REJOIN = "rejoin"  # uninstall, then a fresh join (new cluster or provider)
    UNINSTALL = "uninstall"


@dataclass(frozen=True)
class LastError:
    code: str
    message: str
    ts: float


@dataclass(frozen=True)
class Policy:
    auto_join: bool = True
    appliance: bool = False
    retry_backoff_s: float = 60.0
    retry_cap_s: float = 1800.0
    degraded_after_s: float = 120.0


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.STARTING
    phase_since: float = 0.0
    reason: str = ""
    assignment: Assignment | None = None
    op: Op | None = None
    op_args: dict[str, Any] = field(default_factory=dict)
    installed_version: str | None = None  # what the agent installed: the tracker holds none
    joined_identity: tuple[str, str, str] | None = None
    node_name: str | None = None
    last_error: LastError | None = None
    failures: int = 0
    retry_at: float | None = None
    unhealthy_since: float | None = None

    @property
    def installed_minor(self) -> str | None:
        v = self.installed_version
        return ".".join(v.split(".")[:2]) if v else None


# ---- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    registering: bool  # a controller is configured


@dataclass(frozen=True)
class Registered:
    pass


@dataclass(frozen=True)
class AssignmentArrived:
    assignment: Assignment


@dataclass(frozen=True)
class AssignmentInvalid:
    message: str


@dataclass(frozen=True)
class ErrorSeen:
    """An error outside the lifecycle's own steps (controller, broker); shown, phase kept."""

    code: str
    message: str


@dataclass(frozen=True)
class ErrorCleared:
    code: str


@dataclass(frozen=True)
class ChecksDone:
    blocking: tuple[str, ...]  # ids of failed/errored checks
    tracker_present: bool
    canceled: bool = False


@dataclass(frozen=True)
class StepDone:
    step: str  # install | init | upgrade | uninstall
    ok: bool
    code: str | None = None
    message: str = ""
    node_name: str | None = None
    canceled: bool = False


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class JoinRequested:
    pass


@dataclass(frozen=True)
class UpgradeRequested:
    kubernetes_version: str
    drained: bool


@dataclass(frozen=True)
class UninstallRequested:
    force: bool
    drained: bool


@dataclass(frozen=True)
class HealthObserved:
    healthy: bool


Event = (
    Boot
    | Registered
    | AssignmentArrived
    | AssignmentInvalid
    | ErrorSeen
    | ErrorCleared
    | ChecksDone
    | StepDone
    | Tick
    | JoinRequested
    | UpgradeRequested
    | UninstallRequested
    | HealthObserved
)

# ---- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChecks:
    pass


@dataclass(frozen=True)
class RunStep:
    step: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Note:
    """Something worth an event that is not a phase change (e.g. an ignored assignment)."""

    type: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = RunChecks | RunStep | Note


# ---- helpers ----------------------------------------------------------------------------------


def _go(s: State, phase: Phase, now: float, reason: str, **changes: Any) -> State:
    if phase != s.phase:
        changes.update(phase=phase, phase_since=now, reason=reason)
    return replace(s, **changes)


def _error(code: str, message: str, now: float) -> LastError:
    return LastError(code=code, message=message, ts=now)


def _fail(s: State, phase: Phase, code: str, message: str, now: float, p: Policy) -> State:
    delay = capped_exponential(s.failures, p.retry_backoff_s, p.retry_cap_s)
    return _go(
        s,
        phase,
        now,
        message,
        last_error=_error(code, message, now),
        failures=s.failures + 1,
        retry_at=now + delay,
    )


def _start_op(s: State, op: Op, now: float, reason: str, **args: Any) -> tuple[State, list[Action]]:
    """Begin (or resume) an operation: a join starts with preflight, the others run at once."""
    s = replace(s, op=op, op_args=dict(args), retry_at=None)
    if op is Op.JOIN:
        return _go(s, Phase.PREFLIGHT, now, reason), [RunChecks()]
    if op is Op.UPGRADE:
        return _go(s, Phase.UPGRADING, now, reason), [RunStep("upgrade", dict(args))]
    return _go(s, Phase.UNINSTALLING, now, reason), [RunStep("uninstall", dict(args))]


def _wants_join(s: State, p: Policy) -> bool:
    return p.auto_join or s.op is Op.JOIN


# ---- the machine ------------------------------------------------------------------------------


def step(s: State, ev: Event, now: float, p: Policy) -> tuple[State, list[Action]]:
    """Apply one event; return the new state and what the driver must do."""
    match ev:
        case Boot():
            return _boot(s, ev, now, p)
        case Registered():
            if s.phase is Phase.REGISTERING:
                return _go(s, Phase.AWAITING_ASSIGNMENT, now, "registered"), []
            return s, []
        case AssignmentArrived():
            return _assignment(s, ev.assignment, now, p)
        case AssignmentInvalid():
            return replace(s, last_error=_error("bad_assignment", ev.message, now)), []
        case ErrorSeen():
            # A link's trouble never hides why the host itself failed (and its recovery
            # must not clear that reason): it only takes an empty or link-owned slot.
            if s.last_error is not None and s.last_error.code not in LINK_CODES:
                return s, []
            return replace(s, last_error=_error(ev.code, ev.message, now)), []
        case ErrorCleared():
            if s.last_error and s.last_error.code == ev.code:
                return replace(s, last_error=None), []
            return s, []
        case ChecksDone():
            return _checks_done(s, ev, now, p)
        case StepDone():
            return _step_done(s, ev, now, p)
        case Tick():
            return _tick(s, now, p)
        case JoinRequested():
            return _join_requested(s, now, p)
        case UpgradeRequested():
            return _start_op(
                s,
                Op.UPGRADE,
                now,
                "upgrade command",
                kubernetes_version=ev.kubernetes_version,
                drained=ev.drained,
            )
        case UninstallRequested():
            return _start_op(
                s, Op.UNINSTALL, now, "uninstall command", force=ev.force, drained=ev.drained
            )
        case HealthObserved():
            return _health(s, ev.healthy, now, p)
    return s, []


def _boot(s: State, ev: Boot, now: float, p: Policy) -> tuple[State, list[Action]]:
    """Resume from the persisted phase; only a host with nothing yet starts from registration."""
    if s.phase in RUNNING_PHASES:
        step_name = RUNNING_PHASES[s.phase]
        return replace(s, retry_at=None), [RunStep(step_name, dict(s.op_args))]
    if s.phase is Phase.PREFLIGHT:
        return s, [RunChecks()]
    if s.phase in (Phase.FAILED, Phase.PREFLIGHT_FAILED):
        if s.last_error is not None and s.last_error.code == "canceled":
            return s, []  # an operator's cancel holds across restarts, until a new join
        # Retry soon after a restart, but keep the backoff if it was already long.
        retry = s.retry_at if s.retry_at is not None else now
        return replace(s, retry_at=retry), []
    if s.phase in NODE_PHASES or s.phase is Phase.UNINSTALLED:
        return s, []
    if s.assignment is not None:
        if _wants_join(s, p):
            return _start_op(s, Op.JOIN, now, "resuming with the persisted assignment")
        return _go(s, Phase.AWAITING_ASSIGNMENT, now, "waiting for a join command"), []
    if ev.registering:
        return _go(s, Phase.REGISTERING, now, "agent started"), []
    return _go(s, Phase.AWAITING_ASSIGNMENT, now, "agent started"), []


def _assignment(s: State, a: Assignment, now: float, p: Policy) -> tuple[State, list[Action]]:
    old = s.assignment
    if old is not None and a.revision < old.revision:
        note = Note(
            "assignment",
            f"ignored revision {a.revision}: older than {old.revision}",
            {"revision": a.revision, "current": old.revision, "action": "ignored"},
        )
        return s, [note]
    if old is not None and a == replace(old, raw=a.raw) and a.revision == old.revision:
        return s, []
    s = replace(s, assignment=a)
    if s.last_error and s.last_error.code == "bad_assignment":
        s = replace(s, last_error=None)
    note = Note(
        "assignment",
        f"revision {a.revision} accepted",
        {"revision": a.revision, "action": "accepted"},
    )
    if s.phase in NODE_PHASES:
        return _joined_assignment(s, a, now, p, note)
    if s.phase in (
        Phase.STARTING,
        Phase.REGISTERING,
        Phase.AWAITING_ASSIGNMENT,
        Phase.PREFLIGHT_FAILED,
        Phase.FAILED,
        Phase.UNINSTALLED,
    ):
        if s.phase is Phase.UNINSTALLED and s.op is Op.UNINSTALL:
            return replace(s, failures=0), [note]  # an operator's uninstall sticks until join
        if s.op in (Op.UPGRADE, Op.REJOIN, Op.UNINSTALL) and s.phase is Phase.FAILED:
            return replace(s, failures=0), [note]  # retried by Tick with the new assignment
        if _wants_join(s, p):
            s2, acts = _start_op(
                replace(s, failures=0), Op.JOIN, now, f"assignment revision {a.revision}"
            )
            return s2, [note, *acts]
        return _go(s, Phase.AWAITING_ASSIGNMENT, now, "waiting for a join command"), [note]
    # preflight or a nodeadm step is under way: the new assignment is used at the next step.
    return s, [note]


def _joined_assignment(
    s: State, a: Assignment, now: float, p: Policy, note: Note
) -> tuple[State, list[Action]]:
    identity_changed = s.joined_identity is not None and s.joined_identity != a.identity()
    version_changed = _version_changed(s.installed_version, a.kubernetes_version)
    if not identity_changed and not version_changed:
        return replace(s, last_error=None if _awaiting(s) else s.last_error), [note]
    if identity_changed:
        what = "cluster or credential provider changed"
        if not a.drained:
            return replace(
                s,
                last_error=_error(
                    "awaiting_drain",
                    f"{what}: waiting for the controller to drain the node "
                    "(assignment drained: true) before uninstalling",
                    now,
                ),
            ), [note]
        s2, acts = _start_op(
            replace(s, last_error=_links_only(s), failures=0),
            Op.REJOIN,
            now,
            what,
            force=False,
            drained=True,
            remove_kubelet_certs=True,
        )
        return s2, [note, *acts]
    if p.appliance:
        return replace(
            s,
            last_error=_error(
                "requires_new_image",
                f"Kubernetes {a.kubernetes_version} needs a new provider "
                f"image: binaries for {s.installed_version} are part of the read-only image",
                now,
            ),
        ), [note]
    if not a.drained:
        return replace(
            s,
            last_error=_error(
                "awaiting_drain",
                f"upgrade to {a.kubernetes_version} waits for the controller to "
                "drain the node (assignment drained: true)",
                now,
            ),
        ), [note]
    s2, acts = _start_op(
        replace(s, last_error=_links_only(s), failures=0),
        Op.UPGRADE,
        now,
        f"upgrade {s.installed_version} -> {a.kubernetes_version}",
        kubernetes_version=a.kubernetes_version,
        drained=True,
    )
    return s2, [note, *acts]


def _version_changed(installed: str | None, wanted: str) -> bool:
    """A patch-level target is compared exactly; a major.minor target by its minor."""
    if installed is None:
        return False
    if wanted.count(".") == 2 and installed.count(".") == 2:
        return wanted != installed
    return wanted.split(".")[:2] != installed.split(".")[:2]


def _links_only(s: State) -> LastError | None:
    """What is left of last_error once the host's own trouble is over: a link's error, if any."""
    return s.last_error if s.last_error and s.last_error.code in LINK_CODES else None


def _awaiting(s: State) -> bool:
    return s.last_error is not None and s.last_error.code in (
        "awaiting_drain",
        "requires_new_image",
    )


def _checks_done(s: State, ev: ChecksDone, now: float, p: Policy) -> tuple[State, list[Action]]:
    if s.phase is not Phase.PREFLIGHT:
        return s, []
    if ev.canceled:
        msg = "preflight canceled"
        return _go(
            s, Phase.FAILED, now, msg, last_error=_error("canceled", msg, now), retry_at=None
        ), []
    if ev.blocking:
        msg = "preflight checks failed: " + ", ".join(ev.blocking)
        return _fail(s, Phase.PREFLIGHT_FAILED, "preflight_failed", msg, now, p), []
    a = s.assignment
    if a is None:
        return _go(s, Phase.AWAITING_ASSIGNMENT, now, "no assignment"), []
    if ev.tracker_present and s.installed_minor == a.minor:
        return _go(s, Phase.JOINING, now, f"Kubernetes {a.minor} already installed"), [
            RunStep("init")
        ]
    return _go(s, Phase.INSTALLING, now, "preflight passed"), [RunStep("install")]


def _step_done(s: State, ev: StepDone, now: float, p: Policy) -> tuple[State, list[Action]]:
    expected = RUNNING_PHASES.get(s.phase)
    if expected != ev.step:
        return s, []
    if not ev.ok:
        if ev.canceled:
            msg = ev.message or f"nodeadm {ev.step} canceled"
            s2 = _go(
                s, Phase.FAILED, now, msg, last_error=_error("canceled", msg, now), retry_at=None
            )
            return s2, []
        return _fail(s, Phase.FAILED, ev.code or "nodeadm_failed", ev.message, now, p), []
    a = s.assignment
    if ev.step == "install":
        assert a is not None
        return _go(
            s,
            Phase.JOINING,
            now,
            f"installed Kubernetes {a.kubernetes_version}",
            installed_version=a.kubernetes_version,
        ), [RunStep("init")]
    if ev.step == "init":
        assert a is not None
        return _go(
            s,
            Phase.JOINED,
            now,
            "nodeadm init succeeded",
            node_name=ev.node_name or s.node_name,
            joined_identity=a.identity(),
            last_error=_links_only(s),
            failures=0,
            retry_at=None,
            op=None,
            op_args={},
            unhealthy_since=None,
        ), []
    if ev.step == "upgrade":
        version = str(s.op_args.get("kubernetes_version") or (a.kubernetes_version if a else ""))
        return _go(
            s,
            Phase.JOINED,
            now,
            f"upgraded to Kubernetes {version}",
            installed_version=version,
            last_error=_links_only(s),
            failures=0,
            op=None,
            op_args={},
            retry_at=None,
        ), []
    # uninstall
    cleared = replace(
        s,
        installed_version=None,
        joined_identity=None,
        node_name=None,
        last_error=_links_only(s),
        failures=0,
        retry_at=None,
    )
    if s.op is Op.REJOIN and a is not None:
        return _start_op(cleared, Op.JOIN, now, "uninstalled; joining the new cluster")
    return _go(
        cleared, Phase.UNINSTALLED, now, "nodeadm uninstall succeeded", op=Op.UNINSTALL, op_args={}
    ), []


def _tick(s: State, now: float, p: Policy) -> tuple[State, list[Action]]:
    if s.phase not in (Phase.FAILED, Phase.PREFLIGHT_FAILED):
        return s, []
    if s.retry_at is None or now < s.retry_at:
        return s, []
    op = s.op or Op.JOIN
    if op is Op.JOIN and not _wants_join(s, p):
        return s, []
    if op is Op.JOIN and s.assignment is None:
        return _go(s, Phase.AWAITING_ASSIGNMENT, now, "no assignment"), []
    return _start_op(s, op, now, f"retry {s.failures} of {op}", **s.op_args)


def _join_requested(s: State, now: float, p: Policy) -> tuple[State, list[Action]]:
    if s.assignment is None:
        return replace(
            s, last_error=_error("no_assignment", "join requested without an assignment", now)
        ), []
    return _start_op(replace(s, failures=0), Op.JOIN, now, "join command")


def _health(s: State, healthy: bool, now: float, p: Policy) -> tuple[State, list[Action]]:
    if s.phase not in NODE_PHASES:
        return s, []
    if healthy:
        if s.phase is Phase.DEGRADED:
            return _go(
                s, Phase.JOINED, now, "kubelet and containerd healthy again", unhealthy_since=None
            ), []
        return (replace(s, unhealthy_since=None) if s.unhealthy_since is not None else s), []
    since = s.unhealthy_since if s.unhealthy_since is not None else now
    if s.phase is Phase.JOINED and now - since >= p.degraded_after_s:
        return _go(
            s, Phase.DEGRADED, now, f"unhealthy for {now - since:.0f} s", unhealthy_since=since
        ), []
    return (replace(s, unhealthy_since=since) if s.unhealthy_since != since else s), []


# ---- persistence form -------------------------------------------------------------------------


def to_json(s: State) -> dict[str, Any]:
    out: dict[str, Any] = {
        f.name: getattr(s, f.name)
        for f in dataclasses.fields(s)
        if f.name not in ("assignment", "last_error", "joined_identity")
    }
    out["phase"] = str(s.phase)
    out["op"] = str(s.op) if s.op else None
    out["assignment"] = dict(s.assignment.raw) if s.assignment else None
    out["last_error"] = dataclasses.asdict(s.last_error) if s.last_error else None
    out["joined_identity"] = list(s.joined_identity) if s.joined_identity else None
    return out


def from_json(d: dict[str, Any], parse: Any) -> State:
    """Rebuild a State; ``parse`` turns the raw assignment dict into an `Assignment`."""
    le = d.get("last_error")
    ident: Sequence[str] | None = d.get("joined_identity")
    return State(
        phase=Phase(d.get("phase", "starting")),
        phase_since=float(d.get("phase_since") or 0.0),
        reason=str(d.get("reason") or ""),
        assignment=parse(d["assignment"]) if d.get("assignment") else None,
        op=Op(d["op"]) if d.get("op") else None,
        op_args=dict(d.get("op_args") or {}),
        installed_version=d.get("installed_version"),
        joined_identity=(str(ident[0]), str(ident[1]), str(ident[2])) if ident else None,
        node_name=d.get("node_name"),
        last_error=LastError(str(le["code"]), str(le["message"]), float(le["ts"])) if le else None,
        failures=int(d.get("failures") or 0),
        retry_at=d.get("retry_at"),
        unhealthy_since=d.get("unhealthy_since"),
    )
