"""The agent's vocabulary, named once: nodeadm steps, command states, the agent's own error
codes, and which of them belong to its links rather than to the host.

StrEnum members compare equal to their strings, so the wire format and the persisted state
stay plain text while the code works on closed sets (``match`` with ``assert_never`` makes
mypy prove every member is handled, and an unknown name fails instead of falling into some
default). Error codes nodeadm's output maps to live with that mapping
(agent/core/nodeadm_errors.py); command rejection codes with the envelope checks
(agent/core/envelope.py).
"""

from __future__ import annotations

from typing import Final

from agent.core.strenum import StrEnum


class Step(StrEnum):
    """A nodeadm run the lifecycle asks for."""

    INSTALL = "install"
    INIT = "init"
    UPGRADE = "upgrade"
    UNINSTALL = "uninstall"


class CommandState(StrEnum):
    """Where a remote command is; every reply carries one."""

    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"


FINAL_STATES: Final = frozenset(
    {
        CommandState.SUCCEEDED,
        CommandState.FAILED,
        CommandState.CANCELED,
        CommandState.TIMED_OUT,
        CommandState.REJECTED,
    }
)


class ErrorCode(StrEnum):
    """``last_error.code`` and ``error`` event codes the agent itself raises."""

    BAD_ASSIGNMENT = "bad_assignment"
    CANCELED = "canceled"
    COMMAND_FAILED = "command_failed"
    CONFIG_INVALID = "config_invalid"
    CONFIG_NEEDS_RESTART = "config_needs_restart"
    NODEADM_FAILED = "nodeadm_failed"
    NODEADM_ORPHAN = "nodeadm_orphan"
    STATE_CORRUPT = "state_corrupt"
    STATE_LOST = "state_lost"
    STATE_STORAGE_FAILED = "state_storage_failed"
    STATE_STORAGE_FULL = "state_storage_full"
    SYSCTL_NOT_IN_FORCE = "sysctl_not_in_force"
    # The links' own trouble.
    BROKER_REFUSED = "broker_refused"
    BROKER_UNREACHABLE = "broker_unreachable"
    CONTROLLER_UNREACHABLE = "controller_unreachable"
    REGISTRATION_FAILED = "registration_failed"
    REGISTRATION_REFUSED = "registration_refused"
    UID_CONFLICT = "uid_conflict"


# Errors of the controller link and of the broker link. A host's own failure is never hidden
# or cleared by one of these (agent/core/lifecycle.py); each link clears its own set when it
# recovers. `uid_conflict` is in both: either side can see two hosts sharing one UID.
CONTROLLER_CODES: Final = frozenset(
    {
        ErrorCode.CONTROLLER_UNREACHABLE,
        ErrorCode.REGISTRATION_FAILED,
        ErrorCode.REGISTRATION_REFUSED,
        ErrorCode.UID_CONFLICT,
    }
)
BROKER_CODES: Final = frozenset(
    {ErrorCode.UID_CONFLICT, ErrorCode.BROKER_UNREACHABLE, ErrorCode.BROKER_REFUSED}
)
LINK_CODES: Final = CONTROLLER_CODES | BROKER_CODES


__all__ = [
    "BROKER_CODES",
    "CONTROLLER_CODES",
    "FINAL_STATES",
    "LINK_CODES",
    "CommandState",
    "ErrorCode",
    "Step",
]
