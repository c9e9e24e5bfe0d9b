"""Prometheus metrics: the exporter on its own (a tally fed real-shaped events, a snapshot, the
text it serves and writes), and an agent without metrics that never imports prometheus-client
(tests/e2e/test_metrics_e2e.py scrapes a real agent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.core.config import MetricsConfig
from agent.exporter import LinkFigures, MetricsExporter, MetricsSnapshot, Tally
from agent.logs import LevelHolder, make_logger
from agent.testing import sample_assignment
from tests.support import ROOT, HostEnv

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def _phase(old: str, new: str) -> dict[str, Any]:
    return {"type": "phase", "from": old, "to": new, "reason": "test"}


def _fed_tally() -> Tally:
    t = Tally()
    t.observe_event(_phase("awaiting_assignment", "preflight"), 0.0)
    t.observe_event(_phase("preflight", "installing"), 1.0)
    t.observe_event(_phase("installing", "joining"), 46.0)  # install took 45 s
    t.observe_event({"type": "error", "code": "ssm_activation_expired", "step": "init"}, 50.0)
    t.observe_event(_phase("joining", "failed"), 51.0)  # init failed after 5 s
    t.observe_event(_phase("failed", "preflight"), 60.0)
    t.observe_event(_phase("preflight", "preflight_failed"), 61.0)
    for state in ("accepted", "succeeded"):
        t.observe_reply({"name": "ping", "state": state, "duplicate": False})
    t.observe_reply({"name": "ping", "state": "succeeded", "duplicate": True})
    t.observe_reply({"name": None, "state": "rejected", "duplicate": False})
    t.observe_controller_error("controller_unreachable")
    t.observe_controller_error("controller_unreachable")
    return t


def _snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(
        uid="edge-a",
        version="9.9.9",
        phase="preflight_failed",
        phase_since=1000.0,
        now=1042.5,
        checks=(("system.swap", "fail"), ("os.supported", "pass")),
        link=LinkFigures(True, 7, 3, 1234, {"nodeadm_event": 5}),
    )


def test_the_exporter_alone_serves_and_writes_what_it_was_given(tmp_path: Path) -> None:
    textfile = tmp_path / "collector" / "edge_agent.prom"
    log = make_logger(level=LevelHolder("error"), fmt="json")
    cfg = MetricsConfig(listen="127.0.0.1:0", textfile=textfile, interval_s=1)
    exporter = MetricsExporter(cfg, _snapshot, log=log, tally=_fed_tally())
    exporter.start()
    try:
        written = exporter.publish()
        assert exporter.address is not None
        host, port = exporter.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            served = r.read().decode()
    finally:
        exporter.close()
    assert textfile.read_bytes() == written
    assert [p.name for p in textfile.parent.iterdir()] == ["edge_agent.prom"]  # no temp left
    s = _parse(served)
    assert _parse(written.decode()) == s
    assert _get(s, "edge_agent_info", uid="edge-a", version="9.9.9") == 1
    assert _get(s, "edge_agent_phase", phase="preflight_failed") == 1
    assert _get(s, "edge_agent_phase", phase="joined") == 0
    assert _get(s, "edge_agent_phase_seconds") == 42.5
    assert _get(s, "edge_agent_join_attempts_total") == 2
    assert _get(s, "edge_agent_join_failures_total", code="ssm_activation_expired") == 1
    assert _get(s, "edge_agent_join_failures_total", code="preflight_failed") == 1
    step = "edge_agent_nodeadm_step_seconds"
    assert _get(s, f"{step}_count", step="install", outcome="ok") == 1
    assert _get(s, f"{step}_sum", step="install", outcome="ok") == 45
    assert _get(s, f"{step}_bucket", step="install", outcome="ok", le="30.0") == 0
    assert _get(s, f"{step}_bucket", step="install", outcome="ok", le="60.0") == 1
    assert _get(s, f"{step}_sum", step="init", outcome="failed") == 5
    assert _get(s, "edge_agent_check_status", check="system.swap", status="fail") == 1
    assert _get(s, "edge_agent_check_status", check="system.swap", status="pass") == 0
    assert _get(s, "edge_agent_commands_total", name="ping", state="succeeded") == 1
    assert _get(s, "edge_agent_commands_total", name="unknown", state="rejected") == 1
    assert _get(s, "edge_agent_controller_errors_total", code="controller_unreachable") == 2
    assert _get(s, "edge_agent_mqtt_connected") == 1
    assert _get(s, "edge_agent_mqtt_session") == 7
    assert _get(s, "edge_agent_outbox_messages") == 3
    assert _get(s, "edge_agent_outbox_bytes") == 1234
    assert _get(s, "edge_agent_outbox_dropped_total", kind="nodeadm_event") == 5


def test_without_metrics_prometheus_client_is_never_imported(tmp_path: Path) -> None:
    # PYTHONPROFILEIMPORTTIME makes Python log every import to stderr (agent.out).
    off = HostEnv(tmp_path / "off", local_assignment=sample_assignment())
    off.start({"PYTHONPROFILEIMPORTTIME": "1"})
    off.wait_phase("joined", 30)
    assert off.stop() == 0
    assert "agent.app" in off.output()
    assert "prometheus_client" not in off.output()
    on = HostEnv(
        tmp_path / "on",
        local_assignment=sample_assignment(),
        config={"metrics": {"textfile": str(tmp_path / "on.prom")}},
    )
    on.start({"PYTHONPROFILEIMPORTTIME": "1"})
    on.wait_phase("joined", 30)
    assert on.stop() == 0
    assert "prometheus_client" in on.output()
    assert "edge_agent_phase" in (tmp_path / "on.prom").read_text()


def test_metrics_without_prometheus_client_leave_the_agent_working(tmp_path: Path) -> None:
    host = HostEnv(
        tmp_path,
        local_assignment=sample_assignment(),
        config={"metrics": {"textfile": str(tmp_path / "edge_agent.prom")}},
    )
    # A Python where prometheus-client cannot be imported, as on a host without the extra.
    code = (
        "import sys; sys.modules['prometheus_client'] = None; from agent.cli import main; "
        f"sys.exit(main(['run', '-c', {str(host.config_path)!r}]))"
    )
    with host.out_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    try:
        host.wait_phase("joined", 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    lines = [line for line in host.log_lines() if line.get("event") == "metrics.unavailable"]
    assert lines and "install edge-agent[metrics]" in lines[0]["error"]
    assert not (tmp_path / "edge_agent.prom").exists()
