"""The NodeConfig on the host: rendered (agent/core/nodeconfig.py), then written atomically
with mode 0600 to ``nodeadm.config_path``, since it holds the SSM activation code."""

from __future__ import annotations

import os
from pathlib import Path

from agent.core.assignment import Assignment
from agent.core.nodeconfig import dump_nodeconfig, render_nodeconfig
from agent.state.atomic import write_bytes


def write_nodeconfig(path: Path, a: Assignment) -> None:
    """Render and write atomically with mode 0600 (it holds the activation code).

    A missing parent (``/etc/edge-agent`` on a fresh host) is created 0755 regardless of
    the agent's umask (systemd gives it 0077): it is a configuration directory that
    operators list, and the secret itself is protected by the file's own mode.
    """
    data = dump_nodeconfig(render_nodeconfig(a))
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)  # noqa: S103 - a config directory; the file itself is 0600
    write_bytes(path, data, 0o600)


__all__ = ["write_nodeconfig"]
