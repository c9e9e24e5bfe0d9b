"""Fake `journalctl`: a few plausible journal lines for `-u UNIT [-n N] [--no-pager]`.

Lines follow journald's short format (`Nov 26 17:24:07 edge-host kubelet[2345]: ...`), the
newest last, at most N (default 10) per call. A unit that never ran (no state file under
`<root>/run/fakehost/units/`) has `-- No entries --`, as on a host without it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout

MESSAGES = {
    "kubelet": (
        'I1126 17:24:01.118232    2345 server.go:484] "Kubelet version" kubeletVersion="v1.31.7"',
        'I1126 17:24:02.402617    2345 kubelet_node_status.go:72] "Attempting to register node"',
        'I1126 17:24:03.671045    2345 kubelet_node_status.go:75] "Successfully registered node"',
        'E1126 17:24:05.001937    2345 kubelet.go:2901] "Container runtime network not ready" '
        'networkReady="NetworkReady=false reason:NetworkPluginNotReady message:Network plugin '
        'returns error: cni plugin not initialized"',
        'I1126 17:24:07.123456    2345 kubelet_node_status.go:493] "Fast updating node status as it just became ready"',
    ),
    "containerd": (
        'time="2026-11-26T17:23:58.000000000Z" level=info msg="starting containerd" version=1.7.24',
        'time="2026-11-26T17:23:58.100000000Z" level=info msg="serving..." address=/run/containerd/containerd.sock',
        'time="2026-11-26T17:23:58.200000000Z" level=info msg="containerd successfully booted in 0.21s"',
    ),
}  # fmt: skip
GENERIC = ("Started {unit}.service.", "{unit}.service: Consumed 1.204s CPU time.")


def main(argv: list[str]) -> int:
    root = layout.root_from_env("FAKEHOST_ROOT")
    layout.record_call(root, "journalctl", argv)
    units, count = _options(argv)
    hostname_file = layout.under(root, "etc/hostname")
    hostname = hostname_file.read_text().strip() if hostname_file.exists() else "localhost"
    lines: list[str] = []
    for unit in units or ["systemd"]:
        name = unit.removesuffix(".service")
        if units and not layout.under(root, f"{layout.UNITS_DIR}/{name}").exists():
            continue
        messages = MESSAGES.get(name) or tuple(m.format(unit=name) for m in GENERIC)
        lines += [f"{_stamp()} {hostname} {name}[2345]: {message}" for message in messages]
    if not lines:
        print("-- No entries --")
        return 0
    print("\n".join(lines[-count:]))
    return 0


def _options(argv: list[str]) -> tuple[list[str], int]:
    units: list[str] = []
    count = 10
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if arg in ("-u", "--unit"):
            units.append(following)
        elif arg.startswith("--unit="):
            units.append(arg.split("=", 1)[1])
        elif arg in ("-n", "--lines") and following.isdigit():
            count = int(following)
        elif arg.startswith("--lines=") and arg.split("=", 1)[1].isdigit():
            count = int(arg.split("=", 1)[1])
    return units, max(count, 1)


def _stamp() -> str:
    return time.strftime("%b %d %H:%M:%S", time.gmtime())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
