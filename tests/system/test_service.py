"""edge-agent.service under a real systemd 252 (Debian 12, systemd as PID 1 in nspawn), judged
by systemd's own view: `systemctl show`, the journal, and what PID 1 logged about the units.
Each test boots a fresh container (about half a second) with the package installed."""

from __future__ import annotations

import re
import uuid

from agent.core.lifecycle import Phase
from devtools.broker import Mosquitto
from devtools.commander import Commander
from devtools.signer import CommandSigner
from tests.system.agent_host import UID, AgentHost

PHASES = {str(p) for p in Phase}


def pid1_messages(h: AgentHost, needle: str) -> list[str]:
    """What systemd itself logged about units whose messages mention ``needle``."""
    return [e["MESSAGE"] for e in h.m.journal("_PID=1") if needle in e.get("MESSAGE", "")]


def main_pid(h: AgentHost) -> int:
    return int(h.show("MainPID")["MainPID"])


def test_ready_with_a_phase_then_joined_with_steps_in_fixed_transient_units(
    agent_host: AgentHost,
) -> None:
    h = agent_host
    h.prepare()
    # Type=notify: `systemctl start` returns once READY=1 arrived, and only READY=1 moves a
    # notify unit from activating to active; the STATUS= sent with it is already there.
    h.m.run(["systemctl", "start", "edge-agent"])
    st = h.show("Type", "NotifyAccess", "ActiveState", "StatusText")
    assert (st["Type"], st["NotifyAccess"], st["ActiveState"]) == ("notify", "main", "active")
    assert st["StatusText"] in PHASES, st
    h.wait_phase("joined", 90)
    assert [c[0] for c in h.nodeadm_calls() if c[0] in ("install", "init")] == ["install", "init"]
    # Each step ran as a transient unit started by PID 1 (outside the agent's sandbox), under
    # the one fixed name that is also the lock.
    for step in ("install", "init"):
        unit = f"edge-agent-nodeadm-{step}.service"
        assert any(m.startswith(f"Starting {unit} ") for m in pid1_messages(h, unit)), (
            pid1_messages(h, "edge-agent-nodeadm")
        )
        assert f"{unit}: Deactivated successfully." in pid1_messages(h, unit)
    assert not pid1_messages(h, "edge-agent-nodeadm-install-"), "a random unit name is back"
    log = h.root / "var/lib/edge-agent/logs/nodeadm-install.log"
    assert log.stat().st_size > 0


def test_watchdog_and_sigkill_restart_the_agent(agent_host: AgentHost) -> None:
    h = agent_host
    h.prepare()
    # The unit's 30 s, shortened: the mechanism (pings from the event loop, SIGABRT on
    # silence, Restart=always) is the same.
    h.write("/etc/systemd/system/edge-agent.service.d/watchdog.conf",
            "[Service]\nWatchdogSec=3s\n")  # fmt: skip
    h.m.run(["systemctl", "daemon-reload"])
    h.m.run(["systemctl", "start", "edge-agent"])
    h.wait_phase("joined", 90)
    first = main_pid(h)
    h.m.run(["kill", "-STOP", str(first)])
    h.m.wait_for("a restart after the watchdog fired",
                 lambda: h.show("NRestarts")["NRestarts"] == "1", 30)  # fmt: skip
    assert any("Watchdog timeout" in m for m in pid1_messages(h, "edge-agent.service")), (
        h.diagnostics()
    )
    h.wait_phase("joined", 30)
    second = main_pid(h)
    assert second not in (0, first)

    h.m.run(["kill", "-9", str(second)])
    h.m.wait_for("a restart after SIGKILL",
                 lambda: h.show("NRestarts")["NRestarts"] == "2", 30)  # fmt: skip
    assert any("status=9/KILL" in m for m in pid1_messages(h, "edge-agent.service"))
    h.wait_phase("joined", 30)
    assert main_pid(h) not in (0, first, second)
    # Restarts resumed the phase: nodeadm ran once per step in all.
    assert [c[0] for c in h.nodeadm_calls() if c[0] in ("install", "init")] == ["install", "init"]


