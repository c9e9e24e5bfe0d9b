"""Fake `dnf`: `makecache [--refresh]` refreshes the fake metadata cache, the rest succeeds.

`makecache` stamps `<root>/var/cache/dnf/fake.solv` with the current time, or with
`FAKEHOST_DNF_MIRROR_MTIME` (epoch seconds) when set, mirroring apt-get's frozen-mirror
knob. `FAKEHOST_DNF_FAIL=1` fails with dnf's metadata download error (exit 1) and
`FAKEHOST_DNF_DELAY` slows it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout

FETCH_ERROR = (
    "Error: Failed to download metadata for repo 'baseos': Cannot download repomd.xml: "
    "Curl error (6): Couldn't resolve host name\n"
)


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "dnf", argv)
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "makecache":
        return 0
    time.sleep(float(os.environ.get("FAKEHOST_DNF_DELAY", "0") or 0))
    if os.environ.get("FAKEHOST_DNF_FAIL") == "1":
        sys.stderr.write(FETCH_ERROR)
        return 1
    mirror = os.environ.get("FAKEHOST_DNF_MIRROR_MTIME")
    stamp = float(mirror) if mirror else time.time()
    layout.write_file(layout.under(root, layout.DNF_SOLV_FILE), b"fake solv\n", mtime=stamp)
    print("Updating Subscription Management repositories.")
    print("Metadata cache created.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
