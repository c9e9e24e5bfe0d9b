"""A fleet in one process: N `Agent` objects on one asyncio loop, one Mosquitto, one controller.

Each agent has its own made-up host tree (make_host), state directory, UID and config, as
separate hosts would; they share only the process, the broker and the controller (the
devtools controller in a process of its own, which gives every host `sample_assignment()`). Each
size runs in a fresh child process (this script with --one N), so that one size's garbage
does not count towards the next one's memory.

Measured from the moment the first Agent is constructed. With `--start together` (default)
every Agent is constructed, then all are started at once, as a fleet powering up together
would; with `--start staggered` each is started right after it is constructed, yielding to
the loop in between, so that the later ones start while the earlier ones are already busy
joining (their start then waits for the loop like everything else):

- online: every agent's `online` availability has reached a subscriber (a recorder process);
- joined: every agent's retained status says `joined`. How much work that is depends on
  `--join` (default `auto`: `fresh` up to 300 agents, `preinstalled` above):
    fresh         empty hosts: preflight, then `nodeadm install` and `nodeadm init` (the
                  Python stand-in, a process per step) for every host;
    preinstalled  hosts where nodeadm's tracker exists and the agent's state records
                  Kubernetes 1.31 as installed, as after an image-based install: preflight,
                  then `nodeadm init` only;
    resume        hosts already joined (state says `joined`), as after a reboot or an agent
                  upgrade: no nodeadm at all; "joined" is then just the first status;
- RSS of the process before any agent exists (everything imported) and once all are joined
  and settled; the slope per added agent, per size and fitted across sizes;
- fan-out: `--fanouts` rounds of a signed `ping` to every agent, published back to back by
  the recorder: time from the first publish until the last final reply arrived;
- event-loop lag (a 100 ms sleeper's overshoot; a watchdog thread records what the main
  thread was doing during any stall over 20 s), file descriptors, and a clean stop (every
  run() returns 0, every `offline` seen). If links are down at the end, where every task
  waits is counted (for diagnosis).

Host programs: systemctl, timedatectl, firewall-cmd, ufw and `nodeadm version` are /bin/sh
stand-ins reading the same host-tree files as the Python fakes (common.install_fast_fakes),
because a Python start per check or health sample (40-90 ms of CPU each) would measure the
fakes; nodeadm install/init remain the Python stand-in. `--python-fakes` uses the Python fakes
throughout.

Targets: 1,000 agents all online <= 30 s; fan-out answered <= 5 s.

    /tmp/venv/bin/python benchmarks/fleet.py [--sizes 100,300,1000] [--join resume]
        [--start staggered] [--tmpfs] [--result-name NAME]
"""

from __future__ import annotations

import common  # first: puts the repository root on sys.path

# isort: split

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ONLINE_TARGET_S = 30.0
FANOUT_TARGET_S = 5.0
FINAL = {"succeeded", "failed", "canceled", "timed_out", "rejected"}