def test_bad_config_exits_78_is_not_restarted_and_logs_at_err(agent_host: AgentHost) -> None:
    h = agent_host
    h.prepare()
    h.config["no_such_key"] = 1
    h.write_config()
    h.m.run(["systemctl", "start", "edge-agent"], check=False)
    h.m.wait_for("the unit to fail", lambda: h.show("ActiveState")["ActiveState"] == "failed", 30)
    st = h.show("ExecMainStatus", "Result", "NRestarts")
    assert (st["ExecMainStatus"], st["Result"]) == ("78", "exit-code"), st
    # RestartPreventExitStatus=78: still not restarted after RestartSec (5 s) has passed.
    h.m.run(["sleep", "6"])
    assert h.show("NRestarts", "ActiveState") == {"NRestarts": "0", "ActiveState": "failed"}
    errors = [e["MESSAGE"] for e in h.m.journal("-u", "edge-agent", "-p", "err")]
    assert any("configuration error" in m and "no_such_key" in m for m in errors), errors


def test_reload_and_a_clean_stop_that_says_offline(agent_host: AgentHost) -> None:
    h = agent_host
    # The container shares the host's network: a broker on the host's loopback serves it.
    (h.m.work_dir / "broker").mkdir()
    with Mosquitto(h.m.work_dir / "broker") as broker:
        prefix = f"t{uuid.uuid4().hex[:10]}/edge/v1"
        h.write("/etc/edge-agent/controller-signing.pub",
                CommandSigner.generate().public_pem().decode())  # fmt: skip
        h.prepare(config={
            "mqtt": {"url": broker.url, "topic_prefix": prefix, "keepalive_s": 2},
            "commands": {"public_key_file": "/etc/edge-agent/controller-signing.pub"},
        })  # fmt: skip
        commander = Commander(broker.port, uid=UID, prefix=prefix)
        try:
            h.m.run(["systemctl", "start", "edge-agent"])
            h.wait_phase("joined", 90)
            pid = main_pid(h)
            h.m.run(["systemctl", "reload", "edge-agent"])  # ExecReload=/bin/kill -HUP
            h.m.wait_for("config.reloaded", lambda: h.events("config.reloaded"), 15)
            h.write_config("host: [not, a, mapping]\n")
            h.m.run(["systemctl", "reload", "edge-agent"])
            refused = h.m.wait_for("config.reload_refused",
                                   lambda: h.events("config.reload_refused"), 15)  # fmt: skip
            assert refused[0]["PRIORITY"] == "3"
            assert h.show("ActiveState")["ActiveState"] == "active" and main_pid(h) == pid

            h.m.run(["systemctl", "stop", "edge-agent"])
            st = h.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
            assert st == {"ActiveState": "inactive", "Result": "success",
                          "ExecMainStatus": "0", "ExecMainCode": "1"}, st  # fmt: skip
            offline = commander.wait_for(
                lambda: [a for a in commander.availability() if a.get("state") == "offline"], 10
            )
            assert offline, commander.availability()
        finally:
            commander.close()


def test_a_failing_step_reports_nodeadms_own_exit_status(agent_host: AgentHost) -> None:
    h = agent_host
    h.prepare()
    fake = h.programs["nodeadm"]
    h.set_nodeadm(
        "#!/bin/sh\n"
        'if [ "$1" = install ]; then\n'
        '  echo \'{"level":"fatal","msg":"Command failed","error":"stand-in exits 3"}\' >&2\n'
        "  exit 3\n"
        "fi\n"
        f'exec {fake} "$@"\n'
    )
    h.m.run(["systemctl", "start", "edge-agent"])
    finished = h.m.wait_for("nodeadm.finished", lambda: h.events("nodeadm.finished"), 60)
    assert finished[0]["step"] == "install" and finished[0]["exit_code"] == 3, finished[0]
    unit = "edge-agent-nodeadm-install"
    assert any(re.search(r"code=exited, status=3", m) for m in pid1_messages(h, unit)), (
        pid1_messages(h, unit)
    )


def test_exposure_score_stays_at_2_1_or_better(agent_host: AgentHost) -> None:
    out = agent_host.m.run(["systemd-analyze", "security", "--no-pager", "edge-agent"]).stdout
    score = re.search(r"Overall exposure level for edge-agent\.service: ([0-9.]+)", out)
    assert score, out[-2000:]
    assert float(score.group(1)) <= 2.1, out
