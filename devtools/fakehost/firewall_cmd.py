"""Fake `firewall-cmd` over the made-up host's firewalld state (`devtools.fakehost.firewall`).

Answers what nodeadm and the agent ask, with the real program's words and exit codes:
``--state`` prints ``running`` (exit 0) or ``not running`` (exit 252); ``[--permanent]
--query-port=P/proto`` prints ``yes`` (0) or ``no`` (1); ``[--permanent] --add-port=P/proto``
and ``--reload`` / ``--runtime-to-permanent`` print ``success``. Every verb but ``--state``
fails with ``FirewallD is not running`` (252) when it is stopped. With no firewalld state at
all the program behaves as not running.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import firewall, layout

NOT_RUNNING = 252


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "firewall-cmd", argv)
    state = firewall.read_state(root)
    fw = state.get("firewalld") or {"running": False, "permanent": [], "runtime": []}
    if "--state" in argv:
        print("running" if fw["running"] else "not running")
        return 0 if fw["running"] else NOT_RUNNING
    if not fw["running"]:
        print("FirewallD is not running")
        return NOT_RUNNING
    which = "permanent" if "--permanent" in argv else "runtime"
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == "--query-port":
            is_open = value in fw[which]
            print("yes" if is_open else "no")
            return 0 if is_open else 1
        if name == "--add-port":
            fw[which] = sorted({*fw[which], *value.split(",")})
        elif name == "--remove-port":
            fw[which] = sorted(set(fw[which]) - {value})
        elif name == "--reload":
            fw["runtime"] = list(fw["permanent"])
        elif name == "--runtime-to-permanent":
            fw["permanent"] = list(fw["runtime"])
    state["firewalld"] = fw
    firewall.write_state(root, state)
    print("success")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
