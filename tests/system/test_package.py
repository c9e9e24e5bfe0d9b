"""The .deb on a real Debian 12: what it depends on covers what its unit and the agent execute,
and `dpkg --purge` leaves nothing of it behind, even with the agent running."""

from __future__ import annotations

import re
import subprocess

from tests.system.agent_host import AgentHost


def depends(deb: str) -> list[set[str]]:
    """The Depends field as a list of alternatives (each a set of package names)."""
    field = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    return [
        {re.sub(r"\s*\(.*\)", "", alt).strip() for alt in item.split("|")}
        for item in field.split(",")
        if item.strip()
    ]


def owner(h: AgentHost, path: str) -> str:
    """The package that ships ``path`` (dpkg records /bin or /usr/bin, whichever it shipped)."""
    merged = path.removeprefix("/usr") if path.startswith("/usr/") else f"/usr{path}"
    for candidate in (path, merged):
        found = h.m.run(["dpkg", "-S", candidate], check=False)
        if found.returncode == 0:
            return found.stdout.split(":", 1)[0].strip()  # "procps: /bin/kill"
    raise AssertionError(f"no package ships {path}")


def test_depends_on_what_the_unit_and_the_agent_execute(agent_host: AgentHost) -> None:
    h = agent_host
    deps = depends(str(h.deb))
    unit = (h.root / "usr/lib/systemd/system/edge-agent.service").read_text()
    reload_program = re.search(r"^ExecReload=(\S+)", unit, re.M)
    assert reload_program, "no ExecReload= in the unit"
    needed = {
        reload_program.group(1): "ExecReload=",
        "/usr/bin/systemd-run": "steps run as transient units",
        "/usr/bin/systemctl": "unit state and stopping a step's unit",
    }
    for path, why in needed.items():
        package = owner(h, path)
        assert any(package in alt for alt in deps), f"{path} ({why}) is in {package}: {deps}"
    # systemd-run --wait needs a running system bus, which systemd only Recommends.
    assert any({"dbus", "dbus-broker"} <= alt or "dbus" in alt for alt in deps), deps


def test_purge_leaves_nothing(agent_host: AgentHost) -> None:
    h = agent_host
    h.prepare()
    h.m.run(["systemctl", "start", "edge-agent"])
    h.wait_phase("joined", 90)
    # The test's own drop-in is not the package's to remove.
    h.m.run(["rm", "-rf", "/etc/systemd/system/edge-agent.service.d"])
    h.m.run(["dpkg", "--purge", "edge-agent"], timeout=120)
    assert h.show("LoadState")["LoadState"] == "not-found"
    assert h.m.run(["pgrep", "-f", "/usr/lib/edge-agent"], check=False).returncode == 1
    left = h.m.run(
        ["find", "/etc", "/usr", "/var/lib", "-name", "*edge-agent*",
         "-not", "-path", "/opt/edge-agent-test*"],
        check=False,
    ).stdout.split()  # fmt: skip
    assert left == [], left
    assert h.m.run(["dpkg-query", "-W", "edge-agent"], check=False).returncode != 0
    failed = h.m.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend",
                      "edge-agent*"]).stdout  # fmt: skip
    assert failed.strip() == "", failed
