"""A nodeadm step outlives the agent under systemd: a restart or a stop of edge-agent.service in
the middle of a long install leaves the install's transient unit running, the next agent
adopts it (waits for it and reads its result from systemd) instead of starting a second
nodeadm, and a reboot resumes the phase the agent had reached."""

from __future__ import annotations

from tests.system.agent_host import AgentHost

INSTALL_UNIT = "edge-agent-nodeadm-install.service"
# Seconds per simulated step of the stand-in: its install takes several of them.
SLOW = {"NODEADM_FAKE_DELAY": "1.5"}


def unit_state(h: AgentHost, unit: str) -> str:
    return h.m.show(unit, "ActiveState")["ActiveState"]


def pid1_messages(h: AgentHost, unit: str) -> list[str]:
    return [e["MESSAGE"] for e in h.m.journal("_PID=1") if unit in e.get("MESSAGE", "")]


def start_a_long_install(h: AgentHost) -> None:
    h.prepare(nodeadm_env=SLOW)
    h.m.run(["systemctl", "start", "edge-agent"])
    h.m.wait_for(f"{INSTALL_UNIT} active",
                 lambda: unit_state(h, INSTALL_UNIT) == "active", 60, 0.2)  # fmt: skip


def test_restart_during_a_long_install_runs_it_once_and_joins(agent_host: AgentHost) -> None:
    h = agent_host
    start_a_long_install(h)
    first = h.show("MainPID")["MainPID"]
    h.m.run(["systemctl", "restart", "edge-agent"], timeout=120)
    assert h.show("MainPID")["MainPID"] != first
    # The install is still running under the new agent, in the same unit.
    assert unit_state(h, INSTALL_UNIT) == "active", pid1_messages(h, INSTALL_UNIT)
    h.wait_phase("joined", 120)
    assert len(h.nodeadm_calls("install")) == 1, h.nodeadm_calls()
    said = pid1_messages(h, INSTALL_UNIT)
    assert not [m for m in said if m.startswith("Stopping")], said
    assert f"{INSTALL_UNIT}: Deactivated successfully." in said, said
    adopted = h.events("nodeadm.adopted")
    assert adopted and adopted[0]["unit"] == INSTALL_UNIT, h.events("nodeadm.start")
    # The adopting agent did not repair dpkg under the running install's feet.
    assert not h.events("nodeadm.dpkg_repair")


def test_stop_during_a_long_install_exits_0_and_leaves_the_install_running(
    agent_host: AgentHost,
) -> None:
    h = agent_host
    start_a_long_install(h)
    h.m.run(["systemctl", "stop", "edge-agent"], timeout=120)
    st = h.show("ActiveState", "Result", "ExecMainStatus")
    assert st == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, st
    assert unit_state(h, INSTALL_UNIT) == "active", pid1_messages(h, INSTALL_UNIT)
    # It finishes by itself, nobody stops it.
    h.m.wait_for("the install to finish",
                 lambda: unit_state(h, INSTALL_UNIT) != "active", 60)  # fmt: skip
    said = pid1_messages(h, INSTALL_UNIT)
    assert f"{INSTALL_UNIT}: Deactivated successfully." in said, said
    assert not [m for m in said if m.startswith("Stopping")], said
    # systemd keeps nothing of a transient unit that succeeded while no agent watched, so the
    # next agent runs the (idempotent) install again, after the first one ended, then joins.
    h.m.run(["systemctl", "start", "edge-agent"])
    h.wait_phase("joined", 90)
    said = pid1_messages(h, INSTALL_UNIT)
    starts = [i for i, m in enumerate(said) if m.startswith("Starting")]
    ends = [i for i, m in enumerate(said) if m.endswith("Deactivated successfully.")]
    assert len(starts) == len(ends) == 2 and starts[0] < ends[0] < starts[1] < ends[1], said


def test_reboot_resumes_the_phase(agent_host: AgentHost) -> None:
    h = agent_host
    h.prepare()
    # The postinst enabled the unit on this first install: it starts by itself at boot.
    assert h.m.run(["systemctl", "is-enabled", "edge-agent"]).stdout.strip() == "enabled"
    h.m.run(["systemctl", "start", "edge-agent"])
    h.wait_phase("joined", 90)
    calls = h.nodeadm_calls()
    h.m.reboot()
    h.wait_phase("joined", 60)
    assert h.m.journal("-b", "-1", "-u", "edge-agent"), "no journal of the first boot"
    started = [d for d in h.agent_log("-b", "0") if d.get("event") == "agent.started"]
    assert started and started[0]["phase"] == "joined", started
    assert h.nodeadm_calls() == calls, "nodeadm ran again after the reboot"
