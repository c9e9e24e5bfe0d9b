"""Who may import what (issue 3): one module owns aiomqtt (and paho under it), one owns httpx,
and the agent never imports the project's test tools. Read from the source with `ast`, so a
lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"

OWNERS = {
    "aiomqtt": {"agent/link/mqtt.py"},
    "paho": {"agent/link/mqtt.py"},
    "httpx": {"agent/link/controller.py"},
    "prometheus_client": {"agent/exporter.py"},
    "devtools": set(),
    "tests": set(),
}


def _imports(path: Path) -> set[str]:
    """Top-level package names `path` imports, wherever in the file the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_each_outside_library_has_one_owner_and_test_tools_none() -> None:
    importers: dict[str, set[str]] = {name: set() for name in OWNERS}
    files = sorted(AGENT.rglob("*.py"))
    assert len(files) > 40, "the agent's sources were not found"
    for path in files:
        rel = path.relative_to(AGENT.parent).as_posix()
        for name in _imports(path) & OWNERS.keys():
            importers[name].add(rel)
    assert importers == OWNERS


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import httpx.x\n    from paho.mqtt import client\n")
    assert _imports(sample) == {"httpx", "paho"}
