"""Fake `apt-get`: `update` refreshes the fake package index, everything else succeeds.

`update` stamps `<root>/var/lib/apt/lists/fake_dists_main_binary-amd64_Packages` with the
current time, or with `FAKEHOST_APT_MIRROR_MTIME` (epoch seconds) when set: apt keeps the
mirror's Last-Modified time on the lists it downloads, so a frozen mirror yields "old" lists
right after a successful update. The lists `lock` is touched on every run, failed ones too,
as apt does. `FAKEHOST_APT_FAIL=1` fails the update (exit 100), `FAKEHOST_APT_DELAY` slows
it, and a held dpkg lock (`layout.hold_dpkg_lock`) makes every verb exit 100.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout

LOCK_ERROR = (
    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 2345 (unattended-upgr)\n"
    "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), "
    "is another process using it?\n"
)
FETCH_ERROR = (
    "E: Failed to fetch http://archive.ubuntu.com/ubuntu/dists/jammy/InRelease  "
    "Temporary failure resolving 'archive.ubuntu.com'\n"
    "E: Some index files failed to download. They have been ignored, or old ones used instead.\n"
)
# apt's post-update hook on Ubuntu (update-notifier-common) stamps this file on success.
STAMP_HOOK = "etc/apt/apt.conf.d/15update-stamp"
STAMP = "var/lib/apt/periodic/update-success-stamp"


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "apt-get", argv)
    words = [a for a in argv if not a.startswith("-")]
    verb = words[0] if words else ""
    lists = layout.under(root, layout.APT_LISTS)
    if verb == "update":
        lists.mkdir(parents=True, exist_ok=True)
        layout.write_file(lists / "lock", "", mode=0o640)
    if layout.dpkg_lock_held(root):
        sys.stderr.write(LOCK_ERROR)
        return 100
    if verb != "update":
        print("Reading package lists... Done")
        return 0
    time.sleep(float(os.environ.get("FAKEHOST_APT_DELAY", "0") or 0))
    if os.environ.get("FAKEHOST_APT_FAIL") == "1":
        print("Hit:1 http://archive.ubuntu.com/ubuntu jammy InRelease")
        sys.stderr.write(FETCH_ERROR)
        return 100
    mirror = os.environ.get("FAKEHOST_APT_MIRROR_MTIME")
    stamp = float(mirror) if mirror else time.time()
    layout.write_file(
        layout.under(root, layout.APT_LIST_FILE), "Package: containerd\n", mtime=stamp
    )
    if layout.under(root, STAMP_HOOK).exists():
        layout.write_file(layout.under(root, STAMP), "")
    print("Hit:1 http://archive.ubuntu.com/ubuntu jammy InRelease")
    print("Get:2 http://archive.ubuntu.com/ubuntu jammy-updates InRelease [128 kB]")
    print("Reading package lists... Done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
