"""Preflight check results (the README check table) and their summary: pure data, no I/O.

A `CheckResult` is what every check returns and what `edge-agent check --json`, the
``check`` events, the ``run-checks`` reply and status ``checks`` are built from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.strenum import StrEnum


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


BLOCKING = frozenset({CheckStatus.FAIL, CheckStatus.ERROR})


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    status: CheckStatus
    message: str
    remedy: str = ""
    duration_ms: int = 0
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.status in BLOCKING

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": str(self.status),
            "message": self.message,
            "remedy": self.remedy if self.blocking or self.status is CheckStatus.WARN else "",
            "duration_ms": self.duration_ms,
            "details": dict(self.details),
        }


def summary(results: Iterable[CheckResult]) -> dict[str, int]:
    """The ``summary`` object of `edge-agent check --json` and the run-checks reply."""
    counts = {"passed": 0, "warned": 0, "failed": 0, "skipped": 0, "errored": 0}
    key = {
        CheckStatus.PASS: "passed",
        CheckStatus.WARN: "warned",
        CheckStatus.FAIL: "failed",
        CheckStatus.SKIP: "skipped",
        CheckStatus.ERROR: "errored",
    }
    for r in results:
        counts[key[r.status]] += 1
    return counts


def status_checks(results: Iterable[CheckResult], ts: str) -> dict[str, Any]:
    """The status ``checks`` object: errors count as failed there (both block a join)."""
    rs = list(results)
    return {
        "passed": sum(r.status is CheckStatus.PASS for r in rs),
        "warned": sum(r.status is CheckStatus.WARN for r in rs),
        "failed": sum(r.blocking for r in rs),
        "failing": [r.id for r in rs if r.blocking],
        "ts": ts,
    }
