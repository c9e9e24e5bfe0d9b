"""The .deb installed with dpkg on Debian 12 (Python 3.11) and Debian 13 (Python 3.13) booted
with systemd as PID 1 (tests/system/nspawn.py): postinst builds the venv for that python3, the
unit is enabled, the installed agent runs, the service refuses the shipped config naming the key
it lacks, then, configured as tests/system/agent_host.py sets up a host (the nodeadm stand-in),
the started service joins; and a purge leaves nothing. Debian 13's tree has no python3-venv: the
package needs none. Never on this machine itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent import __version__
from tests.packaging.conftest import Build
from tests.system.agent_host import AgentHost
from tests.system.nspawn import TREES, Machine, Tree, cannot_boot_reason, rootfs

# Each suite's system Python; its tree's packages are nspawn.TREES[suite].
SUITES = {"bookworm": ("3.11", TREES["bookworm"]), "trixie": ("3.13", TREES["trixie"])}
FOOTPRINT = (
    "/usr/lib/edge-agent",
    "/usr/bin/edge-agent",
    "/usr/share/edge-agent",
    "/usr/libexec/edge-agent",
    "/etc/edge-agent",
    "/var/lib/edge-agent",
    "/etc/systemd/system/multi-user.target.wants/edge-agent.service",
)


@pytest.mark.slow
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_deb_installs_runs_under_systemd_and_purges(
    build: Build, tmp_path: Path, suite: str
) -> None:
    reason = cannot_boot_reason()
    if reason:
        pytest.skip(f"cannot boot a systemd container here: {reason}")
    python, packages = SUITES[suite]
    with Tree(rootfs(suite, packages), tmp_path / "tree") as tree:
        shutil.copy(build.deb, tree.root / "var/tmp" / build.deb.name)
        with Machine.boot(tree.root, tmp_path / "m") as m:
            version = m.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            assert version.stdout.strip() == python
            r = m.run(["dpkg", "-i", f"/var/tmp/{build.deb.name}"])
            assert f"virtualenv /usr/lib/edge-agent built for Python {python}" in r.stdout
            assert m.run(["edge-agent", "version"]).stdout.strip() == f"edge-agent {__version__}"
            assert m.run(["systemctl", "is-enabled", "edge-agent"]).stdout.strip() == "enabled"
            site = m.run(
                ["/usr/lib/edge-agent/bin/python", "-c", "import yaml; print(yaml.__file__)"]
            )
            assert site.stdout.startswith(f"/usr/lib/edge-agent/lib/python{python}/site-packages/")

            # The unit's sandbox runs the installed agent: it reads the shipped config and
            # refuses it (78, EX_CONFIG), naming the key an operator must fill in.
            m.run(["systemctl", "start", "edge-agent"], check=False)
            m.wait_for(
                "edge-agent to exit 78",
                lambda: m.show("edge-agent", "ExecMainStatus")["ExecMainStatus"] == "78",
                30,
            )
            logs = " ".join(e.get("MESSAGE", "") for e in m.journal("-u", "edge-agent"))
            assert "controller.url" in logs, logs[-2000:]
            m.run(["systemctl", "stop", "edge-agent"], check=False)

            # Configured as a test host (made-up host tree, nodeadm stand-in, kubelet, an
            # assignment), the installed service starts and the host joins.
            h = AgentHost(m, build.deb)
            h.prepare()
            m.run(["systemctl", "start", "edge-agent"])
            try:
                h.wait_phase("joined", 90)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{h.diagnostics()}") from None
            st = h.show("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
            assert (st["ActiveState"], st["SubState"]) == ("active", "running"), (
                st,
                h.diagnostics(),
            )
            assert int(st["MainPID"]) > 0 and st["NRestarts"] == "0", st
            assert st["StatusText"] == "joined", st
            # systemd's main process is the installed agent itself.
            args = m.run(["ps", "-o", "args=", "-p", st["MainPID"]]).stdout
            assert "/usr/lib/edge-agent/bin/edge-agent run" in args, args
            calls = [c[0] for c in h.nodeadm_calls() if c[0] in ("install", "init")]
            assert calls == ["install", "init"], calls
            m.run(["systemctl", "stop", "edge-agent"])
            assert h.show("ActiveState", "Result") == {"ActiveState": "inactive",
                                                       "Result": "success"}  # fmt: skip

            # A second configure (dpkg-reconfigure, an upgrade) rebuilds in place.
            r = m.run(["dpkg-reconfigure", "edge-agent"], check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            assert m.run(["edge-agent", "version"]).returncode == 0

            m.run(["dpkg", "--purge", "edge-agent"])
            left = m.sh(f"ls -d {' '.join(FOOTPRINT)} 2>/dev/null || true").stdout.split()
            assert left == [], f"left behind after purge: {left}"
