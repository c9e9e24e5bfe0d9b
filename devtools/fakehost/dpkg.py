"""Fake `dpkg`: `--configure -a` finishes an interrupted install by emptying `var/lib/dpkg/updates/`.

A nodeadm install killed mid-way leaves a journal entry there (the fake nodeadm writes
`updates/0001`), and apt refuses to work until `dpkg --configure -a` runs. A held dpkg lock
(`layout.hold_dpkg_lock`) makes it fail with dpkg's frontend lock error, exit 2. Other
invocations succeed silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout

LOCK_ERROR = (
    "dpkg: error: dpkg frontend lock was locked by another process with pid 2345\n"
    "Note: removing the lock file is always wrong, can damage the locked area\n"
    "and the entire system. See <https://wiki.debian.org/Teams/Dpkg/FAQ#db-lock>.\n"
)


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "dpkg", argv)
    if "--configure" not in argv:
        return 0
    if layout.dpkg_lock_held(root):
        sys.stderr.write(LOCK_ERROR)
        return 2
    updates = layout.under(root, layout.DPKG_UPDATES)
    pending = sorted(updates.iterdir()) if updates.is_dir() else []
    for entry in pending:
        entry.unlink()
    if pending:
        print("Setting up containerd (1.7.24-0ubuntu1~22.04.1) ...")
        print("Processing triggers for man-db (2.10.2-1) ...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
