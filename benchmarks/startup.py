"""Start-up: process start to READY=1 and to the retained `online`, median of N restarts.

One made-up host, registered with the devtools controller and connected to a local
Mosquitto, is first brought to `joined` (that first start, with a fresh state directory, is
reported apart). Then `edge-agent run` is restarted `--runs` times, as systemd would after a
reboot or an upgrade, each time measuring from just before the process is spawned to

- READY=1 arriving on a datagram socket of ours passed as NOTIFY_SOCKET, and
- the agent's `online` availability message (retained) arriving at a subscriber.

Where the time goes comes from three sources: a probe process (this script with --probe)
that does what `edge-agent run` does with a clock around each step (interpreter start,
imports, config, state, run() to READY, READY to connected); `python -X importtime` over the
modules imported before READY, summed by package; and the agent's own log timestamps.

Installed agents run byte-compiled modules; so do these runs (see common.PYCACHE). A few runs
without a bytecode cache for the agent's own modules (as this development checkout runs, with
PYTHONDONTWRITEBYTECODE=1) are reported apart. Target: <= 1.0 s to both.

    /tmp/venv/bin/python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import common  # first: puts the repository root on sys.path

# isort: split

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

TARGET_S = 1.0
BEFORE_READY = ("agent.cli", "agent.app", "agent.link.mqtt", "agent.link.controller")


def main() -> int:
    common.use_private_bytecode_cache()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="timed restarts")
    ap.add_argument("--nocache-runs", type=int, default=5,
                    help="extra restarts without a bytecode cache for the agent's modules")
    ap.add_argument("--probe-runs", type=int, default=7)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--probe", nargs=2, metavar=("CONFIG", "T0"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(Path(args.probe[0]), float(args.probe[1]))
    common.warm_bytecode()
    result: dict[str, Any] = {"params": {"runs": args.runs, "nocache_runs": args.nocache_runs,
                                         "probe_runs": args.probe_runs}}
    with common.workdir("startup", args.keep) as tmp:
        rig = common.Rig(tmp)
        try:
            result.update(measure(rig, tmp, args))
        finally:
            rig.close()
    result["baseline"] = baselines()
    result["importtime"] = importtime()
    ready = result["restarts"]["ready_s"]["p50"]
    online = result["restarts"]["online_s"]["p50"]
    result["targets"] = {
        "ready_s_median": {"target": TARGET_S, "measured": ready, "pass": ready <= TARGET_S},
        "online_s_median": {"target": TARGET_S, "measured": online, "pass": online <= TARGET_S},
    }
    common.log(f"restarts: READY p50 {ready:.3f} s, online p50 {online:.3f} s "
               f"(first start: READY {result['first_start']['ready_s']:.3f} s, "
               f"online {result['first_start']['online_s']:.3f} s)")
    common.log(f"probe (median): {result['probe']['median_s']}")
    common.save_result("startup", result)
    return 0


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait_ready(self, timeout: float) -> float | None:
        """time.time() when a datagram with READY=1 arrived, None on timeout."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            t = time.time()
            if b"READY=1" in data.split(b"\n"):
                return t
        return None

    def close(self) -> None:
        self.sock.close()


