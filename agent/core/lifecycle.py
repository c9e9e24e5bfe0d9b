"""The host lifecycle (docs/architecture.md) as a pure state machine.

``step(state, event, now, policy) -> (state, actions)``: no asyncio, no clock, no I/O. The
driver (agent/lifecycle_driver.py) turns timers, check runs and nodeadm runs into events and
carries out the actions; it persists the state after every step, so a crash at any point
resumes from the last persisted phase and never re-runs a step the state says is done.

The rules an operator relies on:
- a fresh host goes registering → awaiting_assignment → preflight → installing → joining → joined;
- install is skipped when the tracker exists and the agent recorded this major.minor installed;
- appliance mode never installs: the read-only image carries nodeadm's artifacts, so the join
  runs only init, and only when the image's kubelet is the assignment's version (otherwise
  ``requires_new_image``);
- failures go to `failed` (or `preflight_failed`) with `last_error`, retried with capped backoff;
- a new Kubernetes version upgrades, a new cluster/provider uninstalls and re-joins, and both
  wait for the controller's ``drained: true``; appliance images cannot change version in place;
- an interrupted installing/joining/upgrading/uninstalling re-runs that step after a restart.
"""

# ruff: noqa: F405 - the names come from agent.core.phases (the star import below)
from __future__ import annotations

from dataclasses import replace

from agent.core.assignment import Assignment
from agent.core.backoff import capped_exponential
from agent.core.codes import Step

# The vocabulary (phases, state, events, actions) is used here and re-exported, so callers
# say `lifecycle.Phase` as they always have.
from agent.core.phases import *  # noqa: F403
from agent.core.recovery import recovered_state

# ---- helpers ----------------------------------------------------------------------------------


def _go(s: State, phase: Phase, now: float, reason: str) -> State:
    """Move to ``phase``; its reason and start time change only with the phase itself."""
    if phase == s.phase:
        return s
    return replace(s, phase=phase, phase_since=now, reason=reason)


def _error(code: str, message: str, now: float) -> LastError:
    return LastError(code=code, message=message, ts=now)


def _fail(s: State, phase: Phase, code: str, message: str, now: float, p: Policy) -> State:
    delay = capped_exponential(s.failures, p.retry_backoff_s, p.retry_cap_s)
    return _go(
        replace(
            s, last_error=_error(code, message, now), failures=s.failures + 1, retry_at=now + delay
        ),
        phase,
        now,
        message,
    )


def _canceled(s: State, msg: str, now: float) -> State:
    """A canceled step stops in `failed` with no retry planned: the operator asked for it."""
    err = _error("canceled", msg, now)
    return _go(replace(s, last_error=err, retry_at=None), Phase.FAILED, now, msg)


def _start_op(
    s: State, op: Op, now: float, reason: str, args: OpArgs = None
) -> tuple[State, list[Action]]:
    """Begin (or resume) an operation: a join starts with preflight, the others run at once."""
    s = replace(s, op=op, op_args=args, retry_at=None)
    if op is Op.JOIN:
        return _go(s, Phase.PREFLIGHT, now, reason), [RunChecks()]
    if op is Op.UPGRADE:
        return _go(s, Phase.UPGRADING, now, reason), [RunStep(Step.UPGRADE, args)]
    return _go(s, Phase.UNINSTALLING, now, reason), [RunStep(Step.UNINSTALL, args)]


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
            args = UpgradeArgs(ev.kubernetes_version, drained=ev.drained)
            return _start_op(s, Op.UPGRADE, now, "upgrade command", args)
        case UninstallRequested():
            uargs = UninstallArgs(force=ev.force, drained=ev.drained)
            return _start_op(s, Op.UNINSTALL, now, "uninstall command", uargs)
        case HealthObserved():
            return _health(s, ev.healthy, now, p)
        case HostRecovered():
            # Rebuilt between two steps of the machine, then the assignment is taken as
            # any other: a joined host keeps it, a fresh one starts its join.
            s = recovered_state(s, ev.assignment, ev.facts, now)
            return _assignment(s, ev.assignment, now, p)
    return s, []


