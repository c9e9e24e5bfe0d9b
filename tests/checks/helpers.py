"""Shared builders for the preflight check tests: config, assignment, context, fake programs.

Host trees come from `devtools.fakehost.make_host`; these helpers add what a single test
needs on top (a config pointing at the tree, an assignment, a small `#!/bin/sh` program).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from agent.checks import CheckContext, run_checks
from agent.core.assignment import Assignment, parse_assignment
from agent.core.checks import CheckResult
from agent.core.config import Config, parse_config
from agent.host.hostroot import HostRoot
from devtools.fakehost import install_fake_programs

ASSIGNMENT: dict[str, Any] = {
    "revision": 3,
    "cluster": {
        "name": "eks-hybrid-demo",
        "region": "us-west-2",
        "vpc_cidr": "10.100.0.0/16",
        "service_cidr": "172.20.0.0/16",
        "kubernetes_version": "1.31",
    },
    "kubernetes_version": "1.31",
    "credential_provider": "ssm",
    "ssm": {
        "activation_id": "0a1b2c3d-1111-2222-3333-444455556666",
        "activation_code": "EXAMPLEactivationCode01",
    },
    "network": {
        "remote_node_cidrs": ["10.200.0.0/16"],
        "remote_pod_cidrs": ["192.168.0.0/16"],
        "vpn_server_ip": "172.16.0.1",
        "node_ip": None,
    },
    "containerd_source": "distro",
}


NODE = "store-42-node-1"
CERT = "/etc/iam/pki/server.pem"
IRA: dict[str, Any] = {
    "node_name": NODE,
    "trust_anchor_arn": "arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/0f1e2d3c-aaaa-bbbb-cccc-111122223333",
    "profile_arn": "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/prof-id",
    "role_arn": "arn:aws:iam::111122223333:role/AmazonEKSHybridNodesRole",
    "certificate_path": CERT,
    "private_key_path": "/etc/iam/pki/server.key",
}


def ira_assignment(**changes: Any) -> Assignment:
    """The example assignment switched to IAM Roles Anywhere; ``changes`` edit that section."""
    doc = copy.deepcopy(ASSIGNMENT)
    doc.update(credential_provider="iam-ra", ssm=None, iam_roles_anywhere={**IRA, **changes})
    return parse_assignment(doc)


def assignment(**changes: Any) -> Assignment:
    """The contract's example assignment; ``section__key=value`` changes a nested field."""
    doc = copy.deepcopy(ASSIGNMENT)
    for key, value in changes.items():
        if "__" in key:
            section, sub = key.split("__", 1)
            doc[section][sub] = value
        else:
            doc[key] = value
    return parse_assignment(doc)


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


class RecordingLog:
    """A structlog-like logger that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)


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
        log=RecordingLog(),
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
