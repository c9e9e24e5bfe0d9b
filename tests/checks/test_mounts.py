"""``mounts.bind`` and ``mounts.writable`` against made-up ``/proc/1/mountinfo`` files."""

from __future__ import annotations

from pathlib import Path

from agent.core.checks import CheckStatus
from agent.core.config import Config
from agent.host.mountinfo import mount_of, not_persistent, parse_mountinfo, unescape
from devtools.fakehost import make_host
from tests.checks.helpers import config, context, one

KAIROS_LINE = "39 29 8:3 /.state/etc-eks.bind /etc/eks rw,relatime shared:18 - ext4 /dev/sda3 rw"


def bind(root: Path, *host_paths: str) -> None:
    """Add Kairos-style bind mounts from the persistent partition to the made-up mountinfo."""
    with (root / "proc/1/mountinfo").open("a") as f:
        for i, path in enumerate(host_paths):
            point = path.replace(" ", "\\040")  # the kernel's escape for a space
            name = point.strip("/").replace("/", "-")
            f.write(
                f"{200 + i} 29 8:3 /.state/{name}.bind {point} rw,relatime - ext4 /dev/sda3 rw\n"
            )


def appliance(tmp_path: Path, root: Path, **make: object) -> Config:
    """A Kairos host whose state_dir and /etc/sysctl.d are bound, as the shipped user-data
    does; tests take one of them away."""
    make_host(root, mode="appliance", **make)  # type: ignore[arg-type]
    cfg = config(tmp_path, root, host={"mode": "appliance"})
    bind(root, "/etc/sysctl.d", str(cfg.state_dir))
    return cfg


def test_mountinfo_fields_and_escapes() -> None:
    text = (
        "22 1 7:0 / / ro,relatime shared:1 - ext2 /dev/loop0 ro\n"
        f"{KAIROS_LINE}\n"
        "50 22 0:40 / /mnt/my\\040disk rw,nosuid - fuse.sshfs me@host:/a\\134b rw,user_id=0\n"
        "51 22 0:41 / /no-optional rw - tmpfs tmpfs rw\n"
        "garbage\n"
    )
    root, eks, disk, plain = parse_mountinfo(text)
    assert root.mount_point == "/"
    assert root.read_only
    assert root.super_read_only
    assert eks.mount_point == "/etc/eks"
    assert eks.root == "/.state/etc-eks.bind"
    assert eks.fstype == "ext4"
    assert eks.source == "/dev/sda3"
    assert not eks.read_only
    assert disk.mount_point == "/mnt/my disk"
    assert disk.source == "me@host:/a\\b"
    assert plain.options == ("rw",)
    assert plain.fstype == "tmpfs"
    assert unescape("a\\011b\\012c") == "a\tb\nc"


def test_mount_of_picks_the_longest_prefix_and_the_last_overmount() -> None:
    mounts = parse_mountinfo(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 0:30 / /etc rw - overlay overlay rw\n"
        "3 2 8:3 / /etc/eks rw - ext4 /dev/sda3 rw\n"
        "4 2 0:50 / /etc/eks ro - tmpfs tmpfs rw\n"
    )
    assert mount_of(mounts, "/etc/eksctl").mount_point == "/etc"  # type: ignore[union-attr]
    assert mount_of(mounts, "/etc/eks/x").fstype == "tmpfs"  # type: ignore[union-attr]
    assert mount_of(mounts, "/var").mount_point == "/"  # type: ignore[union-attr]


async def test_appliance_with_every_bind_mount_passes(tmp_path: Path) -> None:
    root = tmp_path / "host"
    ctx = context(appliance(tmp_path, root))
    bind, writable = await one(ctx, "mounts.bind"), await one(ctx, "mounts.writable")
    assert bind.status is CheckStatus.PASS, bind
    assert writable.status is CheckStatus.PASS, writable
    assert len(bind.details["mounted"]) == 7
    assert bind.details["state_dir"]["persistent"] is True
    assert bind.details["sysctl_d"]["persistent"] is True


