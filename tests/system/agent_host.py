"""The packaged agent on a booted Debian 12: installed with dpkg, configured, driven by systemctl.

`AgentHost` takes a booted `Machine` and sets up what a real host would have, except
nodeadm and the package managers: the .deb installed with ``dpkg -i``; a made-up host tree
at ``/srv/host`` with the devtools stand-ins (nodeadm, apt-get, dpkg, ip, timedatectl; copied
into ``/opt/edge-agent-test`` and run by the package's own Python, which has PyYAML); a dummy
``kubelet.service`` (``systemctl is-active kubelet`` is real); a config with
``assignment_file``. systemd, systemctl, systemd-run and journalctl are the real ones.

The stand-ins keep their call logs in the host tree, which ``ProtectSystem=strict`` makes
read-only to the agent and its children. A drop-in gives the agent ``ReadWritePaths=`` on
the tree only; the transient units nodeadm runs in
need nothing (PID 1 spawns them, outside the sandbox).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from agent.testing import sample_assignment
from devtools.fakehost import layout
from tests.support import ROOT
from tests.system.nspawn import Machine

HOST_ROOT = "/srv/host"
TEST_DIR = "/opt/edge-agent-test"
CONFIG = "/etc/edge-agent/config.yaml"
UID = "edge-system-1"
PYTHON = "/usr/lib/edge-agent/bin/python"
DROP_IN = """[Service]
# The made-up host tree (with the stand-ins' call logs) stands in for the real host's paths.
ReadWritePaths=/srv/host
"""
KUBELET = """[Unit]
Description=kubelet stand-in for the edge-agent system tests
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""
_MAKE_HOST = """
import json, sys
sys.path.insert(0, "/opt/edge-agent-test")
from pathlib import Path
from devtools.fakehost.hosttree import install_fake_programs, make_host
make_host(Path("/srv/host"))
programs = install_fake_programs(
    Path("/opt/edge-agent-test/bin"), Path("/srv/host"), env=json.loads(sys.argv[1])
)
print(json.dumps(programs))
"""
# Programs the agent runs for real here: systemd's own.
_REAL = ("systemctl", "journalctl")


class AgentHost:
    """The agent's package and test host on one booted container."""

    def __init__(self, machine: Machine, deb: Path) -> None:
        self.m = machine
        self.deb = deb
        self.programs: dict[str, str] = {}
        self.config: dict[str, Any] = {}

    @property
    def root(self) -> Path:
        return self.m.directory

    # ---- setup -------------------------------------------------------------------------
    def install(self) -> None:
        shutil.copy(self.deb, self.root / "var/tmp" / self.deb.name)
        self.m.run(["dpkg", "-i", f"/var/tmp/{self.deb.name}"], timeout=120)

    def prepare(
        self,
        *,
        nodeadm_env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        start_kubelet: bool = True,
    ) -> None:
        """Host tree, stand-ins, kubelet, config and assignment; the agent is not started."""
        dest = self.root / TEST_DIR.lstrip("/")
        shutil.rmtree(dest / "devtools", ignore_errors=True)
        shutil.copytree(
            ROOT / "devtools", dest / "devtools", ignore=shutil.ignore_patterns("__pycache__")
        )
        env = {"NODEADM_FAKE_DELAY": "0.05", **(nodeadm_env or {})}
        out = self.m.run([PYTHON, "-c", _MAKE_HOST, json.dumps(env)]).stdout
        self.programs = {k: v for k, v in json.loads(out).items() if k not in _REAL}
        self.write("/etc/systemd/system/edge-agent.service.d/test.conf", DROP_IN)
        self.write("/etc/systemd/system/kubelet.service", KUBELET)
        self.write("/etc/edge-agent/assignment.yaml", yaml.safe_dump(sample_assignment()), 0o600)
        self.config = {
            "host": {"uid": UID, "root": HOST_ROOT, "labels": {"site": "system-test"}},
            "log": {"level": "info", "format": "json"},
            "checks": {"min_free_disk_gb": 0},
            "join": {"retry_backoff_s": 1},
            "health": {
                "kubelet_healthz_url": "http://127.0.0.1:9/healthz",
                "degraded_after_s": 3600,
            },
            "programs": self.programs,
            "assignment_file": "/etc/edge-agent/assignment.yaml",
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(self.config.get(key), dict):
                self.config[key].update(value)
            else:
                self.config[key] = value
        self.write_config()
        self.m.run(["systemctl", "daemon-reload"])
        if start_kubelet:
            self.m.run(["systemctl", "enable", "--now", "kubelet.service"])

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def write_config(self, text: str | None = None) -> None:
        self.write(CONFIG, text if text is not None else yaml.safe_dump(self.config), 0o600)

    def set_nodeadm(self, script: str) -> None:
        """Replace the nodeadm program with a shell script (a stand-in with other behaviour)."""
        path = f"{TEST_DIR}/bin/nodeadm-custom"
        self.write(path, script, 0o755)
        self.programs["nodeadm"] = path
        self.config["programs"] = self.programs
        self.write_config()

    # ---- systemd's view ----------------------------------------------------------------
    def show(self, *props: str) -> dict[str, str]:
        return self.m.show("edge-agent.service", *props)

    def phase(self) -> str:
        return self.show("StatusText")["StatusText"]

    def wait_phase(self, phase: str, timeout: float = 60) -> None:
        self.m.wait_for(
            f"StatusText={phase}", lambda: self.phase() == phase or None, timeout, interval=0.3
        )

    def agent_log(self, *args: str) -> list[dict[str, Any]]:
        """The agent's own JSON lines from the journal, with journald's PRIORITY added."""
        out = []
        for entry in self.m.journal("-u", "edge-agent.service", *args):
            with contextlib.suppress(ValueError, TypeError):
                doc = json.loads(entry.get("MESSAGE", ""))
                if isinstance(doc, dict):
                    doc["PRIORITY"] = entry.get("PRIORITY")
                    doc["_PID"] = entry.get("_PID")
                    out.append(doc)
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [d for d in self.agent_log() if d.get("event") == name]

    def nodeadm_calls(self, sub: str | None = None) -> list[list[str]]:
        calls = [c["argv"] for c in layout.calls(self.root / HOST_ROOT.lstrip("/"), "nodeadm")]
        return [c for c in calls if sub is None or (c and c[0] == sub)]

    def diagnostics(self) -> str:
        """What a failure message should show: the unit's status and the journal's tail."""
        status = self.m.run(["systemctl", "status", "--no-pager", "-n", "0", "edge-agent"],
                            check=False).stdout  # fmt: skip
        tail = self.m.run(["journalctl", "--no-pager", "-n", "60"], check=False).stdout
        return f"{status}\n{tail}"
