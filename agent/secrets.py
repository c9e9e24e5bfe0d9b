"""The secrets this agent holds, for the log's redactor to strike out of every line.

The SSM activation code (from the assignment), the host token the controller issued, and two
secrets read from files: the registration token and the MQTT password (each read again only
when its file changes: they are rotated). The logger is built before the parts that hold the
first two, so they are attached as they come.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from agent.core import lifecycle as lc
from agent.state.filewatch import FileWatch


class _FileSecret:
    """A secret kept in a file: re-read when the file may have changed (`FileWatch`); the
    last value read stays known while the file is briefly missing (a rotation by rename)."""

    def __init__(self, path: Path | None) -> None:
        self._watch = FileWatch(path) if path is not None else None
        self._value: str | None = None

    def __call__(self) -> str | None:
        if self._watch is not None and self._watch.changed():
            # missing for now: keep striking the last value read
            with contextlib.suppress(OSError):
                self._value = self._watch.path.read_text(errors="replace").strip() or None
        return self._value


class Secrets:
    def __init__(
        self, registration_token_file: Path | None, mqtt_password_file: Path | None = None
    ) -> None:
        self._files = (_FileSecret(registration_token_file), _FileSecret(mqtt_password_file))
        self.state: Callable[[], lc.State] | None = None
        self.host_token: Callable[[], str | None] | None = None

    def __call__(self) -> list[str]:
        out: list[str] = []
        a = self.state().assignment if self.state is not None else None
        if a is not None and a.ssm is not None:
            out.append(a.ssm.activation_code)
        token = self.host_token() if self.host_token is not None else None
        if token:
            out.append(token)
        out.extend(value for read in self._files if (value := read()))
        return out


__all__ = ["Secrets"]