async def test_appliance_missing_bind_mounts_fail_and_name_them(tmp_path: Path) -> None:
    root = tmp_path / "host"
    ctx = context(appliance(tmp_path, root, missing_mounts=["/etc/eks", "/var/lib/amazon"]))
    r = await one(ctx, "mounts.bind")
    assert r.status is CheckStatus.FAIL
    assert "/etc/eks, /var/lib/amazon" in r.message
    assert "lost at reboot" in r.message
    assert r.details["missing"] == ["/etc/eks", "/var/lib/amazon"]
    assert "bind_mounts" in r.remedy
    # Still writable (the /etc and /var overlays), just not persistent.
    assert (await one(ctx, "mounts.writable")).status is CheckStatus.PASS


async def test_appliance_state_dir_on_the_tmpfs_overlay_fails_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance")
    cfg = config(tmp_path, root, host={"mode": "appliance"}, state_dir="/var/lib/edge-agent")
    bind(root, "/etc/sysctl.d")
    r = await one(context(cfg), "mounts.bind")
    assert r.status is CheckStatus.FAIL
    assert r.message == (
        "the agent's state_dir does not persist (/var/lib/edge-agent is on /var, an overlay "
        "whose upper layer (/run/overlay/var/upper) is not on a persistent disk): every reboot "
        "would forget the join and run nodeadm again"
    )
    assert "add /var/lib/edge-agent (the agent's state_dir)" in r.remedy
    assert r.details["state_dir"] == {"path": "/var/lib/edge-agent", "persistent": False}


