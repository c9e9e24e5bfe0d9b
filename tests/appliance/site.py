"""One appliance site: its persistent partition, the boots of an image over it, and what
each boot showed.

A `Site` owns a directory standing in for the persistent partition. `Site.boot` boots an
image the Kairos way (tests/appliance/kairos.py) with the shipped user-data's binds, minus
any the test leaves out, and a fresh in-memory ``/etc``, ``/var`` and ``/srv``; the agent's
configuration is the user-data's ``initramfs`` stage, with the controller and broker
replaced by an ``assignment_file`` (the boot has a private network with no broker). A boot
is read through `Seen`, then powered off: what the agent reports (``edge-agent status`` and
``check``), its journal and that of its transient units, and every nodeadm run, from the
stand-in's call log on the persistent ``/var/log``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.testing import sample_assignment
from tests.appliance import kairos
from tests.appliance.image import NODE_IP
from tests.system.nspawn import Machine

CALLS = "/var/log/nodeadm-calls.jsonl"
ASSIGNMENT_FILE = "/etc/edge-agent/assignment.yaml"
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward")


def assignment(revision: int = 1, kubernetes_version: str = "1.31") -> dict[str, Any]:
    """The example assignment at this site's node IP, with no CIDR to check against the
    boot's private network beyond the remote node one."""
    return sample_assignment(
        revision=revision,
        kubernetes_version=kubernetes_version,
        cluster__service_cidr=None,
        cluster__kubernetes_version=None,
        network={"remote_node_cidrs": ["10.200.0.0/16"], "node_ip": NODE_IP},
    )


def stage_files(doc: dict[str, Any], assigned: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The user-data's initramfs files, the config pointed at a local assignment."""
    files = dict(kairos.stage_files(doc))
    entry = files["/etc/edge-agent/config.yaml"]
    config = yaml.safe_load(entry["content"])
    config.pop("controller")
    config.pop("mqtt")
    config["assignment_file"] = ASSIGNMENT_FILE
    files["/etc/edge-agent/config.yaml"] = {**entry, "content": yaml.safe_dump(config)}
    files[ASSIGNMENT_FILE] = {"content": json.dumps(assigned), "permissions": 0o600}
    return files


@dataclass
class Seen:
    """What one boot showed; filled while it runs."""

    machine: Machine
    persist: Path
    status: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    calls: list[list[str]] = field(default_factory=list)  # nodeadm runs on the site so far
    # The A/B boot: the status and runs as the newer agent resumed, before the new assignment.
    resumed: dict[str, Any] = field(default_factory=dict)
    resumed_calls: list[list[str]] = field(default_factory=list)

    def agent_status(self) -> dict[str, Any]:
        out = self.machine.run(["edge-agent", "status", "--json"], check=False).stdout
        try:
            doc = json.loads(out)
        except ValueError:
            return {}
        self.status = doc if isinstance(doc, dict) else {}
        return self.status

    def wait_phase(self, *phases: str, timeout: float = 120) -> dict[str, Any]:
        self.wait(f"phase in {phases}", lambda s: s.get("phase") in phases, timeout)
        return self.status

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        try:
            self.machine.wait_for(what, lambda: predicate(self.agent_status()), timeout)
        except AssertionError as e:
            journal = "\n".join(self.read_journal()[-30:])
            raise AssertionError(f"{e}\nstatus: {self.status}\njournal:\n{journal}") from None

    def run_check(self) -> dict[str, dict[str, Any]]:
        out = self.machine.run(["edge-agent", "check", "--json"], check=False, timeout=120)
        self.checks = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
        return self.checks

    def read_journal(self) -> list[str]:
        entries = self.machine.journal("-u", "edge-agent", "-u", "edge-agent-*")
        self.journal = [str(e.get("MESSAGE", "")) for e in entries]
        return self.journal

    def read_sysctl(self) -> dict[str, str]:
        out = self.machine.run(["sysctl", "-n", *SYSCTLS]).stdout.split("\n")
        self.sysctl = dict(zip(SYSCTLS, (v.strip() for v in out), strict=False))
        return self.sysctl


class Site:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.persist = work / "persist"
        self.user_data = kairos.user_data()
        self.boots = 0

    def calls(self) -> list[list[str]]:
        """Every nodeadm run on this site so far, from the persistent call log."""
        log = self.persist / CALLS.lstrip("/")
        if not log.exists():
            return []
        return [json.loads(line)["argv"] for line in log.read_text().splitlines() if line]

    @contextmanager
    def boot(
        self,
        image: Path,
        *,
        assigned: dict[str, Any] | None = None,
        leave_out: Sequence[str] = (),
    ) -> Iterator[Seen]:
        self.boots += 1
        paths = [p for p in kairos.persistent_paths(self.user_data) if p not in leave_out]
        kairos.prepare_persistent(self.persist, image, paths)
        upper = kairos.fresh_upper(self.work / f"etc-upper-{self.boots}")
        kairos.write_stage(upper, stage_files(self.user_data, assigned or assignment()))
        args = kairos.nspawn_args(self.persist, paths, upper)
        with Machine.boot(image, self.work / f"boot-{self.boots}", args) as machine:
            yield Seen(machine, self.persist)
