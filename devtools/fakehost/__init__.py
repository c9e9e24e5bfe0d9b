"""Stand-ins for the host programs the agent runs, and a builder for made-up hosts.

Each fake (`nodeadm.py`, `systemctl.py`, `apt_get.py`, `dnf.py`, `ip.py`, `dpkg.py`,
`timedatectl.py`, `journalctl.py`, `firewall_cmd.py`, `ufw.py`) is a script run as a real subprocess against a host root
directory; `hosttree` builds such a root and puts wrappers for the fakes on a PATH. They use
only the standard library and PyYAML, so they run under any python3 that has PyYAML.

The names below are `hosttree`'s, loaded on first use: every fake imports this package on
every run, and a fake run should not pay for the host builder.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_MACHINE_ID",
    "DEFAULT_ROUTES",
    "EKS_BIND_MOUNTS",
    "PROGRAMS",
    "calls",
    "hold_dpkg_lock",
    "install_fake_programs",
    "make_host",
    "release_dpkg_lock",
    "set_ntp_synced",
    "set_unit",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from devtools.fakehost import hosttree  # deferred on purpose, see above

        return getattr(hosttree, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
