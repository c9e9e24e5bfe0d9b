"""The secrets this agent holds, for the log's redactor to strike out of every line.

The SSM activation code (from the assignment), the host token the controller issued, and the
registration token (read from its file again only when the file changes: it is rotated). The
logger is built before the parts that hold the first two, so they are attached as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.core import lifecycle as lc


class Secrets:
    def __init__(self, registration_token_file: Path | None) -> None:
        self._token_file = registration_token_file
        self._token: tuple[tuple[int, int, int], str] | None = None
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
        registration = self._registration_token()
        if registration:
            out.append(registration)
        return out

    def _registration_token(self) -> str | None:
        path = self._token_file
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return self._token[1] if self._token else None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._token is None or self._token[0] != stamp:
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                text = ""
            self._token = (stamp, text)
        return self._token[1] or None


__all__ = ["Secrets"]
