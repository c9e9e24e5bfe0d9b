"""Diagnostics bundles built in-process from explicit inputs: what a bundle holds, that no
secret survives in it, that it keeps under ``diagnostics.max_bytes``, and that
agent/diagnostics.py never reaches into the application to find what it needs."""

from __future__ import annotations

import ast
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from agent.core.config import parse_config
from agent.diagnostics import BundleInputs, build_bundle
from agent.logs import REDACTED

AGENT = Path(__file__).resolve().parent.parent / "agent"
TOKEN = "registration-token-5d1e77c2"
ACTIVATION = "ssm-activation-code-9b3f04aa"
SMALL = {"status.json", "config.json", "checks.json", "journal.txt", "nodeadm-debug.json"}


def _members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None, m.name
            out[m.name] = f.read().decode()
    return out


def _state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"phase": "joined", "code": ACTIVATION}))
    (state / "logs" / "nodeadm-init.log").write_text(f"init --activation-code {ACTIVATION}\n")
    (state / "logs" / "unrelated.log").write_text("not a nodeadm log\n")
    return state


def _inputs(state: Path, **over: Any) -> BundleInputs:
    async def journal() -> str:
        return f"kubelet: token {TOKEN}\n"

    async def nodeadm_debug() -> dict[str, Any]:
        return {"ok": True, "items": [{"description": f"activation {ACTIVATION}", "ok": True}]}

    fields: dict[str, Any] = {
        "state_dir": state,
        "max_bytes": 1024 * 1024,
        "config": {"controller": {"registration_token_file": "/etc/edge-agent/token"}},
        "checks": [{"id": "os.supported", "status": "pass", "message": f"seen {TOKEN}"}],
        "status": lambda: {"phase": "joined", "last_error": {"message": f"bad {ACTIVATION}"}},
        "secrets": lambda: [TOKEN, ACTIVATION, ""],
        "journal": journal,
        "nodeadm_debug": nodeadm_debug,
    }
    return BundleInputs(**(fields | over))


async def test_a_bundle_holds_each_member_and_no_secret(tmp_path: Path) -> None:
    bundle = await build_bundle(_inputs(_state_dir(tmp_path)))
    members = _members(bundle.data)
    assert set(members) == SMALL | {"state.json", "logs/nodeadm-init.log"}
    assert json.loads(members["status.json"])["phase"] == "joined"
    assert json.loads(members["state.json"])["phase"] == "joined"
    assert json.loads(members["config.json"]) == {
        "controller": {"registration_token_file": "/etc/edge-agent/token"}
    }
    assert json.loads(members["checks.json"])[0]["id"] == "os.supported"
    assert json.loads(members["nodeadm-debug.json"])["ok"] is True
    assert members["journal.txt"] == f"kubelet: token {REDACTED}\n"
    assert members["logs/nodeadm-init.log"] == f"init --activation-code {REDACTED}\n"
    for name, text in members.items():
        assert TOKEN not in text and ACTIVATION not in text, name
    summary = bundle.summary(uploaded=False)
    assert summary["bytes"] == len(bundle.data) and summary["uploaded"] is False


async def test_a_failing_nodeadm_debug_is_said_in_the_bundle(tmp_path: Path) -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError(f"nodeadm exited 1 with {ACTIVATION}")

    members = _members(
        (await build_bundle(_inputs(_state_dir(tmp_path), nodeadm_debug=broken))).data
    )
    assert (
        members["nodeadm-debug.json"] == f"nodeadm debug failed: nodeadm exited 1 with {REDACTED}\n"
    )


async def test_a_secret_learnt_while_nodeadm_debug_runs_is_struck_out(tmp_path: Path) -> None:
    known = [TOKEN]

    async def debug_that_registers() -> dict[str, Any]:
        known.append("host-token-learnt-during-debug")
        return {"ok": True, "items": []}

    def status() -> dict[str, Any]:
        return {"phase": "joined", "host_token": known[-1]}

    inputs = _inputs(
        _state_dir(tmp_path),
        nodeadm_debug=debug_that_registers,
        status=status,
        secrets=lambda: known,
    )
    members = _members((await build_bundle(inputs)).data)
    assert json.loads(members["status.json"]) == {"phase": "joined", "host_token": REDACTED}


