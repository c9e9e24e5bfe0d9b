"""The agent's vocabulary, named once: the nodeadm steps the lifecycle runs.

StrEnum members compare equal to their strings, so the wire format and the persisted state
stay plain text while the code dispatches on closed sets (``match`` with ``assert_never``
makes mypy prove every member is handled, and an unknown name fails instead of falling into
some default).
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    """A nodeadm run the lifecycle asks for."""

    INSTALL = "install"
    INIT = "init"
    UPGRADE = "upgrade"
    UNINSTALL = "uninstall"


__all__ = ["Step"]
