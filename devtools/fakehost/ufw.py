"""Fake `ufw` over the made-up host's ufw state (`devtools.fakehost.firewall`).

``status`` prints ``Status: inactive``, or ``Status: active`` and the rule table in ufw's own
layout (nodeadm parses it line by line). ``allow PORT/proto`` adds a rule from Anywhere and
prints ``Rule added``. Anything else succeeds silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import firewall, layout


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "ufw", argv)
    state = firewall.read_state(root)
    ufw = state.get("ufw") or {"active": False, "rules": []}
    verb = argv[0] if argv else "status"
    if verb == "status":
        if not ufw["active"]:
            print("Status: inactive")
            return 0
        print("Status: active\n")
        print(f"{'To':<27}{'Action':<12}From")
        print(f"{'--':<27}{'------':<12}----")
        for rule in ufw["rules"]:
            port, action, source = rule.split(maxsplit=2)
            print(f"{port:<27}{action:<12}{source}")
        print()
        return 0
    if verb == "allow" and len(argv) == 2:
        rule = f"{argv[1]} ALLOW Anywhere"
        if rule not in ufw["rules"]:
            ufw["rules"].append(rule)
        state["ufw"] = ufw
        firewall.write_state(root, state)
        print("Rule added")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
