"""Footprint of a joined, idle agent: RSS, PSS and CPU against the import floor.

For each health interval (30 s, the default, and 1 s) an `edge-agent run` subprocess on a
made-up host, registered with the devtools controller and connected to a local Mosquitto, is
started and left to join (nodeadm stand-in runs install and init). Once joined and settled, its
RSS and PSS (/proc/<pid>/smaps_rollup) are sampled every second for `--duration` seconds and
its CPU is the change of utime+stime (/proc/<pid>/stat) over that window. The CPU of its
children (the Python stand-ins for systemctl and nodeadm, cutime+cstime) is reported apart:
real systemctl costs a fraction of what the stand-in does.

The floor, measured in the same run, is a Python process that only imports the agent's
dependencies (common.FLOOR_IMPORTS). Targets: RSS <= 1.15 x floor; idle CPU <= 0.2 % of one
core with health every 30 s.

With `--metrics` a last run at the first interval has Prometheus metrics on (metrics.listen
on a free loopback port, scraped once a second, and a textfile): against the run without
them it shows what enabling metrics costs. Without metrics the agent never imports
prometheus-client (tests/test_metrics.py checks that), so "off" is the plain run.

Then it looks for what costs memory (skip with --no-analysis): benchmarks/memprobe.py imports in
stages (floor, the agent's modules, everything the running agent had loaded) and runs an
in-process Agent to joined, reporting RSS at each stage; a second probe does the same under
tracemalloc and lists the top allocations by package and by line.

    /tmp/venv/bin/python benchmarks/footprint.py [--duration 60] [--intervals 30,1]
"""

from __future__ import annotations

import common  # first: puts the repository root on sys.path

# isort: split

import argparse
import json
import subprocess
import sys
import time
from typing import Any

RSS_TARGET = 1.15
CPU_TARGET = 0.2  # percent of one core, health every 30 s


