"""Shared pieces of the benchmarks: the machine, /proc readings, statistics, result files,
the rig (broker, controller, signer, made-up hosts), fast stand-ins for host programs, and
an MQTT recorder that runs in its own process.

Import this module first in every benchmark: it puts the repository root on ``sys.path`` so
``agent``, ``devtools`` and ``tests`` import when a script is run as
``python benchmarks/<name>.py`` from anywhere.

Run as a script, ``python benchmarks/common.py recorder ...`` is the recorder process (see
:class:`Recorder`): a paho client that writes one short JSON line per message it receives
and publishes signed command envelopes when told to on stdin. It runs in its own process so
that its parsing never competes with the agents under test for the GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYCACHE = Path(tempfile.gettempdir()) / "edge-bench-pycache"


def use_private_bytecode_cache() -> None:
    """Give the agents this benchmark starts byte-compiled modules, as installed agents have.

    packaging/ compiles them at build time; an environment with PYTHONDONTWRITEBYTECODE would
    make every agent we start compile its sources again. Our children get a private bytecode
    cache instead, outside the repository. Each benchmark's main() calls this, never an import:
    the tests import this module, and PYTHONPYCACHEPREFIX in their environment sends every
    `compileall` they run (install.sh's) to this cache instead of the tree it builds.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)

BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "edge/v1"
TOKEN = "bench-registration-token-0001"

# What the agent imports from outside the standard library (pyproject.toml), as the floor
# process imports it. `nacl.signing` is what agent/commands/signature.py imports.
FLOOR_IMPORTS = ("asyncio", "httpx", "aiomqtt", "structlog", "tenacity", "psutil", "yaml",
                 "nacl.signing")
PACKAGES = ("aiomqtt", "paho-mqtt", "httpx", "structlog", "tenacity", "psutil", "PyYAML",
            "PyNaCl", "matplotlib")


# ---- the machine ----------------------------------------------------------------------------

def _first(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, f"{parts[2]} ({parts[0]} on {mnt})"
    return kind


def mosquitto_version() -> str:
    program = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if program is None:
        return "not found"
    out = subprocess.run([program, "-h"], capture_output=True, text=True, check=False, timeout=5)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def fsync_latency_ms(directory: Path, n: int = 100) -> dict[str, float]:
    """fsync of a 100-byte append in `directory`: the agent's ledger does two per command."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 100)
            t = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    return {"p50": round(percentile(times, 50), 3), "p99": round(percentile(times, 99), 3)}


def cpu_stat() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


_START = (time.time(), os.getloadavg(), cpu_stat())


def load_info() -> dict[str, Any]:
    """How busy the machine was while this benchmark ran (other work shares these cores)."""
    t0, load0, (busy0, total0) = _START
    busy1, total1 = cpu_stat()
    return {
        "wall_s": round(time.time() - t0, 1),
        "loadavg_at_start": [round(x, 2) for x in load0],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine_cpu_busy_percent": round(100 * (busy1 - busy0) / max(1.0, total1 - total0), 1),
    }


def source_info() -> dict[str, Any]:
    """Which agent was measured: the commit, and agent/ files that differ from it."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                           check=False, timeout=30)
        return r.stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--", "agent").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(),
            "agent_files_changed_since_commit": changed}


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    mem_kb = _first("/proc/meminfo", "MemTotal") or "0 kB"
    tmp = Path(tempfile.gettempdir())
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "mosquitto": mosquitto_version(),
        "tmp_filesystem": _fs_type(tmp.resolve()),
        "fsync_ms": fsync_latency_ms(tmp),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


def save_result(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json: the data, the machine, when and how it ran."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "load": load_info(),
        "source": source_info(),
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def warm_bytecode() -> None:
    """Fill the private bytecode cache for everything an agent imports (once per machine)."""
    code = ("import sys; sys.argv = ['x']; import agent.cli, agent.app, agent.link.mqtt, "
            "agent.link.controller, agent.checks.runner, agent.host.nodeadm, "
            "agent.host.packages, agent.diagnostics, httpcore, anyio, anyio._backends._asyncio, "
            "h11, certifi, paho.mqtt.client, devtools.fakehost.nodeadm, "
            "devtools.fakehost.systemctl, devtools.fakehost.layout")
    subprocess.run([PY, "-c", code], check=True, cwd=ROOT, timeout=120)


# ---- statistics -----------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# ---- /proc ----------------------------------------------------------------------------------

def proc_mem(pid: int) -> dict[str, int]:
    """Bytes from /proc/<pid>/smaps_rollup: Rss, Pss, Pss_Anon, Pss_File, Private_*, Swap."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[key.strip()] = int(fields[0]) * 1024
    return out


def proc_cpu(pid: int) -> dict[str, float]:
    """CPU seconds from /proc/<pid>/stat: utime, stime (all threads), cutime, cstime (waited
    children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    utime, stime, cutime, cstime = (int(x) / CLK_TCK for x in fields[11:15])
    return {"utime": utime, "stime": stime, "cutime": cutime, "cstime": cstime}


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def vm_hwm(pid: int) -> int:
    return int(proc_status(pid)["VmHWM"].split()[0]) * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards `want` (capped by the hard limit); children
    (mosquitto) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


MB = 1024 * 1024  # sizes are reported in MiB (2^20 bytes), also where a key says "mb"


def mb(n: float) -> float:
    return round(n / MB, 2)


# ---- the floor: a process that only imports the agent's dependencies --------------------------

FLOOR_CODE = (
    "import sys\n"
    f"import {', '.join(FLOOR_IMPORTS)}\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()\n"
)


def measure_floor(runs: int = 3, settle_s: float = 1.0) -> dict[str, Any]:
    """RSS and PSS of `runs` floor processes (one at a time), median and each."""
    samples = []
    for _ in range(runs):
        p = subprocess.Popen([PY, "-c", FLOOR_CODE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("floor process did not start")
            time.sleep(settle_s)
            m = proc_mem(p.pid)
            samples.append({"rss": m["Rss"], "pss": m["Pss"], "hwm": vm_hwm(p.pid)})
        finally:
            with contextlib.suppress(Exception):
                assert p.stdin is not None
                p.stdin.close()
            p.wait(10)
    return {
        "imports": list(FLOOR_IMPORTS),
        "rss": int(median([s["rss"] for s in samples])),
        "pss": int(median([s["pss"] for s in samples])),
        "runs": samples,
    }


# ---- host programs ----------------------------------------------------------------------------

def install_fast_fakes(bin_dir: Path, root: Path, programs: dict[str, str],
                       nodeadm_version: str | None = None) -> dict[str, str]:
    """/bin/sh stand-ins for the programs the agent runs on every start or health sample,
    replacing the Python fakes of devtools/fakehost (each costs ~40-90 ms of CPU to start,
    where the real systemctl/timedatectl/firewall-cmd cost a few ms). Same answers from the
    same host-tree files: `systemctl is-active` reads <root>/run/fakehost/units/<unit>;
    `timedatectl` says synced unless <root>/run/fakehost/ntp-unsynced exists; `nodeadm
    version` prints the fake's version and every other nodeadm verb execs the Python
    stand-in unchanged; `firewall-cmd` and `ufw` say "not running" / "inactive" when the host
    has no firewall state (<root>/run/fakehost/firewall.json, as the Python fakes read it) and
    exec the Python fakes when it has. No call log is written for the fast answers.
    """
    from devtools.fakehost import layout
    from devtools.fakehost.firewall import FIREWALL_FILE

    units = layout.under(root, layout.UNITS_DIR)
    unsynced = layout.under(root, layout.NTP_UNSYNCED_FLAG)
    version = nodeadm_version or subprocess.run(
        [programs["nodeadm"], "version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    systemctl = bin_dir / "systemctl-fast"
    systemctl.write_text(
        "#!/bin/sh\n"
        '[ "$1" = is-active ] || exit 0\nshift\nrc=0\n'
        "for u in \"$@\"; do\n"
        '  case "$u" in -*) continue;; esac\n'
        f'  s=$(cat "{units}/${{u%.service}}" 2>/dev/null); [ -n "$s" ] || s=inactive\n'
        '  echo "$s"; [ "$s" = active ] || rc=3\n'
        "done\nexit $rc\n")
    timedatectl = bin_dir / "timedatectl-fast"
    timedatectl.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{unsynced}" ]; then echo NTPSynchronized=no; else echo NTPSynchronized=yes; fi\n')
    nodeadm = bin_dir / "nodeadm-fast"
    nodeadm.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = version ]; then printf %s {shlex_quote(version)}; exit 0; fi\n'
        f'exec {shlex_quote(programs["nodeadm"])} "$@"\n')
    fw_state = layout.under(root, FIREWALL_FILE)
    firewall_cmd = bin_dir / "firewall-cmd-fast"
    firewall_cmd.write_text(
        "#!/bin/sh\n"
        f'[ -e "{fw_state}" ] && exec {shlex_quote(programs["firewall_cmd"])} "$@"\n'
        'for a in "$@"; do [ "$a" = --state ] && { echo "not running"; exit 252; }; done\n'
        'echo "FirewallD is not running"; exit 252\n')
    ufw = bin_dir / "ufw-fast"
    ufw.write_text(
        "#!/bin/sh\n"
        f'[ -e "{fw_state}" ] && exec {shlex_quote(programs["ufw"])} "$@"\n'
        '[ "${1:-status}" = status ] && echo "Status: inactive"\nexit 0\n')
    for path in (systemctl, timedatectl, nodeadm, firewall_cmd, ufw):
        path.chmod(0o755)
    return {**programs, "systemctl": str(systemctl), "timedatectl": str(timedatectl),
            "nodeadm": str(nodeadm), "firewall_cmd": str(firewall_cmd), "ufw": str(ufw)}


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


# ---- the rig ----------------------------------------------------------------------------------

class Rig:
    """A broker, optionally a controller, a signer and its public key, under one directory."""

    def __init__(self, tmp: Path, *, controller: bool = True, persistence: bool = False,
                 max_queued_messages: int | None = None,
                 broker_config: tuple[str, ...] = (), tcp_nodelay: bool = True) -> None:
        from devtools.broker import Mosquitto
        from devtools.controller import Controller
        from devtools.signer import CommandSigner

        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(tmp / "broker", persistence=persistence,
                                max_queued_messages=max_queued_messages,
                                extra_config=broker_config, tcp_nodelay=tcp_nodelay)
        (tmp / "broker").mkdir(exist_ok=True)
        self.broker.start()
        self.controller = Controller(registration_token=TOKEN).start() if controller else None
        self.token_file = tmp / "registration-token"
        self.token_file.write_text(TOKEN + "\n")
        self.signer = CommandSigner.generate()
        self.public_key = self.signer.write_public_key(tmp / "signing.pub")
        self.private_key = tmp / "signing.key"
        self.private_key.write_bytes(self.signer.private_pem())
        self.private_key.chmod(0o600)

    @property
    def port(self) -> int:
        return self.broker.port

    def agent_config(self, *, health_interval_s: float = 30.0,
                     mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config sections that point an agent at this rig (merged into HostEnv's)."""
        cfg: dict[str, Any] = {
            "mqtt": {"url": self.broker.url, "health_interval_s": health_interval_s,
                     **(mqtt or {})},
            "commands": {"public_key_file": str(self.public_key)},
        }
        if self.controller is not None:
            cfg["controller"] = {"url": self.controller.url,
                                 "registration_token_file": str(self.token_file)}
            cfg["health"] = {"kubelet_healthz_url": self.controller.healthz_url,
                             "degraded_after_s": 3600}
        return cfg

    def host(self, name: str, uid: str, *, health_interval_s: float = 30.0,
             local: bool = False, mqtt: dict[str, Any] | None = None) -> Any:
        """A tests.support.HostEnv wired to this rig; its assignment from the controller (or
        a local file with `local=True` or without a controller)."""
        from agent.testing import sample_assignment
        from tests.support import HostEnv

        cfg = self.agent_config(health_interval_s=health_interval_s, mqtt=mqtt)
        use_local = local or self.controller is None
        if use_local:
            cfg.pop("controller", None)
        h = HostEnv(self.tmp / name, uid=uid, config=cfg,
                    local_assignment=sample_assignment() if use_local else None)
        if not use_local:
            assert self.controller is not None
            self.controller.set_assignment(uid, sample_assignment())
        return h

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.broker.stop()


CONTROLLER_CODE = """\
import json, sys
from devtools import controller
from agent.testing import sample_assignment
# socketserver listens with a backlog of 5: a thousand agents registering at once would
# overflow it and wait on SYN retransmits, which measures the fake, not the agents.
controller._Server.request_queue_size = 4096
ctl = controller.Controller(registration_token=sys.argv[1], assignment=sample_assignment()).start()
print(json.dumps({"url": ctl.url, "healthz_url": ctl.healthz_url}), flush=True)
sys.stdin.read()
print(json.dumps({"requests": len(ctl.requests), "registrations": len(ctl.registrations)}),
      flush=True)
ctl.stop()
"""


class ControllerProcess:
    """The devtools controller in its own process (every host gets `sample_assignment()`), so that
    its threads do not share a GIL with the agents under test."""

    def __init__(self, token: str = TOKEN) -> None:
        self.proc = subprocess.Popen([PY, "-c", CONTROLLER_CODE, token], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url: str = info["url"]
        self.healthz_url: str = info["healthz_url"]
        self.stats: dict[str, Any] = {}

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            assert self.proc.stdout is not None
            self.proc.stdin.close()
            with contextlib.suppress(ValueError):
                self.stats = json.loads(self.proc.stdout.readline() or "{}")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False, base: str | None = None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"edge-bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left <= 0


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(interval)


# ---- the recorder process -------------------------------------------------------------------

class Recorder:
    """Drives `common.py recorder` in a subprocess: a paho client subscribed to `topics`
    that appends one JSON line per message to `out`:
    ``{"t": time.time(), "u": uid, "s": suffix, "q": seq, "p": phase or state, "c":
    command_id, "y": event type, "n": payload["n"], "ss": session, "r": retain}``
    (keys only when present). `send(uids, tag)` has it sign one `ping` per uid, then publish
    them back to back; a line ``{"s": "_sending", "tag", "t0", "n"}`` is written just before
    the first publish and ``{"s": "_sent", "tag", "t0", "t1", "n"}`` once the last was handed
    to paho.
    """

    def __init__(self, port: int, out: Path, topics: Sequence[str], *, key: Path | None = None,
                 persistent: bool = False, client_id: str | None = None) -> None:
        self.out = out
        argv = [PY, str(BENCH / "common.py"), "recorder", "--port", str(port), "--out", str(out)]
        for t in topics:
            argv += ["--topic", t]
        if key is not None:
            argv += ["--key", str(key)]
        if persistent:
            argv.append("--persistent")
        if client_id:
            argv += ["--client-id", client_id]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"recorder did not start: {line!r}")
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[dict[str, Any]]:
        """Lines appended since the last call."""
        try:
            with self.out.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *whole, self._partial = data.split(b"\n")
        return [json.loads(x) for x in whole if x]

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def send_pings(self, uids: Sequence[str], tag: str, uids_file: Path) -> None:
        uids_file.write_text("\n".join(uids) + "\n")
        self.command(f"ping {uids_file} {tag}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.command("quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _recorder_main(argv: list[str]) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--key")
    ap.add_argument("--persistent", action="store_true")
    ap.add_argument("--client-id", default=f"bench-recorder-{os.getpid()}")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()
    subscribed = threading.Event()
    head = PREFIX + "/"

    def write(doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":"))
        with lock:
            out.write(line + "\n")

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in args.topic])

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        write({"t": time.time(), "s": "_subscribed"})
        subscribed.set()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        t = time.time()
        topic = msg.topic
        doc: dict[str, Any] = {"t": t}
        if topic.startswith(head):
            uid, _, suffix = topic[len(head):].partition("/")
            doc["u"], doc["s"] = uid, suffix
        else:
            doc["s"] = topic
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = None
        if isinstance(body, dict):
            for src, dst in (("seq", "q"), ("phase", "p"), ("state", "p"),
                             ("command_id", "c"), ("type", "y"), ("n", "n"),
                             ("session", "ss"), ("to", "to")):
                if src in body:
                    doc[dst] = body[src]
        if msg.retain:
            doc["r"] = 1
        write(doc)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(65535)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if args.persistent else 0
    client.connect("127.0.0.1", args.port, 30, clean_start=not args.persistent, properties=props)
    client.loop_start()
    if not subscribed.wait(10):
        print("no SUBACK", flush=True)
        return 1
    print("ready", flush=True)
    signer = None
    if args.key:
        from devtools.signer import CommandSigner

        signer = CommandSigner.from_pem(Path(args.key).read_bytes())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "ping" and signer is not None:
            uids = [u for u in Path(words[1]).read_text().split() if u]
            envs = []
            for uid in uids:
                env = signer.envelope("ping", uid=uid)
                envs.append((f"{PREFIX}/{uid}/commands",
                             json.dumps(env, separators=(",", ":")).encode()))
            t0 = time.time()
            # Written first: fast replies may be recorded before the publishing loop ends.
            write({"t": t0, "s": "_sending", "tag": words[2], "t0": t0, "n": len(envs)})
            infos = [client.publish(topic, payload, 1) for topic, payload in envs]
            t1 = time.time()
            write({"t": t1, "s": "_sent", "tag": words[2], "t0": t0, "t1": t1, "n": len(infos)})
    client.disconnect()
    client.loop_stop()
    out.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "recorder":
        sys.exit(_recorder_main(sys.argv[2:]))
    print("usage: common.py recorder --port P --out FILE --topic T [--key PEM]", file=sys.stderr)
    sys.exit(2)