async def test_the_bundle_keeps_under_max_bytes_with_each_log_end(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    line = b"".join(b"%08x " % (i * 2654435761 % 2**32) for i in range(12)) + b"\n"
    for name in ("nodeadm-install.log", "nodeadm-init.log.1"):
        (state / "logs" / name).write_bytes(line * 20000 + f"the end of {name}\n".encode())
    limit = 256 * 1024
    bundle = await build_bundle(_inputs(state, max_bytes=limit))
    assert len(bundle.data) <= limit
    members = _members(bundle.data)
    for name in ("nodeadm-install.log", "nodeadm-init.log.1"):
        text = members[f"logs/{name}"]
        assert text.startswith("[... first ") and text.endswith(f"the end of {name}\n")
    assert members["logs/nodeadm-init.log"] == f"init --activation-code {REDACTED}\n"


async def test_inputs_from_the_config_run_its_journalctl_and_hold_it_redacted(
    tmp_path: Path,
) -> None:
    journalctl = tmp_path / "journalctl"
    journalctl.write_text(f'#!/bin/sh\necho "journal: $* {TOKEN}"\n')
    journalctl.chmod(0o755)
    state = _state_dir(tmp_path)
    config = parse_config(
        {
            "assignment_file": "/etc/edge-agent/assignment.yaml",
            "state_dir": str(state),
            "programs": {"journalctl": str(journalctl)},
            "diagnostics": {"max_bytes": 300_000},
        },
        readable=lambda _p: True,
    )

    async def nodeadm_debug() -> dict[str, Any]:
        return {"ok": True, "items": []}

    inputs = BundleInputs.from_config(
        config,
        checks=[],
        status=lambda: {"phase": "joined"},
        secrets=lambda: [TOKEN],
        nodeadm_debug=nodeadm_debug,
    )
    assert (inputs.state_dir, inputs.max_bytes) == (state, 300_000)
    members = _members((await build_bundle(inputs)).data)
    assert json.loads(members["config.json"]) == json.loads(json.dumps(config.redacted()))
    assert members["journal.txt"].startswith("journal: -u kubelet -u containerd -u edge-agent")
    assert members["journal.txt"].endswith(f" {REDACTED}\n")
    assert json.loads(members["state.json"])["phase"] == "joined"


async def test_a_missing_journalctl_is_said_in_the_bundle(tmp_path: Path) -> None:
    config = parse_config(
        {
            "assignment_file": "/etc/edge-agent/assignment.yaml",
            "state_dir": str(tmp_path),
            "programs": {"journalctl": str(tmp_path / "no-such-journalctl")},
        },
        readable=lambda _p: True,
    )

    async def nodeadm_debug() -> dict[str, Any]:
        return {}

    inputs = BundleInputs.from_config(
        config, checks=[], status=dict, secrets=list, nodeadm_debug=nodeadm_debug
    )
    members = _members((await build_bundle(inputs)).data)
    assert members["journal.txt"].startswith("journalctl unavailable: ")
    assert members["state.json"].startswith("unreadable: ")


# ---- what diagnostics may import ---------------------------------------------------------------

# The shell and the components: a bundle is built from what its caller hands it, so none of
# these is ever imported by diagnostics, directly, lazily or through another module.
APPLICATION = frozenset(
    {
        "agent.app",
        "agent.operations",
        "agent.outbound",
        "agent.driver",
        "agent.effects",
        "agent.assignments",
        "agent.reload_config",
        "agent.commands.dispatcher",
    }
)


def _file_of(package: Path, module: str) -> Path | None:
    base = package.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _reach(package: Path, start: str) -> set[str]:
    """Every module of `package` that importing `start` may load, lazy imports included."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        path = _file_of(package, module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                parts = name.split(".")
                # importing a.b.c runs a/__init__.py and a/b/__init__.py too
                todo.extend(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return {m for m in seen if m.split(".")[0] == package.name}


def test_diagnostics_reaches_no_part_of_the_application() -> None:
    reached = _reach(AGENT, "agent.diagnostics")
    assert "agent.host.proc" in reached, "the scan did not follow the imports"
    assert reached & APPLICATION == set()


def test_the_scan_follows_lazy_and_indirect_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "agent"
    (pkg / "host").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "host" / "__init__.py").write_text("")
    (pkg / "diagnostics.py").write_text("from agent.host import helper\n")
    (pkg / "host" / "helper.py").write_text("def f():\n    import agent.app\n")
    (pkg / "app.py").write_text("")
    assert _reach(pkg, "agent.diagnostics") & APPLICATION == {"agent.app"}
