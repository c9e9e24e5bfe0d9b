"""Build a made-up host under a directory, and put the fake host programs on a PATH for it.

`make_host` writes the files the agent reads under its host root (os-release, machine-id, DMI
uuid, mountinfo, swaps, routes, the package index, dpkg's state, systemd's marker, optionally
an installed nodeadm). `install_fake_programs` writes one `#!/bin/sh` wrapper per host program
that pins the root and any behaviour knobs and execs the matching fake of this package. Tests,
the demo and the benchmarks build hosts only through here, so a host looks the same everywhere.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from devtools.fakehost import layout, procfs
from devtools.fakehost.layout import (
    EKS_BIND_MOUNTS,
    calls,
    hold_dpkg_lock,
    release_dpkg_lock,
    set_ntp_synced,
    set_unit,
    under,
    write_file,
)

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

DEFAULT_MACHINE_ID = "4c1d7c3b9c2e4f8a9b0c1d2e3f405162"
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (("0.0.0.0/0", "172.16.0.1"),)

# config `programs.*` key -> (file name on PATH, fake script in this package)
PROGRAMS: dict[str, tuple[str, str]] = {
    "nodeadm": ("nodeadm", "nodeadm.py"),
    "apt_get": ("apt-get", "apt_get.py"),
    "dnf": ("dnf", "dnf.py"),
    "systemctl": ("systemctl", "systemctl.py"),
    "ip": ("ip", "ip.py"),
    "dpkg": ("dpkg", "dpkg.py"),
    "timedatectl": ("timedatectl", "timedatectl.py"),
    "journalctl": ("journalctl", "journalctl.py"),
    "firewall_cmd": ("firewall-cmd", "firewall_cmd.py"),
    "ufw": ("ufw", "ufw.py"),
}

_OS_NAMES = {
    "ubuntu": "Ubuntu",
    "debian": "Debian GNU/Linux",
    "rhel": "Red Hat Enterprise Linux",
    "amzn": "Amazon Linux",
}
_UBUNTU = {
    "20.04": ("20.04.6 LTS (Focal Fossa)", "focal"),
    "22.04": ("22.04.4 LTS (Jammy Jellyfish)", "jammy"),
    "24.04": ("24.04.1 LTS (Noble Numbat)", "noble"),
}
# Kairos keeps these persistent by binding them from COS_PERSISTENT (/usr/local/.state).
_KAIROS_STATE_PATHS = (
    "/etc/cni",
    "/etc/kubernetes",
    "/etc/ssh",
    "/etc/systemd",
    "/home",
    "/opt",
    "/root",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/log",
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def make_host(
    root: Path,
    *,
    os_id: str = "ubuntu",
    version_id: str = "22.04",
    machine_id: str = DEFAULT_MACHINE_ID,
    product_uuid: str | None = None,
    mode: str = "agent",
    bind_mounts: Sequence[str] | None = None,
    ro_mounts: Sequence[str] = (),
    missing_mounts: Sequence[str] = (),
    index_age_s: float | None = 0.0,
    swap: str = "none",
    routes: Sequence[tuple[str, ...]] = DEFAULT_ROUTES,
    systemd: bool = True,
    installed: bool = False,
    ssm_registration: str | None = None,
    kubernetes_version: str = "1.31.7",
    credential_provider: str = "ssm",
    region: str = "us-west-2",
    hostname: str = "edge-host",
) -> None:
    """Write a made-up host under `root` (created if needed).

    `bind_mounts` defaults by mode: the seven EKS paths in appliance mode, none in agent mode
    (an ordinary host has no bind mounts there). `missing_mounts` are left out of mountinfo and
    not created; `ro_mounts` are mounted read-only (added as mounts when not bind mounts).
    `index_age_s` ages the apt lists / dnf cache; None leaves the index empty. `routes` are
    (destination CIDR, gateway[, device]) entries (device eth0 unless named; gateway 0.0.0.0
    makes a link route, which is how the kernel shows an interface's own network); a link
    route (/24 of each gateway, on its device) is added for every gateway no given route
    already covers. `installed` adds nodeadm's tracker and binaries
    for `kubernetes_version` and `credential_provider`, and marks kubelet and containerd
    active. `ssm_registration` (an `mi-…` id) writes the SSM registration for `region`.
    """
    if mode not in ("agent", "appliance"):
        raise ValueError(f"mode must be agent or appliance, not {mode!r}")
    if swap not in ("none", "file", "partition"):
        raise ValueError(f"swap must be none, file or partition, not {swap!r}")
    root.mkdir(parents=True, exist_ok=True)
    _write_identity(root, os_id, version_id, machine_id, product_uuid, mode, hostname)
    if bind_mounts is None:
        bind_mounts = EKS_BIND_MOUNTS if mode == "appliance" else ()
    _write_mounts(root, mode, list(bind_mounts), list(ro_mounts), set(missing_mounts))
    _write_swap(root, swap)
    write_file(under(root, "proc/net/route"), procfs.render_routes(_routes(routes)))
    if systemd:
        under(root, "run/systemd/system").mkdir(parents=True, exist_ok=True)
    _write_packages(root, os_id, index_age_s)
    under(root, layout.RUN_DIR).mkdir(parents=True, exist_ok=True)
    under(root, "var/lib/kubelet").mkdir(parents=True, exist_ok=True)
    if installed:
        artifacts = layout.install_artifacts(
            root,
            kubernetes_version=kubernetes_version,
            provider=credential_provider,
            containerd_source="distro",
            os_id=os_id,
        )
        layout.write_tracker(root, artifacts)
        set_unit(root, "containerd", "active")
        set_unit(root, "kubelet", "active")
    if ssm_registration is not None:
        registration = {"ManagedInstanceID": ssm_registration, "Region": region}
        write_file(under(root, layout.SSM_REGISTRATION), json.dumps(registration), mode=0o600)


def install_fake_programs(
    bin_dir: Path,
    root: Path,
    *,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write one wrapper per fake program into `bin_dir`; return {programs key: absolute path}.

    The wrappers export FAKEHOST_ROOT and NODEADM_FAKE_ROOT (the absolute `root`) and every
    `env` entry, overriding the caller's environment, and drop the caller's proxy variables
    (set them in `env` to test a proxy): a wrapper behaves the same whoever runs it.
    Rewrite the wrappers to change the knobs.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    absolute_root = str(root.resolve())
    exports = {"FAKEHOST_ROOT": absolute_root, "NODEADM_FAKE_ROOT": absolute_root, **(env or {})}
    lines = ["#!/bin/sh", "# written by devtools.fakehost.hosttree.install_fake_programs"]
    # The stand-in judges proxies as nodeadm does (a proxy needs drop-ins): a proxy in the
    # environment of whoever runs the tests must not change the made-up host's verdicts.
    lines.append("unset HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy")
    for name, value in exports.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"{name}={shlex.quote(value)}; export {name}")
    paths: dict[str, str] = {}
    for key, (file_name, script) in PROGRAMS.items():
        wrapper = bin_dir / file_name
        body = [*lines, f'exec {shlex.quote(python)} {shlex.quote(str(here / script))} "$@"']
        write_file(wrapper, "\n".join(body) + "\n", mode=0o755)
        paths[key] = str(wrapper.resolve())
    return paths


def _write_identity(
    root: Path,
    os_id: str,
    version_id: str,
    machine_id: str,
    product_uuid: str | None,
    mode: str,
    hostname: str,
) -> None:
    write_file(under(root, "etc/os-release"), _os_release(os_id, version_id, mode))
    write_file(under(root, "etc/machine-id"), machine_id + "\n", mode=0o444)
    write_file(under(root, "etc/hostname"), hostname + "\n")
    if product_uuid is not None:
        # Readable by root only on real hosts; the agent runs as root.
        write_file(under(root, "sys/class/dmi/id/product_uuid"), product_uuid + "\n", mode=0o400)


def _os_release(os_id: str, version_id: str, mode: str) -> str:
    name = _OS_NAMES.get(os_id, os_id.capitalize())
    version, codename = _UBUNTU.get(version_id, (version_id, ""))
    if os_id != "ubuntu":
        version, codename = version_id, ""
    pretty = f"{name} {version.split(' (')[0]}"
    if os_id == "amzn":
        pretty = f"Amazon Linux {version_id}.6.20250107"
    fields = {
        "PRETTY_NAME": pretty,
        "NAME": name,
        "VERSION_ID": version_id,
        "VERSION": version,
        "ID": os_id,
        "ID_LIKE": {"ubuntu": "debian", "rhel": "fedora", "amzn": "fedora"}.get(os_id, ""),
        "VERSION_CODENAME": codename,
    }
    if mode == "appliance":
        # Kairos images keep the distro's fields and add their own.
        fields |= {"KAIROS_NAME": "kairos-core", "KAIROS_VERSION": "v3.2.4", "KAIROS_FLAVOR": os_id}
    # Ubuntu leaves single-word identifiers unquoted (ID=ubuntu); parsers must take both.
    bare = ("ID", "ID_LIKE", "VERSION_CODENAME") if os_id in ("ubuntu", "debian") else ()
    return "".join(
        f"{key}={value}\n" if key in bare else f'{key}="{value}"\n'
        for key, value in fields.items()
        if value
    )


def _write_mounts(
    root: Path, mode: str, binds: list[str], ro: list[str], missing: set[str]
) -> None:
    mounts = _base_mounts(mode)
    persistent = "8:3" if mode == "appliance" else "8:17"
    source = "/dev/sda3" if mode == "appliance" else "/dev/sdb1"
    state_paths = _KAIROS_STATE_PATHS if mode == "appliance" else ()
    wanted = sorted({*state_paths, *binds, *ro} - missing, key=lambda p: (p.count("/"), p))
    for path in wanted:
        name = path.strip("/").replace("/", "-")
        options = "ro,relatime" if path in ro else "rw,relatime"
        mounts.append(
            procfs.Mount(
                path,
                root=f"/.state/{name}.bind",
                source=source,
                options=options,
                super_options="rw",
                device=persistent,
            )
        )
        under(root, path).mkdir(parents=True, exist_ok=True)
    write_file(under(root, "proc/1/mountinfo"), procfs.render_mountinfo(mounts))


def _base_mounts(mode: str) -> list[procfs.Mount]:
    pseudo = [
        procfs.Mount("/dev", fstype="devtmpfs", source="udev", device="0:5", options="rw,nosuid,relatime"),
        procfs.Mount("/proc", fstype="proc", source="proc", device="0:22", options="rw,nosuid,nodev,noexec,relatime"),
        procfs.Mount("/sys", fstype="sysfs", source="sysfs", device="0:21", options="rw,nosuid,nodev,noexec,relatime"),
        procfs.Mount("/run", fstype="tmpfs", source="tmpfs", device="0:25", options="rw,nosuid,nodev,noexec,relatime", super_options="rw,size=812224k,mode=755"),
    ]  # fmt: skip
    if mode == "agent":
        root_fs = procfs.Mount("/", super_options="rw,discard,errors=remount-ro")
        efi = procfs.Mount("/boot/efi", fstype="vfat", source="/dev/sda15", device="8:15")
        return [root_fs, *pseudo, efi]
    # Kairos: the active image is a read-only loop device; /etc, /var and /srv are tmpfs
    # overlays (writable, lost at reboot); COS_OEM and COS_PERSISTENT are real partitions.
    root_fs = procfs.Mount(
        "/",
        fstype="ext2",
        source="/dev/loop0",
        options="ro,relatime",
        super_options="ro",
        device="7:0",
    )
    overlays = [
        procfs.Mount(
            p,
            fstype="overlay",
            source="overlay",
            device=f"0:{30 + i}",
            super_options=f"rw,lowerdir={p},upperdir=/run/overlay{p}/upper,workdir=/run/overlay{p}/work",
        )
        for i, p in enumerate(("/etc", "/srv", "/var"))
    ]
    partitions = [
        procfs.Mount("/oem", source="/dev/sda2", device="8:2"),
        procfs.Mount("/usr/local", source="/dev/sda3", device="8:3"),
    ]  # fmt: skip
    return [root_fs, *pseudo, *partitions, *overlays]


def _write_swap(root: Path, swap: str) -> None:
    entries: list[tuple[str, str, int]] = []
    fstab = [
        "# /etc/fstab: static file system information.",
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1",
    ]
    if swap == "file":
        entries.append(("/swap.img", "file", 2097148))
        fstab.append("/swap.img none swap sw 0 0")
    elif swap == "partition":
        entries.append(("/dev/sda2", "partition", 8388604))
        fstab.append("UUID=5d1b2c3e-0f4a-4b6c-8d7e-9f0a1b2c3d4e none swap sw 0 0")
    write_file(under(root, "proc/swaps"), procfs.render_swaps(entries))
    write_file(under(root, "etc/fstab"), "\n".join(fstab) + "\n")


def _routes(entries: Sequence[tuple[str, ...]]) -> list[procfs.Route]:
    """(destination, gateway[, device]) entries; gateway 0.0.0.0 is a link route."""
    routes: list[procfs.Route] = []
    for dest, gateway, *dev in entries:
        network = IPv4Network(dest)
        metric = 100 if network.prefixlen == 0 else 0
        routes.append(
            procfs.Route(dev[0] if dev else "eth0", network, IPv4Address(gateway), metric)
        )
    links = [r.network for r in routes if not int(r.gateway)]
    for route in list(routes):
        gateway = route.gateway
        if int(gateway) and not any(gateway in net for net in links):
            link = IPv4Network(f"{gateway}/24", strict=False)
            links.append(link)
            routes.append(procfs.Route(route.iface, link, IPv4Address(0)))
    return routes


def _write_packages(root: Path, os_id: str, index_age_s: float | None) -> None:
    now = time.time()
    stamp = None if index_age_s is None else now - index_age_s
    if layout.uses_apt(os_id):
        lists = under(root, layout.APT_LISTS)
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        # apt touches the lock on every run, failed ones included: its mtime proves nothing.
        write_file(lists / "lock", "", mode=0o640, mtime=now)
        if stamp is not None:
            write_file(under(root, layout.APT_LIST_FILE), "Package: containerd\n", mtime=stamp)
            write_file(lists / "fake_dists_InRelease", "Origin: Fake\n", mtime=stamp)
        write_file(
            under(root, "var/lib/dpkg/status"),
            "Package: base-files\nStatus: install ok installed\n",
        )
        write_file(under(root, "var/lib/dpkg/lock-frontend"), "", mode=0o640)
        under(root, layout.DPKG_UPDATES).mkdir(parents=True, exist_ok=True)
    else:
        cache = under(root, layout.DNF_CACHE)
        cache.mkdir(parents=True, exist_ok=True)
        if stamp is not None:
            write_file(under(root, layout.DNF_SOLV_FILE), b"fake solv\n", mtime=stamp)
            write_file(cache / "baseos-fake/repodata/repomd.xml", "<repomd/>\n", mtime=stamp)
        under(root, "var/lib/rpm").mkdir(parents=True, exist_ok=True)
    # Most installs ship iptables, so nodeadm leaves it alone (tracker Iptables: false).
    write_file(under(root, "usr/sbin/iptables"), "#!/bin/sh\necho 'iptables v1.8.7'\n", mode=0o755)