def main() -> int:
    common.use_private_bytecode_cache()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--join", choices=("auto", "fresh", "preinstalled", "resume"), default="auto")
    ap.add_argument("--source", choices=("controller", "local"), default="controller",
                    help="where assignments come from")
    ap.add_argument("--start", choices=("together", "staggered"), default="together",
                    help="construct every Agent, then start them all (together), or start "
                         "each right after constructing it, yielding to the loop in between")
    ap.add_argument("--fanouts", type=int, default=5)
    ap.add_argument("--settle", type=float, default=10.0, help="after all joined, s")
    ap.add_argument("--online-timeout", type=float, default=180.0)
    ap.add_argument("--joined-timeout", type=float, default=600.0)
    ap.add_argument("--python-fakes", action="store_true")
    ap.add_argument("--tmpfs", action="store_true",
                    help="host trees and state directories on /dev/shm: fsync costs nothing")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result-name", default="fleet", help="results/<name>.json")
    args = ap.parse_args()
    if args.one:
        one = asyncio.run(run_one(args))
        Path(args.out).write_text(json.dumps(one, indent=1, default=str))
        return 0
    common.warm_bytecode()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    runs = []
    for n in sizes:
        mode = args.join if args.join != "auto" else ("fresh" if n <= 300 else "preinstalled")
        with common.workdir(f"fleet-{n}", args.keep) as tmp:
            out = tmp / "result.json"
            argv = [common.PY, __file__, "--one", str(n), "--join", mode, "--source", args.source,
                    "--start", args.start,
                    "--fanouts", str(args.fanouts), "--settle", str(args.settle),
                    "--online-timeout", str(args.online_timeout),
                    "--joined-timeout", str(args.joined_timeout), "--out", str(out)]
            if args.python_fakes:
                argv.append("--python-fakes")
            if args.tmpfs:
                argv.append("--tmpfs")
            if args.keep:
                argv.append("--keep")
            common.log(f"N={n}: join mode {mode}, assignments from {args.source}")
            budget = 300 + args.online_timeout + args.joined_timeout + 60 * args.fanouts
            try:
                subprocess.run(argv, check=False, timeout=budget, cwd=common.ROOT)
            except subprocess.TimeoutExpired:
                common.log(f"N={n}: child exceeded {budget:.0f} s and was killed")
            if out.exists():
                runs.append(json.loads(out.read_text()))
            else:
                runs.append({"n": n, "join_mode": mode, "error": "no result (see output above)"})
    result = {"params": {"sizes": sizes, "join": args.join, "source": args.source,
                         "fanouts": args.fanouts, "settle_s": args.settle,
                         "python_fakes": args.python_fakes, "tmpfs": args.tmpfs,
                         "start": args.start},
              "runs": runs}
    ok = [r for r in runs if "error" not in r]
    if len(ok) >= 2:
        xs = [r["n"] for r in ok]
        ys = [r["rss_joined"] - r["rss_before_agents"] for r in ok]
        slope, intercept = fit(xs, ys)
        result["rss_per_agent_fit"] = {"kib_per_agent": round(slope / 1024, 1),
                                       "intercept_mb": common.mb(intercept),
                                       "points": [[x, common.mb(y)] for x, y in zip(xs, ys,
                                                                                   strict=True)]}
    targets: dict[str, Any] = {}
    big = max(ok, key=lambda r: r["n"], default=None)
    if big is not None:
        online = big["online_all_s"]
        targets[f"online_all_s_n{big['n']}"] = {
            "target": ONLINE_TARGET_S, "measured": online,
            "pass": online is not None and online <= ONLINE_TARGET_S}
    for r in ok:
        f = r.get("fanout_all_s_median")
        targets[f"fanout_all_s_n{r['n']}"] = {"target": FANOUT_TARGET_S, "measured": f,
                                              "pass": f is not None and f <= FANOUT_TARGET_S}
    result["targets"] = targets
    for r in runs:
        if "error" in r:
            common.log(f"N={r['n']}: {r['error']}")
            continue
        common.log(f"N={r['n']} ({r['join_mode']}): online {r['online_all_s']} s, joined "
                   f"{r['joined_all_s']} s, fan-out {r.get('fanout_all_s_median')} s, "
                   f"{r['rss_per_agent_kib']} KiB/agent, errors {r['log']['error_lines']}")
    if not args.no_plot and ok:
        plot(result, args.result_name)
    common.save_result(args.result_name, result)
    return 0


def fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


# ---- one size, in its own process --------------------------------------------------------------

