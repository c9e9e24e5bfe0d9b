"""A real agent's metrics: scraped over HTTP while it joins and answers a command, and read
from its node_exporter textfile; a failing controller shows in the controller error count."""

from __future__ import annotations

import socket
import urllib.request

from tests.e2e.conftest import SiteFactory
from tests.test_metrics import Samples, _get, _parse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_agent_is_scraped_and_writes_its_textfile(site_factory: SiteFactory) -> None:
    port = _free_port()
    metrics = {"listen": f"127.0.0.1:{port}", "interval_s": 0.5}
    s = site_factory(start=False, config={"metrics": metrics})
    textfile = s.tmp / "textfile" / "edge_agent.prom"
    s.host.config["metrics"]["textfile"] = str(textfile)
    s.host.write_config()
    s.controller.fail_next(2, 503)
    s.start()
    s.host.wait_phase("joined", 30)
    assert s.run("ping")["state"] == "succeeded"

    def scrape() -> Samples:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return _parse(r.read().decode())

    def ready() -> Samples | None:
        got = scrape()
        key = ("edge_agent_commands_total", (("name", "ping"), ("state", "succeeded")))
        return got if got.get(key) == 1 and _get(got, "edge_agent_phase", phase="joined") else None

    samples = s.host.wait_for(ready, 10)
    assert samples, scrape()
    assert _get(samples, "edge_agent_join_attempts_total") == 1
    step = "edge_agent_nodeadm_step_seconds_count"
    assert _get(samples, step, step="install", outcome="ok") == 1
    assert _get(samples, step, step="init", outcome="ok") == 1
    assert _get(samples, "edge_agent_check_status", check="os.supported", status="pass") == 1
    assert _get(samples, "edge_agent_mqtt_connected") == 1
    assert _get(samples, "edge_agent_mqtt_session") >= 1
    assert _get(samples, "edge_agent_controller_errors_total", code="controller_unreachable") >= 1
    assert _get(samples, "edge_agent_phase_seconds") >= 0
    from_file = _parse(textfile.read_text())
    assert _get(from_file, "edge_agent_phase", phase="joined") == 1
