"""The status object from explicit inputs: the lifecycle state, what the record remembers, and
the state disk's health; which error shows when several hold."""

from __future__ import annotations

import errno
import time
from pathlib import Path

from agent.core import lifecycle as lc
from agent.state.record import Record
from agent.state.storage import StorageHealth
from agent.status import build_status
from agent.testing import CapturingLog, sample_assignment_obj


def status(state: lc.State, record: Record, storage: lc.LastError | None) -> dict[str, object]:
    return build_status(
        state, uid="edge-s", mode="agent", seq=7, ts="T", record=record, storage=storage
    )


def full_disk(tmp: Path) -> StorageHealth:
    health = StorageHealth(tmp, now=time.time, log=CapturingLog())
    assert health.failed("cannot save the state", OSError(errno.ENOSPC, "No space left"))
    return health


def test_the_record_fills_checks_and_nodeadm_version() -> None:
    record = Record(
        checks=[{"id": "a", "status": "pass"}, {"id": "b", "status": "fail"}],
        checks_ts=0.0,
        extra={"nodeadm_version": "v1.0.7"},
    )
    a = sample_assignment_obj(revision=9)
    st = status(lc.State(phase=lc.Phase.PREFLIGHT_FAILED, assignment=a), record, None)
    assert st["nodeadm_version"] == "v1.0.7"
    assert st["assignment_revision"] == 9
    assert st["checks"] == {
        "passed": 1,
        "warned": 0,
        "failed": 1,
        "failing": ["b"],
        "ts": "1970-01-01T00:00:00.000Z",
    }


def test_a_full_disk_shows_over_a_link_error_but_not_over_the_hosts_own(tmp_path: Path) -> None:
    disk = full_disk(tmp_path).problem()
    assert disk is not None and disk.code == "state_storage_full"
    link = lc.State(last_error=lc.LastError("broker_unreachable", "no broker", 1.0))
    shown = status(link, Record(), disk)["last_error"]
    assert isinstance(shown, dict) and shown["code"] == "state_storage_full"
    host = lc.State(last_error=lc.LastError("nodeadm_failed", "init failed", 1.0))
    shown = status(host, Record(), disk)["last_error"]
    assert isinstance(shown, dict) and shown["code"] == "nodeadm_failed"


def test_storage_health_reports_once_then_clears_and_falls_back_to_the_outbox(
    tmp_path: Path,
) -> None:
    health = full_disk(tmp_path)
    assert not health.failed("cannot write the status", OSError(errno.ENOSPC, "No space left"))
    assert health.recovered()
    assert health.problem() is None
    health.outbox_error = lambda: "outbox write failed in /x: [Errno 5] Input/output error"
    problem = health.problem()
    assert problem is not None and problem.code == "state_storage_failed"