def build_hosts(tmp: Path, n: int, mode: str, *, broker_url: str, pub: Path,
                controller: common.ControllerProcess | None, python_fakes: bool) -> list[Any]:
    from agent.core import lifecycle
    from agent.core.assignment import parse_assignment
    from agent.core.config import parse_config
    from agent.state.store import StateStore
    from agent.testing import sample_assignment
    from devtools.fakehost.hosttree import install_fake_programs, make_host, set_unit

    doc = sample_assignment()
    version = None
    configs = []
    for i in range(n):
        uid = f"edge-fleet-{i:04d}"
        d = tmp / "hosts" / uid
        root = d / "host"
        make_host(root, installed=mode in ("preinstalled", "resume"), hostname=uid)
        programs = install_fake_programs(d / "bin", root, env={"NODEADM_FAKE_DELAY": "0.02"})
        if not python_fakes:
            if version is None:
                version = subprocess.run([programs["nodeadm"], "version"], capture_output=True,
                                         text=True, check=True, timeout=30).stdout
            programs = common.install_fast_fakes(d / "bin", root, programs, version)
        state = d / "state"
        if mode in ("preinstalled", "resume"):
            store = StateStore(state)
            store.ensure_dir()
            a = parse_assignment(doc)
            if mode == "preinstalled":
                st = lifecycle.State(installed_version=doc["kubernetes_version"])
            else:
                set_unit(root, "kubelet", "active")
                st = lifecycle.State(phase=lifecycle.Phase.JOINED, phase_since=time.time(),
                                     assignment=a, installed_version=doc["kubernetes_version"],
                                     node_name=f"mi-{i:017x}")
            store.save(st, [], None, {})
        cfg: dict[str, Any] = {
            "host": {"uid": uid, "root": str(root), "labels": {"site": "fleet"}},
            "state_dir": str(state),
            "log": {"level": "info", "format": "json"},
            "checks": {"min_free_disk_gb": 0},
            "join": {"retry_backoff_s": 5},
            "nodeadm": {"config_path": str(d / "etc" / "nodeconfig.yaml"),
                        "systemd_run": "never"},
            "health": {"kubelet_healthz_url": (controller.healthz_url if controller
                                               else "http://127.0.0.1:9/healthz"),
                       "degraded_after_s": 3600},
            "programs": programs,
            "mqtt": {"url": broker_url},
            "commands": {"public_key_file": str(pub)},
        }
        if controller is not None:
            cfg["controller"] = {"url": controller.url,
                                 "registration_token_file": str(tmp / "registration-token")}
        else:
            (d / "assignment.json").write_text(json.dumps(doc))
            cfg["assignment_file"] = str(d / "assignment.json")
        configs.append((uid, parse_config(cfg)))
    return configs


def preload() -> None:
    """Import everything a running agent imports, so RSS before agents counts the code."""
    sys.path.insert(0, str(common.BENCH))
    import memprobe

    for mod in (*memprobe.AGENT_EAGER, *memprobe.AGENT_LAZY, *memprobe.THIRD_PARTY_LAZY):
        __import__(mod)