def _boot(s: State, ev: Boot, now: float, p: Policy) -> tuple[State, list[Action]]:
    """Resume from the persisted phase; only a host with nothing yet starts from registration."""
    if p.appliance and s.phase is Phase.INSTALLING:
        # Left by an older agent (or a mode change): the image is checked again instead.
        return _start_op(s, Op.JOIN, now, "appliance mode: checking the image, not installing")
    if s.phase in RUNNING_PHASES:
        step_name = RUNNING_PHASES[s.phase]
        return replace(s, retry_at=None), [RunStep(step_name, s.op_args)]
    if s.phase is Phase.PREFLIGHT:
        return s, [RunChecks()]
    if s.phase in (Phase.FAILED, Phase.PREFLIGHT_FAILED):
        if s.last_error is not None and s.last_error.code == "canceled":
            return s, []  # an operator's cancel holds across restarts, until a new join
        # Retry soon after a restart, but keep the backoff if it was already long; a boot
        # may bring the new image that was asked for, so that one is looked at at once.
        new_image = s.last_error is not None and s.last_error.code == "requires_new_image"
        retry = s.retry_at if s.retry_at is not None and not new_image else now
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
            UninstallArgs(force=False, drained=True, remove_kubelet_certs=True),
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
        UpgradeArgs(a.kubernetes_version, drained=True),
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
        return _canceled(s, msg, now), []
    if ev.blocking:
        msg = "preflight checks failed: " + ", ".join(ev.blocking)
        return _fail(s, Phase.PREFLIGHT_FAILED, "preflight_failed", msg, now, p), []
    a = s.assignment
    if a is None:
        return _go(s, Phase.AWAITING_ASSIGNMENT, now, "no assignment"), []
    if p.appliance:
        return _image_join(s, ev, a, now, p)
    if ev.tracker_present and s.installed_minor == a.minor:
        return _go(s, Phase.JOINING, now, f"Kubernetes {a.minor} already installed"), [
            RunStep(Step.INIT)
        ]
    return _go(s, Phase.INSTALLING, now, "preflight passed"), [RunStep(Step.INSTALL)]


def _image_join(
    s: State, ev: ChecksDone, a: Assignment, now: float, p: Policy
) -> tuple[State, list[Action]]:
    """Appliance mode: the provider image carries nodeadm's artifacts on a read-only root, and
    ``nodeadm install`` would write into it; init runs only on the version the image has."""
    image = ev.kubelet_version
    if (
        ev.tracker_present
        and image is not None
        and not _version_changed(image, a.kubernetes_version)
    ):
        return _go(
            replace(s, installed_version=image),
            Phase.JOINING,
            now,
            f"Kubernetes {image} is in the image",
        ), [RunStep(Step.INIT)]
    if not ev.tracker_present:
        carried = "no nodeadm artifacts (no /opt/nodeadm/tracker)"
    elif image is None:
        carried = "no kubelet that reports its version (kubelet --version)"
    else:
        carried = f"Kubernetes {image}"
    msg = (
        f"Kubernetes {a.kubernetes_version} needs a new provider image: the read-only image "
        f"carries {carried}; build it with K8S_DISTRIBUTION=nodeadm and this version"
    )
    return _fail(s, Phase.FAILED, "requires_new_image", msg, now, p), []


def _step_done(s: State, ev: StepDone, now: float, p: Policy) -> tuple[State, list[Action]]:
    expected = RUNNING_PHASES.get(s.phase)
    if expected != ev.step:
        return s, []
    if not ev.ok:
        if ev.canceled:
            msg = ev.message or f"nodeadm {ev.step} canceled"
            s2 = _canceled(s, msg, now)
            return s2, []
        return _fail(s, Phase.FAILED, ev.code or "nodeadm_failed", ev.message, now, p), []
    a = s.assignment
    if ev.step == Step.INSTALL:
        assert a is not None
        return _go(
            replace(s, installed_version=a.kubernetes_version),
            Phase.JOINING,
            now,
            f"installed Kubernetes {a.kubernetes_version}",
        ), [RunStep(Step.INIT)]
    if ev.step == Step.INIT:
        assert a is not None
        return _go(
            replace(
                s,
                node_name=ev.node_name or s.node_name,
                joined_identity=a.identity(),
                last_error=_links_only(s),
                failures=0,
                retry_at=None,
                op=None,
                op_args=None,
                unhealthy_since=None,
            ),
            Phase.JOINED,
            now,
            "nodeadm init succeeded",
        ), []
    if ev.step == Step.UPGRADE:
        asked = s.op_args.kubernetes_version if isinstance(s.op_args, UpgradeArgs) else ""
        version = asked or (a.kubernetes_version if a else "")
        return _go(
            replace(
                s,
                installed_version=version,
                last_error=_links_only(s),
                failures=0,
                op=None,
                op_args=None,
                retry_at=None,
            ),
            Phase.JOINED,
            now,
            f"upgraded to Kubernetes {version}",
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
        replace(cleared, op=Op.UNINSTALL, op_args=None),
        Phase.UNINSTALLED,
        now,
        "nodeadm uninstall succeeded",
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
    return _start_op(s, op, now, f"retry {s.failures} of {op}", s.op_args)


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
                replace(s, unhealthy_since=None),
                Phase.JOINED,
                now,
                "kubelet and containerd healthy again",
            ), []
        return (replace(s, unhealthy_since=None) if s.unhealthy_since is not None else s), []
    since = s.unhealthy_since if s.unhealthy_since is not None else now
    if s.phase is Phase.JOINED and now - since >= p.degraded_after_s:
        return _go(
            replace(s, unhealthy_since=since),
            Phase.DEGRADED,
            now,
            f"unhealthy for {now - since:.0f} s",
        ), []
    return (replace(s, unhealthy_since=since) if s.unhealthy_since != since else s), []
