"""The secrets this agent holds, for the log's redactor to strike out of every line.

The SSM activation code (from the assignment), the host token the controller issued, and two
secrets read from files: the registration token and the MQTT password (each read again only
when its file changes: they are rotated). The logger is built before the parts that hold the
first two, so they are attached as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.core import lifecycle as lc


class _FileSecret:
    """A secret kept in a file: re-read when the file changes; the last value read stays
    known while the file is briefly missing (a rotation by rename)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._seen: tuple[tuple[int, int, int], str] | None = None

    def __call__(self) -> str | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return (self._seen[1] or None) if self._seen else None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._seen is None or self._seen[0] != stamp:
            try:
                text = self._path.read_text(errors="replace").strip()
            except OSError:
                text = ""
            self._seen = (stamp, text)
        return self._seen[1] or None


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