async def run_one(args: argparse.Namespace) -> dict[str, Any]:
    from agent.app import Agent

    n, mode = args.one, args.join
    preload()
    nofile = common.raise_nofile(max(4096, 12 * n + 1024))
    pid = os.getpid()
    out: dict[str, Any] = {"n": n, "join_mode": mode, "source": args.source,
                           "tmpfs": args.tmpfs, "start": args.start,
                           "nofile_soft_limit": nofile[0]}
    base = "/dev/shm" if args.tmpfs else None
    with common.workdir(f"fleet-one-{n}", args.keep, base) as tmp:
        rig = common.Rig(tmp, controller=False, max_queued_messages=0,
                         broker_config=("max_connections -1",))
        controller = common.ControllerProcess() if args.source == "controller" else None
        recorder = None
        agents: list[Any] = []
        tasks: list[asyncio.Task[int]] = []
        try:
            t_build = time.monotonic()
            configs = build_hosts(tmp, n, mode, broker_url=rig.broker.url, pub=rig.public_key,
                                  controller=controller, python_fakes=args.python_fakes)
            out["build_hosts_s"] = round(time.monotonic() - t_build, 1)
            common.log(f"N={n}: {n} host trees in {out['build_hosts_s']} s")
            uids = [u for u, _ in configs]
            recorder = common.Recorder(
                rig.port, tmp / "recorded.jsonl",
                [f"{common.PREFIX}/+/{s}" for s in ("availability", "status", "replies")],
                key=rig.private_key)
            gc.collect()
            out["rss_before_agents"] = common.proc_mem(pid)["Rss"]
            out["fds_before_agents"] = common.fd_count(pid)
            log_file = (tmp / "agents.log").open("w")
            gc_pauses = GcPauses()
            lag = LagMeter()
            lag_task = asyncio.create_task(lag.run())
            watch = Watch(recorder, set(uids))
            t0_wall, t0 = time.time(), time.monotonic()
            if args.start == "staggered":
                for uid, cfg in configs:
                    agent = Agent(cfg, stdout=log_file, env={})
                    agents.append(agent)
                    tasks.append(asyncio.create_task(agent.run(), name=uid))
                    await asyncio.sleep(0)
            else:
                agents = [Agent(cfg, stdout=log_file, env={}) for _, cfg in configs]
                out["construct_all_s"] = round(time.monotonic() - t0, 2)
                tasks = [asyncio.create_task(a.run(), name=a.uid) for a in agents]
            out["construct_and_start_all_s"] = round(time.monotonic() - t0, 2)
            common.log(f"N={n}: all constructed and started in "
                       f"{out['construct_and_start_all_s']} s")
            samples: list[dict[str, Any]] = []
            lag.mark("start")
            deadline_online = t0 + args.online_timeout
            deadline_joined = t0 + args.online_timeout + args.joined_timeout
            while True:
                await asyncio.sleep(0.5)
                watch.poll()
                m = common.proc_mem(pid)
                samples.append({"t": round(time.monotonic() - t0, 2), "rss": m["Rss"],
                                "online": len(watch.online), "joined": len(watch.joined)})
                now = time.monotonic()
                if len(watch.online) == n and len(watch.joined) == n:
                    break
                if len(watch.online) < n and now > deadline_online:
                    break
                if now > deadline_joined:
                    break
                if all(t.done() for t in tasks):
                    break
            out["online_all_s"] = watch.all_time(watch.online, n, t0_wall)
            out["joined_all_s"] = watch.all_time(watch.joined, n, t0_wall)
            out["online_count"], out["joined_count"] = len(watch.online), len(watch.joined)
            out["online_s"] = watch.spread(watch.online, t0_wall)
            out["joined_s"] = watch.spread(watch.joined, t0_wall)
            out["loop_lag_ms_until_joined"] = lag.summary("start")
            out["rss_all_online"] = next((s["rss"] for s in samples if s["online"] == n), None)
            common.log(f"N={n}: online {out['online_all_s']} s, joined {out['joined_all_s']} s")
            await asyncio.sleep(args.settle)
            watch.poll()
            m = common.proc_mem(pid)
            out["rss_joined"] = m["Rss"]
            out["pss_joined"] = m["Pss"]
            out["rss_peak"] = common.vm_hwm(pid)
            out["rss_per_agent_kib"] = round((m["Rss"] - out["rss_before_agents"]) / n / 1024, 1)
            out["fds_joined"] = common.fd_count(pid)
            out["threads_joined"] = int(common.proc_status(pid)["Threads"])
            out["phases_at_settle"] = count([str(a.driver.state.phase) for a in agents])
            out["links_connected_at_settle"] = sum(1 for a in agents if a.link.connected)
            if out["links_connected_at_settle"] < n:
                out["where_tasks_wait"] = task_histogram()
            fanouts = []
            for k in range(args.fanouts):
                lag.mark(f"fanout{k}")
                fanouts.append(await fanout(recorder, watch, uids, tmp, k))
                common.log(f"N={n}: fan-out {k + 1}: all {fanouts[-1]['answered']} replies in "
                           f"{fanouts[-1]['all_s']} s")
                fanouts[-1]["loop_lag_ms"] = lag.summary(f"fanout{k}")
                await asyncio.sleep(2)
            out["fanouts"] = fanouts
            done = [f["all_s"] for f in fanouts if f["all_s"] is not None]
            out["fanout_all_s_median"] = round(common.median(done), 3) if done else None
            out["tasks_ended_early"] = [t.get_name() for t in tasks if t.done()]
            out["task_exceptions"] = task_exceptions(tasks)
            out["samples"] = samples
            # A clean stop of every agent: `offline` published, run() returns 0.
            t_stop = time.monotonic()
            for a in agents:
                a.request_stop()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
            out["stop_all_s"] = round(time.monotonic() - t_stop, 2)
            out["stop_results"] = count([r if isinstance(r, int) else type(r).__name__
                                         for r in results])
            await asyncio.sleep(1)
            watch.poll()
            out["offline_seen"] = len(watch.offline)
            lag_task.cancel()
            out["loop_stalls"] = lag.stalls
            out["gc_pauses"] = gc_pauses.summary()
            log_file.close()
            out["log"] = scan_log(tmp / "agents.log")
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if recorder is not None:
                recorder.close()
            if controller is not None:
                controller.close()
                out["controller"] = controller.stats
            rig.close()
    return out


