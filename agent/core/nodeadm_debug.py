"""What ``nodeadm debug`` printed: its validation checklist as `DebugItem`s.

nodeadm's printer writes ``* <message> `` when a validation starts (no newline) and
``[Success]`` or ``[Failed]`` when it ends. A failure is followed by a tree: one ``Error``
node per error (``├─`` for all but the last, ``└─`` for the last), the error text one level
below it, then ``Remediation`` and its text when the error has one; the stderr nodeadm
captured from helper programs (``aws_signing_helper``, ``aws-iam-authenticator``) hangs under
the last error as a node named after the stream, with one line per child. nodeadm's zap log
lines go to stderr, which the agent writes to the same file, so a JSON line can land between
``* <message> `` and its verdict: the verdict then starts a later line. The stream may end
early (the agent's time limit): a validation that started and has no verdict is reported as
failed with the reason the caller gives. Pure: text in, items out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.core.redact import scrub_text

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERDICT = re.compile(r"\[(Success|Failed)\]\s*$")
_NODE = re.compile(r"^(?P<indent>[ │]*)[├└]─ ?(?P<text>.*)$")
# Tree levels by the column of the branch: 2 (Error), 5 (its text, Remediation, stderr), 8.
_LEVELS = MappingProxyType({2: 1, 5: 2, 8: 3})


@dataclass(frozen=True)
class DebugItem:
    """One validation of ``nodeadm debug``: its message, verdict, error and remediation."""

    description: str
    ok: bool
    error: str | None = None
    remediation: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "ok": self.ok,
            "error": self.error,
            "remediation": self.remediation,
        }


@dataclass
class _Item:
    description: str
    verdict: str | None = None
    errors: list[str] = field(default_factory=list)
    remediations: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    # Where the next text goes: "error", "remediation", "stderr" or None.
    slot: str | None = None
    seen_error_text: bool = False

    def add(self, text: str, *, continued: bool = False) -> None:
        target = {"error": self.errors, "remediation": self.remediations, "stderr": self.stderr}
        into = target.get(self.slot or "")
        if into is None:
            return
        if continued and into:
            into[-1] = f"{into[-1]}\n{text}"
        else:
            into.append(text)

    def node(self, level: int, text: str) -> None:
        if level == 1:  # "Error"
            self.slot, self.seen_error_text = "error", False
        elif level == 2 and self.slot in ("error", "stderr", "remediation"):
            if text == "Remediation":
                self.slot = "remediation"
            elif not self.seen_error_text:
                self.slot, self.seen_error_text = "error", True
                self.add(text)
            else:
                self.slot = "stderr"  # the captured stream's name heads its lines
        elif level == 3:
            self.add(text)

    def done(self, unfinished: str | None, secrets: Sequence[str]) -> DebugItem:
        error = "\n".join(self.errors) or None
        if self.stderr:
            error = f"{error or ''}\nstderr:\n" + "\n".join(self.stderr)
        if self.verdict is None:
            error = unfinished or "nodeadm debug ended before this validation finished"
        remedies = list(dict.fromkeys(self.remediations))
        return DebugItem(
            description=scrub_text(self.description, secrets),
            ok=self.verdict == "Success",
            error=scrub_text(error.strip(), secrets) if error else None,
            remediation=scrub_text("\n".join(remedies), secrets) if remedies else None,
        )


def _start(line: str) -> tuple[str, str | None]:
    """(message, verdict or None) of a ``* <message> [...]`` line, zap JSON cut off."""
    body = line[2:]
    verdict = _VERDICT.search(body)
    if verdict:
        return body[: verdict.start()].strip(), verdict.group(1)
    json_at = body.find(' {"')
    return (body[:json_at] if json_at >= 0 else body).strip(), None


def parse_debug_output(
    text: str, secrets: Sequence[str] = (), *, unfinished: str | None = None
) -> list[DebugItem]:
    """The validations ``nodeadm debug --no-color`` printed, in order.

    ``unfinished`` is the error given to a validation that started but has no verdict
    (the run was stopped); None says that the output ended early.
    """
    items: list[_Item] = []
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.rstrip()
        current = items[-1] if items else None
        if line.startswith("* "):
            message, verdict = _start(line)
            items.append(_Item(message, verdict))
            continue
        if current is None or not line.strip():
            if current is not None:
                current.slot = None
            continue
        if current.verdict is None:
            late = _VERDICT.match(line.strip())
            if late:
                current.verdict = late.group(1)
            continue  # zap lines between the message and its verdict
        node = _NODE.match(line)
        if node and len(node["indent"]) in _LEVELS:
            current.node(_LEVELS[len(node["indent"])], node["text"].strip())
        elif line.lstrip().startswith("{"):
            continue
        elif current.slot is not None and raw[:1] != "*":
            current.add(line.strip(), continued=True)  # a multi-line error's next line
    return [i.done(unfinished, secrets) for i in items]
