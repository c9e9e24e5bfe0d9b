"""The made-up host's firewall: which of firewalld and ufw runs, and which ports each opens.

State lives in `<root>/run/fakehost/firewall.json` as ``{"firewalld": {"running", "runtime",
"permanent"}, "ufw": {"active", "rules"}}``; a missing file means neither runs. firewalld
keeps runtime and permanent port sets apart, as the real daemon does, because nodeadm init
reloads firewalld (``--reload``, then ``--runtime-to-permanent``) before it queries a port: a
port opened only at runtime is closed again by that reload. ufw rules are the lines
``ufw status`` prints (``8472/udp  ALLOW  Anywhere``). The fake `firewall-cmd` and `ufw`
read and change this file; tests set it with `set_firewalld` and `set_ufw`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.fakehost.layout import RUN_DIR, under, write_file

FIREWALL_FILE = f"{RUN_DIR}/firewall.json"


def read_state(root: Path) -> dict[str, Any]:
    path = under(root, FIREWALL_FILE)
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return doc if isinstance(doc, dict) else {}


def write_state(root: Path, state: dict[str, Any]) -> None:
    write_file(under(root, FIREWALL_FILE), json.dumps(state, indent=1, sort_keys=True) + "\n")


def set_firewalld(
    root: Path,
    *,
    running: bool,
    permanent: tuple[str, ...] = (),
    runtime: tuple[str, ...] | None = None,
) -> None:
    """firewalld's state; ``runtime`` defaults to the permanent ports (as after a reload)."""
    state = read_state(root)
    state["firewalld"] = {
        "running": running,
        "permanent": sorted(permanent),
        "runtime": sorted(permanent if runtime is None else runtime),
    }
    write_state(root, state)


def set_ufw(root: Path, *, active: bool, rules: tuple[str, ...] = ()) -> None:
    """ufw's state; each rule as ``ufw status`` prints it (``8472/udp ALLOW Anywhere``)."""
    state = read_state(root)
    state["ufw"] = {"active": active, "rules": list(rules)}
    write_state(root, state)


VXLAN_PORTS = ("8472/udp", "4789/udp")


def vxlan_port_open(root: Path, os_id: str) -> bool:
    """nodeadm init's cni-validation: False when the firewall it asks blocks both ports.

    As cmd/nodeadm/init/init.go does: ufw on Ubuntu, firewalld elsewhere; a firewall that
    is not running passes; firewalld is reloaded first (``--reload`` then
    ``--runtime-to-permanent``), which drops ports opened only at runtime; ufw counts only
    ALLOW rules from Anywhere.
    """
    state = read_state(root)
    if os_id == "ubuntu":
        ufw = state.get("ufw") or {}
        if not ufw.get("active"):
            return True
        allowed = {
            r.split()[0] for r in ufw.get("rules", []) if r.split()[1:] == ["ALLOW", "Anywhere"]
        }
        return any(p in allowed for p in VXLAN_PORTS)
    fw = state.get("firewalld") or {}
    if not fw.get("running"):
        return True
    fw["runtime"] = list(fw.get("permanent", []))
    state["firewalld"] = fw
    write_state(root, state)
    return any(p in fw["runtime"] for p in VXLAN_PORTS)
