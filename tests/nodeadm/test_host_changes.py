"""Host changes the agent makes itself go through transient units when systemd runs it.

The agent's unit is sandboxed (ProtectSystem=strict) and children inherit the sandbox, so
`apt-get update`, `dpkg --configure -a` and removing old kubelet certificates must run as
units of their own (docs/systemd.md). A stand-in `systemd-run` records each call; it runs
the wrapped command, except `rm`, which would act on this machine's real paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from agent.core.assignment import parse_assignment
from agent.core.config import parse_config
from agent.host.hostroot import HostRoot
from agent.host.packages import refresh_package_index
from devtools.fakehost.layout import calls, under
from tests.nodeadm.conftest import FakeHost, fake_systemd_run
from tests.nodeadm.samples import SSM

A = parse_assignment(SSM)
Factory = Callable[..., FakeHost]


def units(record: Path) -> list[list[str]]:
    return [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []


def command_of(argv: list[str]) -> list[str]:
    assert "--pipe" in argv and "--wait" in argv and "Type=exec" in argv
    return argv[argv.index("--") + 1 :]


async def test_dpkg_repair_and_cert_removal_run_as_transient_units(fake_host: Factory) -> None:
    fh = fake_host()
    record = fake_systemd_run(fh)
    updates = under(fh.root, "var/lib/dpkg/updates")
    updates.mkdir(parents=True, exist_ok=True)
    (updates / "0001").write_text("half-configured\n")
    runner = fh.runner(systemd_run="always")
    assert (await runner.install(A)).ok
    repair = [u for u in units(record) if "dpkg-repair" in u[1]]
    assert len(repair) == 1 and command_of(repair[0]) == [fh.programs["dpkg"], "--configure", "-a"]
    assert ["--configure", "-a"] in [c["argv"] for c in calls(fh.root, "dpkg")]
    outcome = await runner.uninstall(drained=True, remove_kubelet_certs=True)
    assert outcome.ok, outcome.message
    certs = [u for u in units(record) if "kubelet-certs" in u[1]]
    assert len(certs) == 1 and command_of(certs[0]) == ["rm", "-rf", "--", "/var/lib/kubelet/pki"]


async def test_without_systemd_the_same_changes_run_directly(fake_host: Factory) -> None:
    fh = fake_host()
    record = fake_systemd_run(fh)
    pki = under(fh.root, "var/lib/kubelet/pki")
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "kubelet-server-current.pem").write_text("old cluster\n")
    runner = fh.runner(systemd_run="never")
    assert (await runner.install(A)).ok
    assert (await runner.uninstall(drained=True, remove_kubelet_certs=True)).ok
    assert not pki.exists() and units(record) == []


async def test_package_index_refresh_runs_as_a_transient_unit(fake_host: Factory) -> None:
    fh = fake_host(index_age_s=9 * 86400)
    record = fake_systemd_run(fh)
    cfg = parse_config(
        {
            "assignment_file": "/dev/null",
            "state_dir": str(fh.state_dir),
            "host": {"root": str(fh.root)},
            "nodeadm": {"systemd_run": "always"},
            "programs": {
                "apt_get": fh.programs["apt_get"],
                "systemd_run": fh.programs["systemd_run"],
            },
        },
        readable=lambda _p: True,
    )
    result = await refresh_package_index(cfg, HostRoot(fh.root), fh.state_dir, lock_wait_s=5)
    assert result.manager == "apt"
    (unit,) = units(record)
    assert command_of(unit) == [fh.programs["apt_get"], "update"]
    assert "--setenv" in unit and "DEBIAN_FRONTEND=noninteractive" in unit