def one_start(h: Any, cmd: Any, notify: NotifySocket, last_session: int,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    notify.drain()
    uid = h.uid
    t0 = time.time()
    proc = h.start(extra_env={"NOTIFY_SOCKET": str(notify.path), **(env or {})})
    t_ready = notify.wait_ready(20)

    def online() -> Any:
        for r in cmd.records("availability", uid):
            body = r.json()
            if body.get("state") == "online" and (body.get("session") or 0) > last_session:
                return r
        return None

    rec = cmd.wait_for(online, 20)
    out: dict[str, Any] = {"pid": proc.pid}
    out["ready_s"] = round(t_ready - t0, 4) if t_ready else None
    out["online_s"] = round(rec.ts - t0, 4) if rec else None
    out["session"] = rec.json().get("session") if rec else last_session
    out["log_offset"] = len(h.output())
    return out


def log_marks(h: Any, start_offset: int, t0_wall: float) -> dict[str, float]:
    """Seconds from t0 to the agent's own log lines of interest, for this run."""
    marks: dict[str, float] = {}
    for line in h.output()[start_offset:].splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        ev = doc.get("event")
        if ev in ("agent.started", "mqtt.connected", "controller.registered") and ev not in marks:
            ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
            marks[ev] = round(ts - t0_wall, 4)
    return marks


def measure(rig: common.Rig, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from devtools.commander import Commander

    uid = "edge-bench-startup"
    h = rig.host("host", uid)
    notify = NotifySocket(tmp / "notify.sock")
    out: dict[str, Any] = {}
    try:
        with Commander(rig.port, uid=uid) as cmd:
            # First start: fresh state directory; the host then joins (nodeadm stand-in).
            first = one_start(h, cmd, notify, 0)
            if not cmd.wait_phase("joined", 90, uid=uid):
                raise RuntimeError(f"did not join:\n{h.output()[-3000:]}")
            h.stop()
            out["first_start"] = first
            session = first["session"]
            runs = []
            for i in range(args.runs):
                offset = len(h.output())
                t_before = time.time()
                r = one_start(h, cmd, notify, session)
                time.sleep(0.3)
                r["log"] = log_marks(h, offset, t_before)
                r["exit_code"] = h.stop()
                session = r["session"]
                runs.append(r)
                common.log(f"restart {i + 1}/{args.runs}: READY {r['ready_s']} s, "
                           f"online {r['online_s']} s")
            nocache = []
            env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": ""}
            for _ in range(args.nocache_runs):
                r = one_start(h, cmd, notify, session, env)
                r["exit_code"] = h.stop()
                session = r["session"]
                nocache.append(r)
            probes = []
            for _ in range(args.probe_runs):
                t0 = time.time()
                p = subprocess.run([common.PY, __file__, "--probe", str(h.config_path), str(t0)],
                                   capture_output=True, text=True, timeout=60, check=False,
                                   cwd=common.ROOT, env=dict(os.environ, PYTHONPATH=str(common.ROOT)))
                lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
                if p.returncode != 0 or not lines:
                    raise RuntimeError(f"probe failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
                probes.append(json.loads(lines[-1]))
    finally:
        notify.close()

    def col(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) is not None]

    out["restarts"] = {
        "ready_s": common.summary(col(runs, "ready_s"), 4),
        "online_s": common.summary(col(runs, "online_s"), 4),
        "missing": sum(1 for r in runs if r["ready_s"] is None or r["online_s"] is None),
        "log_marks_median_s": {
            k: round(common.median([r["log"][k] for r in runs if k in r["log"]]), 4)
            for k in ("agent.started", "mqtt.connected", "controller.registered")
        },
        "runs": runs,
    }
    out["restarts_without_bytecode_cache"] = {
        "ready_s": common.summary(col(nocache, "ready_s"), 4),
        "online_s": common.summary(col(nocache, "online_s"), 4),
        "runs": nocache,
    }
    steps = list(probes[0]["steps"])
    out["probe"] = {
        "what": "time.time() deltas inside a process doing what `edge-agent run` does",
        "median_s": {k: round(common.median([p["steps"][k] for p in probes]), 4) for k in steps},
        "runs": probes,
    }
    return out


def probe(config: Path, t0: float) -> int:
    """Do what `edge-agent run` does, with a clock around each step; print JSON."""
    t_main = time.time()
    import asyncio

    t_asyncio = time.time()
    import agent.cli  # noqa: F401 - what `python -m agent` imports first
    from agent.app import Agent
    from agent.configfile import load_config

    t_imports = time.time()
    cfg = load_config(config, os.environ)
    t_config = time.time()
    marks: dict[str, float] = {}

    async def go() -> None:
        agent = Agent(cfg, stdout=open(os.devnull, "w"), env={})  # noqa: SIM115, ASYNC230
        marks["state"] = time.time()
        ready = agent.notifier.ready

        def ready_hook(status: str | None = None) -> bool:
            marks["ready"] = time.time()
            return ready(status=status)

        agent.notifier.ready = ready_hook  # type: ignore[method-assign]
        task = asyncio.create_task(agent.run())
        end = time.monotonic() + 20
        while time.monotonic() < end and not task.done():
            link = agent.link
            if link is not None and link.connected:
                marks["connected"] = time.time()
                break
            await asyncio.sleep(0.001)
        agent.request_stop()
        await asyncio.wait_for(task, 20)

    asyncio.run(go())
    steps = {
        "interpreter_start": t_main - t0,
        "import_asyncio": t_asyncio - t_main,
        "import_agent": t_imports - t_asyncio,
        "load_config": t_config - t_imports,
        "construct_agent_state": marks["state"] - t_config,
        "run_to_ready": marks["ready"] - marks["state"],
        "ready_to_connected": marks.get("connected", float("nan")) - marks["ready"],
        "total_to_ready": marks["ready"] - t0,
        "total_to_connected": marks.get("connected", float("nan")) - t0,
    }
    print(json.dumps({"steps": {k: round(v, 4) for k, v in steps.items()}}))
    return 0


def baselines(n: int = 7) -> dict[str, Any]:
    """Wall time of a bare interpreter and of one importing only the floor's modules."""
    out = {}
    for name, code in (("python_-c_pass", "pass"),
                       ("import_floor", f"import {', '.join(common.FLOOR_IMPORTS)}"),
                       ("import_agent_before_ready", f"import {', '.join(BEFORE_READY)}")):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run([common.PY, "-c", code], check=True, cwd=common.ROOT, timeout=60)
            times.append(time.perf_counter() - t)
        out[name] = {"median_s": round(common.median(times), 4), "runs": len(times)}
    return out


def importtime(n: int = 5) -> dict[str, Any]:
    """`python -X importtime` over what is imported before READY: self time by package
    (median of n), and the slowest single modules (cumulative)."""
    per_pkg: dict[str, list[float]] = {}
    totals = []
    last_rows: list[tuple[int, int, str]] = []
    for _ in range(n):
        r = subprocess.run([common.PY, "-X", "importtime", "-c", f"import {', '.join(BEFORE_READY)}"],
                           capture_output=True, text=True, timeout=60, check=True, cwd=common.ROOT)
        rows = []
        for line in r.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, name = (x for x in line[len("import time:"):].split("|"))
            rows.append((int(self_us), int(cum_us), name.rstrip()))
        sums: dict[str, float] = {}
        for self_us, _, name in rows:
            sums[_group(name.strip())] = sums.get(_group(name.strip()), 0) + self_us / 1000
        for k, v in sums.items():
            per_pkg.setdefault(k, []).append(v)
        totals.append(sum(x[0] for x in rows) / 1000)
        last_rows = rows
    top = sorted((r for r in last_rows if not r[2].startswith("  ")), key=lambda r: -r[1])[:10]
    return {
        "modules": list(BEFORE_READY),
        "note": "-X importtime adds its own overhead; compare shares, not absolute times",
        "total_self_ms_median": round(common.median(totals), 1),
        "self_ms_by_package_median": {
            k: round(common.median(v), 1)
            for k, v in sorted(per_pkg.items(), key=lambda kv: -common.median(kv[1]))
        },
        "slowest_top_level_cumulative_ms": {r[2].strip(): round(r[1] / 1000, 1) for r in top},
    }


def _group(module: str) -> str:
    top = module.split(".", maxsplit=1)[0]
    if top in ("agent", "httpx", "httpcore", "aiomqtt", "paho", "structlog", "yaml", "psutil",
               "nacl", "tenacity", "idna", "certifi", "anyio", "h11", "sniffio", "_cffi_backend"):
        return {"paho": "aiomqtt+paho", "aiomqtt": "aiomqtt+paho"}.get(top, top)
    if top.startswith("__editable__") or top == "_distutils_hack":
        return "site hooks"
    return "stdlib"


if __name__ == "__main__":
    sys.exit(main())