async def fanout(recorder: common.Recorder, watch: Any, uids: list[str], tmp: Path,
                 k: int) -> dict[str, Any]:
    tag = f"fanout{k}"
    watch.start_fanout(tag)
    recorder.send_pings(uids, tag, tmp / f"uids-{k}.txt")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        watch.poll()
        if watch.sent and "t1" in watch.sent and len(watch.replies) >= len(uids):
            break
    t0 = watch.sent["t0"] if watch.sent else None
    times = sorted(watch.replies.values())
    states = count(list(watch.reply_states.values()))
    return {
        "answered": len(times),
        "states": states,
        "publish_s": (round(watch.sent["t1"] - watch.sent["t0"], 3)
                      if watch.sent and "t1" in watch.sent else None),
        "all_s": round(times[-1] - t0, 3) if t0 and len(times) == len(uids) else None,
        "reply_s": common.summary([t - t0 for t in times]) if t0 else {},
        "duplicates": watch.reply_dups,
    }


class Watch:
    """What the recorder saw, per UID: first online, first joined status, fan-out replies."""

    def __init__(self, recorder: common.Recorder, uids: set[str]) -> None:
        self.recorder = recorder
        self.uids = uids
        self.online: dict[str, float] = {}
        self.joined: dict[str, float] = {}
        self.offline: set[str] = set()
        self.sent: dict[str, Any] | None = None
        self.tag: str | None = None
        self.replies: dict[str, float] = {}
        self.reply_states: dict[str, str] = {}
        self.reply_dups = 0

    def start_fanout(self, tag: str) -> None:
        self.tag, self.sent = tag, None
        self.replies, self.reply_states, self.reply_dups = {}, {}, 0

    def poll(self) -> None:
        for x in self.recorder.new_lines():
            s, u = x.get("s"), x.get("u")
            if s == "availability":
                if x.get("p") == "online":
                    self.online.setdefault(u, x["t"])
                elif x.get("p") == "offline" and u in self.online:
                    self.offline.add(u)
            elif s == "status" and x.get("p") == "joined":
                self.joined.setdefault(u, x["t"])
            elif s in ("_sending", "_sent") and x.get("tag") == self.tag:
                self.sent = x  # replies can be recorded between the two
            elif s == "replies" and x.get("p") in FINAL and self.sent is not None:
                if u in self.replies:
                    self.reply_dups += 1
                else:
                    self.replies[u] = x["t"]
                    self.reply_states[u] = x["p"]

    @staticmethod
    def all_time(seen: dict[str, float], n: int, t0: float) -> float | None:
        return round(max(seen.values()) - t0, 2) if len(seen) == n and seen else None

    @staticmethod
    def spread(seen: dict[str, float], t0: float) -> dict[str, Any]:
        return common.summary([t - t0 for t in seen.values()], 2)


