"""A made-up host with the fake nodeadm on it, and a `NodeadmRunner` pointed at both.

`FakeHost.runner()` builds a runner whose programs are the devtools.fakehost wrappers for a
host tree under ``tmp_path``; the recorded log and every ``on_line`` call are kept for
assertions. Knobs (``NODEADM_FAKE_*``) are baked into the wrappers, so a test that changes
them calls `FakeHost.knobs` to rewrite the wrappers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import Config, HostConfig, NodeadmConfig, ProgramsConfig
from agent.core.nodeadm_errors import NodeadmLine
from agent.host.hostroot import HostRoot
from agent.host.nodeadm import NodeadmRunner
from agent.testing import CapturingLog
from devtools.fakehost.hosttree import install_fake_programs, make_host

FAST = {"NODEADM_FAKE_DELAY": "0.01"}


@dataclasses.dataclass
class FakeHost:
    tmp: Path
    root: Path
    state_dir: Path
    bin_dir: Path
    programs: dict[str, str]
    config_path: Path
    invocations: Path
    lines: list[tuple[str, NodeadmLine]] = dataclasses.field(default_factory=list)
    log: CapturingLog = dataclasses.field(default_factory=CapturingLog)

    def knobs(self, **env: str) -> None:
        """Rewrite the fake programs' wrappers with these NODEADM_FAKE_* knobs."""
        self.programs |= install_fake_programs(
            self.bin_dir, self.root, env={**FAST, "NODEADM_FAKE_LOG": str(self.invocations), **env}
        )

    def config(self, **nodeadm: Any) -> Config:
        settings: dict[str, Any] = {"systemd_run": "never"} | nodeadm
        return Config(
            host=HostConfig(root=self.root),
            state_dir=self.state_dir,
            nodeadm=NodeadmConfig(config_path=self.config_path, **settings),
            programs=ProgramsConfig(
                nodeadm=self.programs["nodeadm"],
                systemctl=self.programs["systemctl"],
                dpkg=self.programs["dpkg"],
                systemd_run=self.programs.get("systemd_run", "systemd-run"),
            ),
        )

    def runner(
        self,
        *,
        secrets: Callable[[], list[str]] = list,
        env: Mapping[str, str] | None = None,
        **nodeadm: Any,
    ) -> NodeadmRunner:
        return NodeadmRunner(
            self.config(**nodeadm),
            HostRoot(self.root),
            on_line=lambda step, line: self.lines.append((step, line)),
            log=self.log,
            secrets=secrets,
            env=env,
        )

    def calls(self) -> list[dict[str, Any]]:
        """The fake nodeadm's own record of its invocations: argv and pid."""
        if not self.invocations.exists():
            return []
        return [json.loads(x) for x in self.invocations.read_text().splitlines() if x]


@pytest.fixture
def fake_host(tmp_path: Path) -> Callable[..., FakeHost]:
    def build(knobs: Mapping[str, str] | None = None, **host: Any) -> FakeHost:
        root = tmp_path / "host"
        make_host(root, **host)
        fh = FakeHost(
            tmp=tmp_path,
            root=root,
            state_dir=tmp_path / "state",
            bin_dir=tmp_path / "bin",
            programs={},
            config_path=tmp_path / "etc" / "edge-agent" / "nodeconfig.yaml",
            invocations=tmp_path / "nodeadm-invocations.jsonl",
        )
        fh.knobs(**(knobs or {}))
        return fh

    return build


SYSTEMD_RUN = """#!{python}
# A stand-in for `systemd-run --wait`: records its argv, then execs the command after "--"
# with the unit's StandardOutput/StandardError=append: file as stdout and stderr and its
# --setenv variables; `rm` is recorded only, as it would act on this machine's real paths.
import json, os, sys
argv = sys.argv[1:]
with open({record!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
split = argv.index("--")
options, command = argv[:split], argv[split + 1:]
env = dict(os.environ)
for i, opt in enumerate(options):
    if opt == "-p" and options[i + 1].startswith("StandardOutput=append:"):
        fd = os.open(options[i + 1].split(":", 1)[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    if opt == "--setenv":
        key, _, value = options[i + 1].partition("=")
        env[key] = value
if command[0] == "rm":
    sys.exit(0)
os.execvpe(command[0], command, env)
"""


def fake_systemd_run(fh: FakeHost) -> Path:
    """Install the `systemd-run` stand-in as the host's program; returns the file in which
    it records each call's argv, one JSON list a line."""
    record = fh.tmp / "systemd-run.jsonl"
    script = fh.tmp / "systemd-run"
    script.write_text(SYSTEMD_RUN.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    fh.programs["systemd_run"] = str(script)
    return record