def main() -> int:
    common.use_private_bytecode_cache()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="sampling window, s")
    ap.add_argument("--settle", type=float, default=10.0, help="wait after joined, s")
    ap.add_argument("--intervals", default="30,1", help="health intervals to run, s")
    ap.add_argument("--floor-runs", type=int, default=3)
    ap.add_argument("--no-analysis", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--metrics", action="store_true", help="add a run with metrics on")
    ap.add_argument("--result-name", default="footprint")
    args = ap.parse_args()
    intervals = [float(x) for x in args.intervals.split(",") if x]
    result: dict[str, Any] = {"params": {"duration_s": args.duration, "settle_s": args.settle,
                                         "intervals_s": intervals}}
    common.warm_bytecode()
    common.log("floor: a process importing only the agent's dependencies")
    floor = common.measure_floor(args.floor_runs)
    result["floor"] = floor
    common.log(f"floor RSS {common.mb(floor['rss'])} MiB, PSS {common.mb(floor['pss'])} MiB")
    runs = []
    with common.workdir("footprint", args.keep) as tmp:
        rig = common.Rig(tmp)
        try:
            for interval in intervals:
                runs.append(measure(rig, interval, args))
            if args.metrics:
                runs.append(measure(rig, intervals[0], args, metrics=True))
            if not args.no_analysis:
                result["analysis"] = analyse(rig, args)
        finally:
            rig.close()
    # The floor again at the end, to see that the machine did not drift meanwhile.
    floor_after = common.measure_floor(args.floor_runs)
    result["floor_after"] = {"rss": floor_after["rss"], "pss": floor_after["pss"]}
    for run in runs:
        rss = run["rss_median"]
        run["rss_vs_floor"] = round(rss / floor["rss"], 3)
        run["pss_vs_floor"] = round(run["pss_median"] / floor["pss"], 3)
        run["rss_over_target_mb"] = common.mb(rss - RSS_TARGET * floor["rss"])
    result["runs"] = runs
    at30 = next((r for r in runs if r["health_interval_s"] == 30.0), runs[0])
    on = next((r for r in runs if r["metrics"]), None)
    if on is not None:
        off = next(r for r in runs if not r["metrics"] and
                   r["health_interval_s"] == on["health_interval_s"])
        result["metrics_cost"] = {
            "rss_mb": common.mb(on["rss_median"] - off["rss_median"]),
            "pss_mb": common.mb(on["pss_median"] - off["pss_median"]),
            "cpu_percent": round(on["cpu_percent"] - off["cpu_percent"], 3),
            "threads": on["threads"] - off["threads"],
        }
    result["targets"] = {
        "rss_ratio": {"target": RSS_TARGET, "measured": at30["rss_vs_floor"],
                      "pass": at30["rss_vs_floor"] <= RSS_TARGET},
        "cpu_percent_at_30s": {"target": CPU_TARGET, "measured": at30["cpu_percent"],
                               "pass": at30["cpu_percent"] <= CPU_TARGET},
    }
    for r in runs:
        common.log(f"health {r['health_interval_s']:g}s{' metrics on' if r['metrics'] else ''}: RSS {common.mb(r['rss_median'])} MiB "
                   f"({r['rss_vs_floor']}x floor), PSS {common.mb(r['pss_median'])} MiB, "
                   f"CPU {r['cpu_percent']} % (+ children {r['children_cpu_percent']} %)")
    if not args.no_plot:
        plot(result)
    if "metrics_cost" in result:
        common.log(f"metrics on cost: {result['metrics_cost']}")
    common.save_result(args.result_name, result)
    return 0


def measure(rig: common.Rig, interval: float, args: argparse.Namespace,
            metrics: bool = False) -> dict[str, Any]:
    from devtools.commander import Commander

    tag = "-metrics" if metrics else ""
    uid = f"edge-bench-fp-{interval:g}s{tag}".replace(".", "-")
    h = rig.host(f"host-{interval:g}{tag}", uid, health_interval_s=interval)
    scrape_url = None
    if metrics:
        port = _free_port()
        h.config["metrics"] = {"listen": f"127.0.0.1:{port}", "interval_s": 15,
                               "textfile": str(h.tmp / "edge_agent.prom")}
        h.write_config()
        scrape_url = f"http://127.0.0.1:{port}/metrics"
    with Commander(rig.port, uid=uid) as cmd:
        t_start = time.monotonic()
        proc = h.start()
        if not cmd.wait_phase("joined", 90, uid=uid):
            h.stop()
            raise RuntimeError(f"{uid} did not join:\n{h.output()[-3000:]}")
        joined_s = time.monotonic() - t_start
        common.log(f"health {interval:g}s: joined after {joined_s:.1f} s; settling "
                   f"{args.settle:g} s, then sampling {args.duration:g} s")
        time.sleep(args.settle)
        pid = proc.pid
        samples = []
        c0, t0 = common.proc_cpu(pid), time.monotonic()
        health0 = len(cmd.health(uid))
        end = t0 + args.duration
        while True:
            now = time.monotonic()
            m = common.proc_mem(pid)
            c = common.proc_cpu(pid)
            samples.append({"t": round(now - t0, 3), "rss": m["Rss"], "pss": m["Pss"],
                            "cpu": round(c["utime"] + c["stime"], 2)})
            if scrape_url is not None:
                scraped = _http_get(scrape_url)
                assert b"edge_agent_phase" in scraped, scraped[:200]
            if now >= end:
                break
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        c1, t1 = common.proc_cpu(pid), time.monotonic()
        health_msgs = len(cmd.health(uid)) - health0
        mem_last = common.proc_mem(pid)
        hwm = common.vm_hwm(pid)
        threads = int(common.proc_status(pid)["Threads"])
        fds = common.fd_count(pid)
        phase = (cmd.statuses(uid) or [{}])[-1].get("phase")
    rc = h.stop()
    span = t1 - t0
    own = (c1["utime"] + c1["stime"]) - (c0["utime"] + c0["stime"])
    kids = (c1["cutime"] + c1["cstime"]) - (c0["cutime"] + c0["cstime"])
    rss = [s["rss"] for s in samples]
    pss = [s["pss"] for s in samples]
    return {
        "health_interval_s": interval,
        "metrics": metrics,
        "uid": uid,
        "joined_after_s": round(joined_s, 2),
        "phase_at_end": phase,
        "window_s": round(span, 2),
        "health_messages_in_window": health_msgs,
        "rss_median": int(common.median(rss)),
        "rss_min": min(rss),
        "rss_max": max(rss),
        "pss_median": int(common.median(pss)),
        "pss_anon": mem_last.get("Pss_Anon"),
        "pss_file": mem_last.get("Pss_File"),
        "private_dirty": mem_last.get("Private_Dirty"),
        "vm_hwm": hwm,
        "threads": threads,
        "open_fds": fds,
        "cpu_s": round(own, 3),
        "cpu_percent": round(100.0 * own / span, 3),
        "cpu_resolution_percent": round(100.0 / common.CLK_TCK / span, 3),
        "utime_s": round(c1["utime"] - c0["utime"], 3),
        "stime_s": round(c1["stime"] - c0["stime"], 3),
        "children_cpu_s": round(kids, 3),
        "children_cpu_percent": round(100.0 * kids / span, 3),
        "exit_code": rc,
        "samples": samples,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
        return bytes(r.read())


# ---- what costs memory --------------------------------------------------------------------

def analyse(rig: common.Rig, args: argparse.Namespace) -> dict[str, Any]:
    """Run benchmarks/memprobe.py twice: staged RSS, then the same under tracemalloc."""
    out: dict[str, Any] = {}
    for name, tm in (("stages", False), ("tracemalloc", True)):
        uid = f"edge-bench-probe-{name}"
        h = rig.host(f"probe-{name}", uid, health_interval_s=30)
        dest = h.tmp / "probe.json"
        argv = [common.PY, str(common.BENCH / "memprobe.py"), str(h.config_path), str(dest)]
        if tm:
            argv.append("--tracemalloc")
        common.log(f"analysis: memprobe ({name})")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False,
                           cwd=common.ROOT)
        if r.returncode != 0 or not dest.exists():
            out[name] = {"error": (r.stdout + r.stderr)[-3000:]}
            continue
        out[name] = json.loads(dest.read_text())
    out["importtime"] = importtime()
    return out


def importtime() -> dict[str, Any]:
    """`python -X importtime -c "import agent.cli, agent.app"`: the slowest imports."""
    r = subprocess.run([common.PY, "-X", "importtime", "-c", "import agent.cli, agent.app"],
                       capture_output=True, text=True, timeout=60, check=False, cwd=common.ROOT)
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = (x.strip() for x in line[len("import time:"):].split("|"))
        rows.append((int(self_us), int(cum_us), name))
    top_level = [r for r in rows if not r[2].startswith(" ")]
    return {
        "total_ms": round(sum(r[1] for r in top_level) / 1000, 1),
        "top_cumulative_ms": {r[2].strip(): round(r[1] / 1000, 1)
                              for r in sorted(top_level, key=lambda r: -r[1])[:12]},
    }


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    floor = result["floor"]["rss"] / common.MB
    for run in result["runs"]:
        t = [s["t"] for s in run["samples"]]
        ax.plot(t, [s["rss"] / common.MB for s in run["samples"]],
                label=f"agent RSS, health every {run['health_interval_s']:g} s")
        ax.plot(t, [s["pss"] / common.MB for s in run["samples"]], linestyle=":",
                label=f"agent PSS, health every {run['health_interval_s']:g} s")
    ax.axhline(floor, color="grey", linestyle="--", label=f"floor RSS ({floor:.1f} MiB)")
    ax.axhline(floor * RSS_TARGET, color="red", linestyle="--",
               label=f"target {RSS_TARGET} x floor ({floor * RSS_TARGET:.1f} MiB)")
    ax.set_xlabel("seconds into the sampling window (agent joined and idle)")
    ax.set_ylabel("MiB")
    ax.set_title("edge-agent memory, joined and idle")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = common.RESULTS / "footprint_rss.png"
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