class GcPauses:
    """Garbage-collector pauses in this process (they stop the event loop), by generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, int]] = []
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._t) * 1000,
                                info.get("collected", 0)))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for gen in (0, 1, 2):
            ms = [p for g, p, _ in self.pauses if g == gen]
            out[f"gen{gen}"] = {"count": len(ms), "total_ms": round(sum(ms), 1),
                                "max_ms": round(max(ms), 1) if ms else 0.0}
        return out


class LagMeter:
    """How late a 100 ms sleep wakes up: the event loop's responsiveness under the fleet.

    A watchdog thread records the main thread's stack whenever the loop has not ticked for
    `stall_s`, once per stall: what the loop was doing when it did not come back.
    """

    def __init__(self, stall_s: float = 20.0) -> None:
        self.lags: list[tuple[str, float]] = []
        self.label = "idle"
        self.last_tick = time.monotonic()
        self.stall_s = stall_s
        self.stalls: list[dict[str, Any]] = []
        self._main = threading.main_thread().ident
        threading.Thread(target=self._watch, name="lag-watchdog", daemon=True).start()

    def mark(self, label: str) -> None:
        self.label = label

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            self.last_tick = time.monotonic()
            await asyncio.sleep(0.1)
            self.lags.append((self.label, (loop.time() - t - 0.1) * 1000))

    def _watch(self) -> None:
        reported = 0.0
        while True:
            time.sleep(1.0)
            tick = self.last_tick
            if time.monotonic() - tick > self.stall_s and tick != reported:
                reported = tick
                frame = sys._current_frames().get(self._main)
                stack = traceback.format_stack(frame, limit=25) if frame else []
                self.stalls.append({"at": time.strftime("%H:%M:%S"), "label": self.label,
                                    "stalled_s": round(time.monotonic() - tick, 1),
                                    "main_thread": "".join(stack)[-4000:]})

    def summary(self, label: str) -> dict[str, Any]:
        return common.summary([x for lbl, x in self.lags if lbl == label], 1)


def task_exceptions(tasks: list[asyncio.Task[int]]) -> dict[str, Any]:
    """Agents whose run() ended by itself: the exception types and a few examples."""
    kinds: dict[str, int] = {}
    examples: list[str] = []
    for t in tasks:
        if not t.done() or t.cancelled():
            continue
        exc = t.exception()
        if exc is None:
            kinds["returned"] = kinds.get("returned", 0) + 1
            continue
        kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
        if len(examples) < 3:
            examples.append(f"{t.get_name()}: {exc!r}"[:1000])
    return {"by_type": kinds, "examples": examples}


def task_histogram() -> dict[str, int]:
    """Where every task of the loop is suspended: (task's coroutine, innermost frame), counted.
    For diagnosing a fleet that went quiet."""
    where: dict[str, int] = {}
    for t in asyncio.all_tasks():
        frames = t.get_stack()
        coro = t.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        if frames:
            f = frames[-1]
            loc = f"{Path(f.f_code.co_filename).name}:{f.f_lineno}({f.f_code.co_name})"
        else:
            loc = "?"
        key = f"{name} @ {loc}"
        where[key] = where.get(key, 0) + 1
    return dict(sorted(where.items(), key=lambda kv: -kv[1]))


def count(items: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def scan_log(path: Path) -> dict[str, Any]:
    """Error and warning lines of every agent, by event name."""
    errors: dict[str, int] = {}
    warnings: dict[str, int] = {}
    examples: list[str] = []
    lines = 0
    with path.open(errors="replace") as f:
        for line in f:
            lines += 1
            if '"level": "error"' not in line and '"level": "warning"' not in line:
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                bucket = errors if doc.get("level") == "error" else warnings
                ev = str(doc.get("event"))
                if ev == "event":
                    ev = f"event:{doc.get('type')}:{doc.get('code')}"
                bucket[ev] = bucket.get(ev, 0) + 1
                if doc.get("level") == "error" and len(examples) < 5:
                    examples.append(line[:600])
    return {"lines": lines, "error_lines": sum(errors.values()), "errors": errors,
            "warnings": warnings, "error_examples": examples}


def plot(result: dict[str, Any], name: str = "fleet") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(result["runs"]):
        if "error" in r:
            continue
        color = f"C{i}"
        t = [s["t"] for s in r["samples"]]
        ax1.plot(t, [s["online"] / r["n"] for s in r["samples"]], color=color,
                 label=f"N={r['n']} online")
        ax1.plot(t, [s["joined"] / r["n"] for s in r["samples"]], linestyle="--", color=color,
                 label=f"N={r['n']} joined ({r['join_mode']})")
        ax2.plot(t, [s["rss"] / common.MB for s in r["samples"]], color=color,
                 label=f"N={r['n']}")
    ax1.axvline(ONLINE_TARGET_S, color="red", linestyle=":", label="30 s target")
    ax1.set_xlabel("seconds since the first Agent was constructed")
    ax1.set_ylabel("fraction of the fleet")
    ax1.set_title("online and joined, one process")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("seconds since the first Agent was constructed")
    ax2.set_ylabel("process RSS, MiB")
    ax2.set_title("fleet process memory")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
