"""Who may import what (issue 3): one module owns aiomqtt (and paho under it), one owns httpx,
and the agent never imports the project's test tools (tests/, devtools/, nor the doubles it ships
in agent/testing.py). Read from the source with `ast`, so a
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


def test_only_tests_import_the_shipped_test_doubles() -> None:
    """agent/testing.py ships with the package, like structlog.testing, for tests to use."""
    importers = set()
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT.parent).as_posix()
        if rel != "agent/testing.py" and _module_imports(path) & {"agent.testing"}:
            importers.add(rel)
    assert importers == set()
    # And the doubles stand alone: no tests/ or devtools/ behind them (checked above too).
    assert not _imports(AGENT / "testing.py") & {"tests", "devtools"}


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import httpx.x\n    from paho.mqtt import client\n")
    assert _imports(sample) == {"httpx", "paho"}


# ---- the pure core ----------------------------------------------------------------------------

CORE = AGENT / "core"
# Modules through which a program touches the world: the clock, the environment, files,
# processes, sockets, the event loop. The core decides; it never does.
IO_MODULES = frozenset(
    {
        "asyncio",
        "io",
        "os",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
    }
)
# Known gap: `pathlib.Path` is allowed (config values are paths), so file reads through its
# methods would not be seen here; reading the config file lives in agent/configfile.py.


def _module_imports(path: Path) -> set[str]:
    """Full dotted names `path` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_core_touches_nothing_outside_itself() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) > 10, "the core's sources were not found"
    wrong: dict[str, list[str]] = {}
    for path in files:
        rel = path.relative_to(AGENT.parent).as_posix()
        bad = sorted(
            name
            for name in _module_imports(path)
            if name.split(".")[0] in IO_MODULES
            or (name.startswith("agent.") and not name.startswith("agent.core"))
            or name == "agent"
        )
        if bad:
            wrong[rel] = bad
    assert wrong == {}


def test_the_core_scan_catches_io_and_edge_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "import time\nfrom agent.state.atomic import write_bytes\nfrom agent import testing\n"
    )
    found = _module_imports(sample)
    assert "time" in found and "agent.state.atomic" in found and "agent.testing" in found


def test_no_lifecycle_state_is_built_outside_the_machine() -> None:
    """Host recovery is an event `step()` handles: no side door rebuilds the state."""
    for path in sorted(AGENT.rglob("*.py")):
        text = path.read_text()
        assert "class Adopt" not in text and "Adopt(" not in text, path
