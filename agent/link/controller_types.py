"""What the controller client returns and raises, apart from how it talks.

`ControllerError` carries the status ``last_error`` code of a failed exchange (`Reauth`: the
host token was refused, register again); `Registration` and `AssignmentFetch` are what a
registration and a poll bring back. `agent.link.controller` (the only module importing httpx)
makes them; the daemon and the commands read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AssignmentFetch", "ControllerError", "Reauth", "Registration"]


class ControllerError(Exception):
    """A failed exchange with the controller, carrying the status ``last_error.code``.

    `slow`: wait near the backoff cap, since only an operator can fix it. `retry_after`: the
    server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self, code: str, message: str, *, slow: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.slow, self.retry_after = code, message, slow, retry_after


class Reauth(ControllerError):
    """The host token was refused (401) or is missing: register again, then retry."""

    def __init__(self, message: str) -> None:
        super().__init__("registration_refused", message)


@dataclass(frozen=True)
class Registration:
    uid: str
    host_token: str
    assignment: dict[str, Any] | None


@dataclass(frozen=True)
class AssignmentFetch:
    """One poll's outcome; `registration` is set when the poll had to register again."""

    status: Literal["changed", "unchanged", "none"]
    body: dict[str, Any] | None
    etag: str | None
    registration: Registration | None = None
