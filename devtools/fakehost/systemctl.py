"""Fake `systemctl`: unit states come from `<root>/run/fakehost/units/<unit>`.

`is-active [--quiet] UNIT...` prints each unit's state (a missing state file is `inactive`)
and exits 0 only when all are active, else 3, as systemd does. `show -p ActiveState[,SubState]
[--value] UNIT` answers from the same files. Every other verb succeeds silently: the agent
must judge units by asking, not by the exit code of a start. Root from `FAKEHOST_ROOT`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout

# systemd's LSB-style exit code for "program is not running".
NOT_ACTIVE = 3


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "systemctl", argv)
    options = [a for a in argv if a.startswith("-")]
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return 0
    verb, units = words[0], words[1:]
    if verb == "is-active":
        return _is_active(root, units, quiet="--quiet" in options or "-q" in options)
    if verb == "show":
        return _show(root, argv[1:])
    return 0


def _is_active(root: Path, units: list[str], *, quiet: bool) -> int:
    if not units:
        print("Too few arguments.", file=sys.stderr)
        return 1
    states = [layout.unit_state(root, unit) for unit in units]
    if not quiet:
        print("\n".join(states))
    return 0 if all(state == "active" for state in states) else NOT_ACTIVE


def _show(root: Path, args: list[str]) -> int:
    properties: list[str] = []
    units: list[str] = []
    value_only = False
    iterator = iter(args)
    for arg in iterator:
        if arg in ("-p", "--property"):
            properties += next(iterator, "").split(",")
        elif arg.startswith("--property="):
            properties += arg.split("=", 1)[1].split(",")
        elif arg == "--value":
            value_only = True
        elif not arg.startswith("-"):
            units.append(arg)
    for unit in units:
        state = layout.unit_state(root, unit)
        sub = {"active": "running", "failed": "failed", "activating": "start"}.get(state, "dead")
        known = {
            "ActiveState": state,
            "SubState": sub,
            "Id": f"{unit.removesuffix('.service')}.service",
        }
        for name in properties or list(known):
            value = known.get(name, "")
            print(value if value_only else f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