async def test_appliance_sysctl_d_not_persistent_warns(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance")
    cfg = config(tmp_path, root, host={"mode": "appliance"})
    bind(root, str(cfg.state_dir))
    r = await one(context(cfg), "mounts.bind")
    assert r.status is CheckStatus.WARN
    assert r.message.startswith("/etc/sysctl.d is on /etc, an overlay whose upper layer")
    assert "99-nodeadm.conf" in r.message
    assert (
        r.remedy == "add /etc/sysctl.d to install.bind_mounts in the Kairos user-data, and reboot"
    )
    assert r.details["sysctl_d"] == {"path": "/etc/sysctl.d", "persistent": False}


def test_persistence_is_judged_by_the_mount_and_an_overlay_by_its_upper_layer() -> None:
    mounts = parse_mountinfo(
        "1 0 8:1 / / ro - ext4 /dev/sda1 ro\n"
        "2 1 0:25 / /run rw - tmpfs tmpfs rw\n"
        "3 1 8:3 / /data rw - ext4 /dev/sda3 rw\n"
        "4 1 0:30 / /etc rw - overlay overlay rw,lowerdir=/etc,upperdir=/run/o/etc,workdir=/run/w\n"
        "5 1 0:31 / /srv rw - overlay overlay rw,lowerdir=/srv,upperdir=/data/srv,workdir=/data/w\n"
        "6 1 0:32 / /var rw - overlay overlay rw,lowerdir=/var\n"
        "7 1 0:33 / /opt rw - overlay overlay rw,upperdir=/elsewhere/u,workdir=/elsewhere/w\n"
        "8 1 0:34 / /tmp rw - tmpfs tmpfs rw\n"
    )
    assert not_persistent(mounts, "/data/state") is None
    assert not_persistent(mounts, "/srv/x") is None  # the overlay's upper layer is on disk
    assert not_persistent(mounts, "/usr/lib") == "/usr/lib is on /, mounted read-only"
    assert not_persistent(mounts, "/tmp/x") == "/tmp/x is on /tmp, a tmpfs (kept in memory)"
    assert "upper layer (/run/o/etc) is not on a persistent disk" in str(
        not_persistent(mounts, "/etc/x")
    )
    assert "upper layer (none)" in str(not_persistent(mounts, "/var/x"))
    # An upper layer this namespace cannot see (here: under the read-only root) is not proof
    # that anything persists.
    assert not_persistent(mounts, "/opt/x") is not None


def test_nspawn_overlays_with_temporary_upper_layers_are_not_persistent() -> None:
    # Read from a container booted with systemd-nspawn --read-only --overlay=+/etc::/etc
    # --overlay=+/var::/var --bind=...: the upper layers are host paths under /var/tmp.
    mounts = parse_mountinfo(
        "111 91 254:0 /var/tmp/img / ro,relatime shared:1 - ext4 /dev/vda rw,discard\n"
        "123 111 0:46 / /etc rw,relatime shared:10 - overlay overlay rw,lowerdir=/var/tmp/img/"
        "etc,upperdir=/var/tmp/nspawn-temp-yr7Vid/src,workdir=/var/tmp/nspawn-temp-yr7Vid/.#s\n"
        "124 123 254:0 /var/tmp/p/etc/sysctl.d /etc/sysctl.d rw,relatime - ext4 /dev/vda rw\n"
        "126 111 0:50 / /var rw,relatime shared:13 - overlay overlay rw,lowerdir=/var/tmp/img/"
        "var,upperdir=/var/tmp/nspawn-temp-2uXCdn/src,workdir=/var/tmp/nspawn-temp-2uXCdn/.#s\n"
    )
    assert not_persistent(mounts, "/etc/sysctl.d") is None
    assert not_persistent(mounts, "/etc/eks") is not None
    assert not_persistent(mounts, "/var/lib/edge-agent") is not None


async def test_agent_mode_skips_bind_mounts(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="agent")
    ctx = context(config(tmp_path, root))
    r = await one(ctx, "mounts.bind")
    assert r.status is CheckStatus.SKIP
    assert "agent mode" in r.message
    w = await one(ctx, "mounts.writable")
    assert w.status is CheckStatus.PASS, w


async def test_read_only_mounts_are_reported_each(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance", ro_mounts=["/etc/iam", "/var/lib/amazon"])
    ctx = context(config(tmp_path, root, host={"mode": "appliance"}))
    r = await one(ctx, "mounts.writable")
    assert r.status is CheckStatus.FAIL
    assert set(r.details["problems"]) == {"/etc/iam", "/var/lib/amazon"}
    assert "/etc/iam is on /etc/iam, mounted read-only" in r.message
    assert "/var/lib/amazon" in r.message
    assert "/etc/eks" in r.details["writable"]


async def test_missing_directory_is_judged_by_its_nearest_existing_parent(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance", missing_mounts=["/eks-hybrid"])
    ctx = context(config(tmp_path, root, host={"mode": "appliance"}))
    r = await one(ctx, "mounts.writable")
    # /eks-hybrid is absent; its parent is the image's read-only /.
    assert r.status is CheckStatus.FAIL
    assert r.message == "/eks-hybrid (nearest existing: /) is on /, mounted read-only"


async def test_read_only_superblock_is_not_writable(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    mountinfo = root / "proc/1/mountinfo"
    # ext4 with errors=remount-ro after a disk error: the mount says rw, the superblock ro.
    mountinfo.write_text("1 0 8:1 / / rw,relatime - ext4 /dev/sda1 ro,errors=remount-ro\n")
    r = await one(context(config(tmp_path, root)), "mounts.writable")
    assert r.status is CheckStatus.FAIL
    assert "super options ro" in r.message


async def test_a_file_where_a_directory_belongs_fails(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root)
    (root / "etc/eks").write_text("oops")
    r = await one(context(config(tmp_path, root)), "mounts.writable")
    assert r.status is CheckStatus.FAIL
    assert r.message == "/etc/eks exists but is not a directory"


async def test_unreadable_mountinfo_fails_with_a_remedy(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance")
    (root / "proc/1/mountinfo").unlink()
    ctx = context(config(tmp_path, root, host={"mode": "appliance"}))
    for check_id in ("mounts.bind", "mounts.writable"):
        r = await one(ctx, check_id)
        assert r.status is CheckStatus.FAIL
        assert "cannot read /proc/1/mountinfo" in r.message
        assert "pid: host" in r.remedy


async def test_configured_paths_with_trailing_slash_and_spaces(tmp_path: Path) -> None:
    root = tmp_path / "host"
    make_host(root, mode="appliance")
    bind(root, "/srv/my data")
    (root / "srv/my data").mkdir(parents=True)
    cfg = config(
        tmp_path,
        root,
        host={"mode": "appliance"},
        checks={"bind_mounts": ["/etc/eks/", "/srv/my data"]},
    )
    bind(root, "/etc/sysctl.d", str(cfg.state_dir))
    r = await one(context(cfg), "mounts.bind")
    assert r.status is CheckStatus.PASS, r
