"""``system.swap``, ``system.disk``, ``system.systemd`` and ``system.clock``.

Host prerequisites of nodeadm (aws/eks-hybrid v1.0.20: internal/system/swap_validator.go): no
partition swap (init turns file swap off but fails on a partition), room under ``/var/lib`` for
containerd and kubelet, systemd as PID 1, and a synchronised clock (IAM Roles Anywhere certificates,
SigV4 signatures and our own command time windows all depend on it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from agent.checks.base import Check, CheckContext, CheckVerdict, failed, passed, warned
from agent.host.hostroot import free_bytes
from agent.host.mountinfo import unescape
from agent.host.proc import ProcessError, run

PROC_SWAPS = "/proc/swaps"
GB = 1_000_000_000
STA_UNSYNC = 0x0040
TIME_ERROR = 5


@dataclass(frozen=True)
class Swap:
    name: str
    kind: str


def parse_swaps(text: str) -> list[Swap]:
    swaps = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            swaps.append(Swap(unescape(parts[0]), parts[1]))
    return swaps


def _partition_remedy(names: list[str]) -> str:
    them = "it" if len(names) == 1 else "them"
    steps = f"swapoff {' '.join(names)} and remove {them} from /etc/fstab"
    if any(n.startswith("/dev/zram") for n in names):
        steps += " (zram swap: disable zram-generator or the zram-config service)"
    return steps


async def check_swap(ctx: CheckContext) -> CheckVerdict:
    text = ctx.host.read_text(PROC_SWAPS)
    if text is None:
        return warned(
            f"cannot read {PROC_SWAPS} under the host root: cannot tell whether partition "
            "swap is active",
            "run the agent where it sees the host's /proc",
        )
    swaps = parse_swaps(text)
    partitions = [s.name for s in swaps if s.kind == "partition"]
    files = [s.name for s in swaps if s.kind != "partition"]
    details = {"partitions": partitions, "files": files}
    if partitions:
        what = "swap " + ", ".join(partitions) + (" is" if len(partitions) == 1 else " are")
        return failed(
            f"partition {what} active: nodeadm init fails on it",
            _partition_remedy(partitions),
            details,
        )
    if files:
        return warned(
            f"file swap {', '.join(files)} is active: nodeadm init turns it off and disables it "
            "in /etc/fstab",
            f"nothing is required; to decide yourself, swapoff {' '.join(files)} and remove it "
            "from /etc/fstab",
            details,
        )
    return passed("no swap is active", details)


async def check_disk(ctx: CheckContext) -> CheckVerdict:
    want_gb = ctx.config.checks.min_free_disk_gb
    free, total = free_bytes(ctx.host.path("/var/lib"))
    details = {"free_bytes": free, "total_bytes": total, "min_free_gb": want_gb}
    if free < want_gb * GB:
        return failed(
            f"only {free / GB:.1f} GB free under /var/lib (needs {want_gb:g} GB): containerd "
            "images and kubelet data live there",
            details=details,
        )
    return passed(f"{free / GB:.1f} GB free under /var/lib", details)


async def check_systemd(ctx: CheckContext) -> CheckVerdict:
    if ctx.host.path("/run/systemd/system").is_dir():
        return passed("systemd is the host's init system")
    return failed(
        f"{ctx.host.path('/run/systemd/system')} does not exist: the host does not run "
        "systemd, which nodeadm needs (with D-Bus) to manage kubelet and containerd"
    )


class _Timex(ctypes.Structure):
    # The leading fields of struct timex (linux/timex.h); ctypes adds the C padding, and the
    # tail leaves room for the rest, which the kernel fills but we do not read.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 512),
    )


def kernel_clock_state() -> tuple[int, int] | None:
    """(adjtimex return value, status bits) from a read-only adjtimex, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tx = _Timex()  # modes 0: only read, allowed without privileges
        ret = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    return None if ret < 0 else (ret, int(tx.status))


def judge_kernel_clock(ret: int, status: int) -> bool:
    """Whether the kernel thinks the clock is synchronised (what ntpd/chrony maintain)."""
    return ret != TIME_ERROR and not status & STA_UNSYNC


async def _timedatectl(ctx: CheckContext) -> str | None:
    """``yes``/``no`` from timedatectl, or None when it cannot tell."""
    try:
        result = await run(
            [ctx.config.programs.timedatectl, "show", "-p", "NTPSynchronized"], timeout=10.0
        )
    except ProcessError:
        return None
    if not result.ok:
        return None
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "NTPSynchronized" and value in ("yes", "no"):
            return value
    return None


async def check_clock(ctx: CheckContext) -> CheckVerdict:
    answer = await _timedatectl(ctx)
    if answer == "yes":
        return passed("the clock is NTP-synchronised (timedatectl)", {"source": "timedatectl"})
    if answer == "no":
        return warned(
            "the clock is not NTP-synchronised (timedatectl: NTPSynchronized=no)",
            details={"source": "timedatectl"},
        )
    state = kernel_clock_state()
    if state is None:
        return warned(
            "cannot tell whether the clock is synchronised: timedatectl did not answer and "
            "adjtimex failed",
            details={"source": None},
        )
    ret, status = state
    details = {"source": "adjtimex", "adjtimex": ret, "status": status}
    if judge_kernel_clock(ret, status):
        return passed("the kernel reports the clock synchronised (adjtimex)", details)
    return warned("the kernel reports the clock unsynchronised (adjtimex)", details=details)


SWAP = Check(
    id="system.swap",
    title="No partition swap",
    remedy="swapoff the partition and remove it from /etc/fstab",
    timeout_s=5.0,
    needs_assignment=False,
    run=check_swap,
)

DISK = Check(
    id="system.disk",
    title="Enough free disk under /var/lib",
    remedy="free space or grow the filesystem holding /var/lib (container images and kubelet "
    "data), or lower checks.min_free_disk_gb",
    timeout_s=10.0,
    needs_assignment=False,
    run=check_disk,
)

SYSTEMD = Check(
    id="system.systemd",
    title="systemd is running",
    remedy="run on a host booted with systemd; in a container, mount the host's / at "
    "host.root (its /run included)",
    timeout_s=5.0,
    needs_assignment=False,
    run=check_systemd,
)

CLOCK = Check(
    id="system.clock",
    title="Clock is synchronised",
    remedy="enable time synchronisation (timedatectl set-ntp true for systemd-timesyncd, or "
    "configure chrony) and make sure NTP servers are reachable",
    timeout_s=20.0,
    needs_assignment=False,
    run=check_clock,
)
