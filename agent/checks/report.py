"""Preflight results for people and programs: a terminal table and the contract's JSON.

`to_json` is the ``{"checks": [...], "summary": {...}}`` of ``edge-agent check --json`` and
the ``run-checks`` reply (the README check table). `render_table` is what an operator reads at a
console: one line per check, the remedy under every line that is not a pass or a skip, and
a summary that says whether install and init are blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from agent.core.checks import CheckResult, CheckStatus, summary

_LABEL = MappingProxyType(
    {
        CheckStatus.PASS: "PASS",
        CheckStatus.WARN: "WARN",
        CheckStatus.FAIL: "FAIL",
        CheckStatus.SKIP: "SKIP",
        CheckStatus.ERROR: "ERROR",
    }
)
_COLOR = MappingProxyType(
    {
        CheckStatus.PASS: "\033[32m",
        CheckStatus.WARN: "\033[33m",
        CheckStatus.FAIL: "\033[31m",
        CheckStatus.SKIP: "\033[2m",
        CheckStatus.ERROR: "\033[35m",
    }
)
_RESET = "\033[0m"
_WITH_REMEDY = (CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.ERROR)


def to_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {"checks": [r.to_dict() for r in results], "summary": summary(results)}


def _paint(text: str, status: CheckStatus, color: bool) -> str:
    return f"{_COLOR[status]}{text}{_RESET}" if color else text


def render_table(results: Sequence[CheckResult], color: bool) -> str:
    """One line per check (status, id, message), the remedy indented under problems."""
    id_width = max((len(r.id) for r in results), default=0)
    label_width = max(len(x) for x in _LABEL.values())
    indent = " " * (label_width + 2 + id_width + 2)
    lines = []
    for r in results:
        label = _paint(_LABEL[r.status].ljust(label_width), r.status, color)
        first, *rest = r.message.splitlines() or [""]
        lines.append(f"{label}  {r.id.ljust(id_width)}  {first}")
        lines.extend(f"{indent}{line}" for line in rest)
        if r.status in _WITH_REMEDY and r.remedy:
            lines.append(f"{indent}-> {r.remedy}")
    counts = summary(results)
    noun = "check" if len(results) == 1 else "checks"
    line = (
        f"{len(results)} {noun}: {counts['passed']} passed, {counts['warned']} warned, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['errored']} errored"
    )
    blocking = [r.id for r in results if r.blocking]
    if blocking:
        line += f"; install and init are blocked by {', '.join(blocking)}"
    lines.extend(("", line))
    return "\n".join(lines)
