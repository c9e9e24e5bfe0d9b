"""Shared builders for the preflight check tests: config, assignment, context, fake programs.

Host trees come from `devtools.fakehost.make_host`; these helpers add what a single test
needs on top (a config pointing at the tree, an assignment, a small `#!/bin/sh` program).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from agent.checks import CheckContext, run_checks
from agent.core.assignment import Assignment
from agent.core.checks import CheckResult
from agent.core.config import Config, parse_config
from agent.host.hostroot import HostRoot
from agent.testing import CapturingLog, sample_assignment, sample_assignment_obj
from devtools.fakehost import install_fake_programs

# The example assignment without a node IP: the node IP checks find it from the host's
# addresses unless a test names one.
ASSIGNMENT: dict[str, Any] = sample_assignment(network__node_ip=None)
# The IAM Roles Anywhere example's node name and certificate.
NODE = "store-42-node-1"
CERT = "/etc/iam/pki/server.pem"


def ira_assignment(**changes: Any) -> Assignment:
    """The example assignment switched to IAM Roles Anywhere; ``changes`` edit that section."""
    section = {f"iam_roles_anywhere__{key}": value for key, value in changes.items()}
    return sample_assignment_obj(network__node_ip=None, credential_provider="iam-ra", **section)


def assignment(**changes: Any) -> Assignment:
    """`ASSIGNMENT` parsed; ``section__key=value`` changes a nested field."""
    return sample_assignment_obj(**{"network__node_ip": None, **changes})


def config(tmp_path: Path, root: Path, **sections: Any) -> Config:
    """A config whose host root is ``root`` and state dir is under ``tmp_path``."""
    assignment_file = tmp_path / "assignment.json"
    if not assignment_file.exists():
        assignment_file.write_text(json.dumps(ASSIGNMENT))
    doc: dict[str, Any] = {
        "assignment_file": str(assignment_file),
        "state_dir": str(tmp_path / "state"),
        "host": {"root": str(root)},
    }
    for name, value in sections.items():
        if isinstance(value, dict):
            doc.setdefault(name, {}).update(value)
        else:
            doc[name] = value
    return parse_config(doc)


def context(
    cfg: Config,
    a: Assignment | None = None,
    *,
    addresses: tuple[str, ...] = ("10.200.1.5",),
    now: float | None = None,
    allow_changes: bool = False,
    installed_minor: str | None = None,
    arch: str = "x86_64",
) -> CheckContext:
    return CheckContext(
        config=cfg,
        host=HostRoot(cfg.host.root),
        assignment=a,
        state_dir=cfg.state_dir,
        installed_minor=installed_minor,
        addresses=addresses,
        now=time.time() if now is None else now,
        allow_changes=allow_changes,
        log=CapturingLog(),
        arch=arch,
    )


async def one(ctx: CheckContext, check_id: str) -> CheckResult:
    [result] = await run_checks(ctx, only=[check_id])
    return result


def fake_programs(tmp_path: Path, root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """devtools' fake host programs for ``root``, as a ``programs:`` config section."""
    return install_fake_programs(tmp_path / "fakebin", root, env=env)


def script(path: Path, body: str) -> str:
    """Write an executable ``#!/bin/sh`` program; return its path for ``programs:``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body.strip() + "\n")
    path.chmod(0o755)
    return str(path)


def age(path: Path, seconds: float) -> None:
    """Set ``path``'s mtime to ``seconds`` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t))
