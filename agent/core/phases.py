"""The lifecycle's vocabulary: phases, the persisted state, the events that move it and the
actions it asks for. Plain frozen values; `agent.core.lifecycle.step` gives them meaning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.core.assignment import Assignment
from agent.core.codes import LINK_CODES, Step
from agent.core.strenum import StrEnum


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
        Phase.INSTALLING: Step.INSTALL,
        Phase.JOINING: Step.INIT,
        Phase.UPGRADING: Step.UPGRADE,
        Phase.UNINSTALLING: Step.UNINSTALL,
    }
)
NODE_PHASES = frozenset({Phase.JOINED, Phase.DEGRADED})


class Op(StrEnum):
    """What the agent is trying to achieve; kept so a retry resumes the right thing."""

    JOIN = "join"
    UPGRADE = "upgrade"
    REJOIN = "rejoin"  # uninstall, then a fresh join (new cluster or provider)
    UNINSTALL = "uninstall"


@dataclass(frozen=True)
class UpgradeArgs:
    """How an upgrade runs. An empty version means the assignment's (an old state file)."""

    kubernetes_version: str = ""
    drained: bool = False


@dataclass(frozen=True)
class UninstallArgs:
    """How an uninstall runs, for an operator's uninstall and for the first half of a rejoin."""

    force: bool = False
    drained: bool = False
    remove_kubelet_certs: bool = False


# A join takes no arguments: its assignment says everything.
OpArgs = UpgradeArgs | UninstallArgs | None


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
    op_args: OpArgs = None
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
    kubelet_version: str | None = None  # what the host's kubelet reports (``1.31.7``), if any


@dataclass(frozen=True)
class StepDone:
    step: Step
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


@dataclass(frozen=True)
class HostFacts:
    """What the host itself shows of an earlier join: its facts."""

    tracker: bool  # nodeadm's tracker exists under the host root: an install finished
    kubelet: str  # `systemctl is-active kubelet`
    node_name: str | None  # the SSM managed instance id, or the IAM Roles Anywhere node name
    kubelet_version: str | None = None  # what `kubelet --version` reports (``1.31.7``), if any


@dataclass(frozen=True)
class HostRecovered:
    """The agent's state was lost; the host was asked what is done before ``assignment``
    is acted on (agent/core/recovery.py has the rule)."""

    assignment: Assignment
    facts: HostFacts


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
    | HostRecovered
)

# ---- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChecks:
    pass


@dataclass(frozen=True)
class RunStep:
    step: Step
    args: OpArgs = None


@dataclass(frozen=True)
class Note:
    """Something worth an event that is not a phase change (e.g. an ignored assignment)."""

    type: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = RunChecks | RunStep | Note


# ---- persistence form -------------------------------------------------------------------------


def to_json(s: State) -> dict[str, Any]:
    out: dict[str, Any] = {
        f.name: getattr(s, f.name)
        for f in dataclasses.fields(s)
        if f.name not in ("assignment", "last_error", "joined_identity", "op_args")
    }
    out["phase"] = str(s.phase)
    out["op"] = str(s.op) if s.op else None
    out["assignment"] = dict(s.assignment.raw) if s.assignment else None
    out["last_error"] = dataclasses.asdict(s.last_error) if s.last_error else None
    out["joined_identity"] = list(s.joined_identity) if s.joined_identity else None
    # The same flat object earlier releases wrote, so either release reads the other's file.
    out["op_args"] = dataclasses.asdict(s.op_args) if s.op_args else {}
    return out


def _op_args_from_json(op: Op | None, raw: object) -> OpArgs:
    """The operation says which arguments it takes; keys it does not know are ignored."""
    d = raw if isinstance(raw, dict) else {}
    match op:
        case Op.UPGRADE:
            return UpgradeArgs(str(d.get("kubernetes_version") or ""), bool(d.get("drained")))
        case Op.UNINSTALL | Op.REJOIN:
            return UninstallArgs(
                force=bool(d.get("force")),
                drained=bool(d.get("drained")),
                remove_kubelet_certs=bool(d.get("remove_kubelet_certs")),
            )
        case Op.JOIN | None:
            return None


def from_json(d: dict[str, Any], parse: Callable[[dict[str, Any]], Assignment]) -> State:
    """Rebuild a State; ``parse`` turns the raw assignment dict into an `Assignment`."""
    le = d.get("last_error")
    op = Op(d["op"]) if d.get("op") else None
    ident: Sequence[str] | None = d.get("joined_identity")
    return State(
        phase=Phase(d.get("phase", "starting")),
        phase_since=float(d.get("phase_since") or 0.0),
        reason=str(d.get("reason") or ""),
        assignment=parse(d["assignment"]) if d.get("assignment") else None,
        op=op,
        op_args=_op_args_from_json(op, d.get("op_args")),
        installed_version=d.get("installed_version"),
        joined_identity=(str(ident[0]), str(ident[1]), str(ident[2])) if ident else None,
        node_name=d.get("node_name"),
        last_error=LastError(str(le["code"]), str(le["message"]), float(le["ts"])) if le else None,
        failures=int(d.get("failures") or 0),
        retry_at=d.get("retry_at"),
        unhealthy_since=d.get("unhealthy_since"),
    )


__all__ = [
    "LINK_CODES",
    "NODE_PHASES",
    "RUNNING_PHASES",
    "Action",
    "AssignmentArrived",
    "AssignmentInvalid",
    "Boot",
    "ChecksDone",
    "ErrorCleared",
    "ErrorSeen",
    "Event",
    "HealthObserved",
    "HostFacts",
    "HostRecovered",
    "JoinRequested",
    "LastError",
    "Note",
    "Op",
    "OpArgs",
    "Phase",
    "Policy",
    "Registered",
    "RunChecks",
    "RunStep",
    "State",
    "StepDone",
    "Tick",
    "UninstallArgs",
    "UninstallRequested",
    "UpgradeArgs",
    "UpgradeRequested",
    "from_json",
    "to_json",
]
