"""A diagnostics bundle over large logs neither blocks the agent nor holds the logs in memory.

A real agent with 96 MiB of nodeadm logs in its state directory builds a bundle while pings
go on: each ping is answered promptly, the agent's peak RSS stays within 60 MB of what it
was, and the uploaded bundle is under `diagnostics.max_bytes` and ends with each log's end.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

from agent.diagnostics import tail_budgets
from tests.e2e.conftest import SiteFactory

MAX_BYTES = 2 * 1024 * 1024


def _vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_budgets_keep_small_files_whole_and_share_the_rest() -> None:
    assert tail_budgets({"a": 10, "b": 1000, "c": 1000}, 610) == {"a": 10, "b": 300, "c": 300}
    assert tail_budgets({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}
    assert tail_budgets({"a": 10}, -5) == {"a": 0}


def test_a_bundle_over_big_logs_keeps_the_agent_responsive(site_factory: SiteFactory) -> None:
    site = site_factory(config={"diagnostics": {"max_bytes": MAX_BYTES}})
    site.host.wait_phase("joined", 30)
    assert site.host.proc is not None
    pid = site.host.proc.pid
    logs = site.host.state / "logs"
    logs.mkdir(exist_ok=True)
    # Random-looking lines compress poorly, as real logs with ids and times partly do.
    line = b"".join(b"%08x " % (i * 2654435761 % 2**32) for i in range(12)) + b"\n"
    for name in ("nodeadm-install.log", "nodeadm-init.log.1", "nodeadm-init.log"):
        with (logs / name).open("wb") as f:
            for _ in range(32):
                f.write(line * (1024 * 1024 // len(line)))
            f.write(f"the end of {name}\n".encode())
    hwm = _vm_kb(pid, "VmHWM")

    slowest = [0.0]
    done = threading.Event()

    def pings() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            reply = site.run("ping", timeout=20)
            assert reply["state"] == "succeeded"
            slowest[0] = max(slowest[0], time.monotonic() - t0)

    pinger = threading.Thread(target=pings)
    pinger.start()
    try:
        reply = site.run("collect-diagnostics", {}, timeout=120)
    finally:
        done.set()
        pinger.join(30)
    assert reply["state"] == "succeeded", reply
    result = reply["result"]
    assert result["uploaded"] and result["bytes"] <= MAX_BYTES
    assert slowest[0] < 3.0, f"a ping took {slowest[0]:.1f} s during the bundle"
    grown = _vm_kb(pid, "VmHWM") - hwm
    assert grown < 60 * 1024, f"peak RSS grew by {grown} KiB"
    data = site.controller.bundles[result["bundle_id"]]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in ("nodeadm-install.log", "nodeadm-init.log.1", "nodeadm-init.log"):
            member = tar.extractfile(f"logs/{name}")
            assert member is not None
            text = member.read().decode()
            assert text.startswith("[... first "), text[:80]
            assert text.endswith(f"the end of {name}\n")
