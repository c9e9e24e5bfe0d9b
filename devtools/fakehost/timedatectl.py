"""Fake `timedatectl`: the clock is NTP-synchronised unless `<root>/run/fakehost/ntp-unsynced` exists.

Answers `show -p NTPSynchronized [--value]`, plain `show`, and `status`; other verbs succeed
silently. Toggle with `layout.set_ntp_synced`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "timedatectl", argv)
    synced = "yes" if layout.ntp_synced(root) else "no"
    words = [a for a in argv if not a.startswith("-")]
    verb = words[0] if words else "status"
    if verb == "show":
        properties = {
            "Timezone": "Etc/UTC",
            "LocalRTC": "no",
            "CanNTP": "yes",
            "NTP": "yes",
            "NTPSynchronized": synced,
        }
        wanted = _wanted(argv) or list(properties)
        for name in wanted:
            value = properties.get(name, "")
            print(value if "--value" in argv else f"{name}={value}")
    elif verb == "status":
        now = time.gmtime()
        print(f"               Local time: {time.strftime('%a %Y-%m-%d %H:%M:%S UTC', now)}")
        print(f"           Universal time: {time.strftime('%a %Y-%m-%d %H:%M:%S UTC', now)}")
        print("                Time zone: Etc/UTC (UTC, +0000)")
        print(f"System clock synchronized: {synced}")
        print("              NTP service: active")
    return 0


def _wanted(argv: list[str]) -> list[str]:
    names: list[str] = []
    for index, arg in enumerate(argv):
        if arg in ("-p", "--property") and index + 1 < len(argv):
            names += argv[index + 1].split(",")
        elif arg.startswith(("--property=", "-p=")):
            names += arg.split("=", 1)[1].split(",")
    return names


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
