"""No module-level mutable state in agent/: a thousand agents share one process (the fleet
benchmark), so a module-level list, dict, set or object instance would be shared by all."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[1] / "agent"
MUTABLE_CALLS = {
    "dict",
    "list",
    "set",
    "defaultdict",
    "deque",
    "OrderedDict",
    "Counter",
    "Lock",
    "Event",
    "Queue",
    "Random",
}


def offenders() -> list[str]:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if value is None:
                continue
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id == "__all__":
                continue  # read by `import *` only; the interpreter's convention is a list
            mutable = isinstance(
                value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp
            )
            if isinstance(value, ast.Call):
                fn = value.func
                name = (
                    fn.id
                    if isinstance(fn, ast.Name)
                    else fn.attr
                    if isinstance(fn, ast.Attribute)
                    else ""
                )
                mutable = name in MUTABLE_CALLS
            if mutable:
                found.append(f"{path.relative_to(AGENT.parent)}:{node.lineno}")
    return found


def test_agent_has_no_module_level_mutable_state() -> None:
    assert offenders() == []
