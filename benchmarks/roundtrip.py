"""Command round trip: a signed `ping` published -> its final reply received, against a bare
MQTT echo through the same broker in the same run.

One joined `edge-agent run` subprocess (made-up host, devtools controller, local Mosquitto).
A paho client here publishes signed `ping` envelopes (QoS 1) to the agent's `commands` topic
and times each until the reply in a final state arrives on `replies`. The echo is a minimal
paho client in its own process (this script with --echo) that republishes every message it
gets on `bench/echo/req` to `bench/echo/rep` (QoS 1 both ways); it is sent the same envelope
bytes. Both are measured alternately in blocks of `--block` so that background load hits
both alike: `--n` sequential round trips each (one in flight), then `--n` in bursts of
`--burst` (all published back to back, each timed from its own publish). Envelopes are
signed beforehand, so signing is not timed.

Two variants, each with its own broker, agent and echo:

- `defaults`: Mosquitto's and paho's defaults, the agent as it is. Mosquitto (unless
  `set_tcp_nodelay true`) and paho leave Nagle's algorithm on, so a small segment written
  while an earlier one is unacknowledged waits for the peer's delayed ACK (40 ms on Linux):
  round trips cluster at 40 and 80 ms. The agent sets TCP_NODELAY on its own socket since
  commit 1b45c77; the broker's side of the connection still waits.
- `nodelay`: TCP_NODELAY on every socket: `set_tcp_nodelay true` in Mosquitto, on the
  driver's and echo's sockets, and in the agent also through a sitecustomize module that
  wraps `socket.create_connection` (paho's only way of opening its socket), so that an agent
  from before 1b45c77 is measured the same way. This shows what the agent itself costs.

Targets: agent p50 <= 4 x echo p50; agent p99 <= 10 ms.

    /tmp/venv/bin/python benchmarks/roundtrip.py [--n 1000] [--burst 50]
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
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

P50_RATIO_TARGET = 4.0
P99_TARGET_MS = 10.0
FINAL = {"succeeded", "failed", "canceled", "timed_out", "rejected"}
ECHO_REQ, ECHO_REP = "bench/echo/req", "bench/echo/rep"


def main() -> int:
    common.use_private_bytecode_cache()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="round trips per mode and target")
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--block", type=int, default=100, help="alternate agent/echo every block")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=10.0, help="per reply, s")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--variants", default="defaults,nodelay")
    ap.add_argument("--profile", type=int, default=500, metavar="N",
                    help="then profile the agent (cProfile) over N sequential pings; 0: skip")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        return echo_main(args.echo)
    if args.n % args.block or args.block % args.burst:
        ap.error("--n must be a multiple of --block, and --block of --burst")
    common.warm_bytecode()
    result: dict[str, Any] = {
        "params": {"n": args.n, "burst": args.burst, "block": args.block,
                   "warmup": args.warmup, "qos": 1},
        "variants": {},
    }
    for variant in [v for v in args.variants.split(",") if v]:
        nodelay = variant == "nodelay"
        with common.workdir(f"roundtrip-{variant}", args.keep) as tmp:
            common.log(f"variant {variant}")
            rig = common.Rig(tmp, tcp_nodelay=nodelay)
            try:
                result["variants"][variant] = run(rig, tmp, args, nodelay)
            finally:
                rig.close()
    if args.profile:
        with common.workdir("roundtrip-profile", args.keep) as tmp:
            common.log(f"profile: the agent under cProfile, {args.profile} sequential pings")
            rig = common.Rig(tmp, tcp_nodelay=True)
            try:
                result["profile"] = profile(rig, tmp, args)
            finally:
                rig.close()
    result["targets"] = {}
    for variant, v in result["variants"].items():
        for mode in ("sequential", "burst"):
            m = v[mode]
            result["targets"][f"{variant}_{mode}_p50_ratio"] = {
                "target": P50_RATIO_TARGET, "measured": m["p50_ratio"],
                "pass": m["p50_ratio"] <= P50_RATIO_TARGET}
            result["targets"][f"{variant}_{mode}_p99_ms"] = {
                "target": P99_TARGET_MS, "measured": m["agent_ms"]["p99"],
                "pass": m["agent_ms"]["p99"] <= P99_TARGET_MS}
            common.log(f"{variant} {mode}: agent p50 {m['agent_ms']['p50']} ms "
                       f"p99 {m['agent_ms']['p99']} ms; echo p50 {m['echo_ms']['p50']} ms "
                       f"p99 {m['echo_ms']['p99']} ms; p50 ratio {m['p50_ratio']}")
    if not args.no_plot:
        plot(result)
    common.save_result("roundtrip", result)
    return 0


NODELAY_SITECUSTOMIZE = """\
# Written by benchmarks/roundtrip.py: TCP_NODELAY on every socket.create_connection (paho's).
import socket as _socket

_create_connection = _socket.create_connection


def _nodelay_create_connection(*args, **kwargs):
    sock = _create_connection(*args, **kwargs)
    if sock.family in (_socket.AF_INET, _socket.AF_INET6):
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    return sock


_socket.create_connection = _nodelay_create_connection
"""


def nodelay_env(tmp: Path) -> dict[str, str]:
    site = tmp / "nodelay-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NODELAY_SITECUSTOMIZE)
    return dict(os.environ, PYTHONPATH=f"{site}:{common.ROOT}")


def start_agent(h: Any, env: dict[str, str]) -> None:
    """HostEnv.start with our environment (HostEnv pins PYTHONPATH itself)."""
    out = h.out_path.open("ab")
    h.proc = subprocess.Popen([common.PY, "-m", "agent", "run", "-c", str(h.config_path)],
                              stdout=out, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True, cwd=common.ROOT)
    out.close()


class Driver:
    """The controller's side: publishes, and timestamps replies as paho hands them over."""

    def __init__(self, port: int, uid: str, nodelay: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.uid = uid
        self.arrived: dict[str, float] = {}
        self.arrived_wall: dict[str, float] = {}
        self.sent_wall: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}
        self.unexpected: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-roundtrip",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        topics = [(f"{common.PREFIX}/{uid}/replies", 1), (ECHO_REP, 1)]

        def on_connect(c: Any, *_: Any) -> None:
            if nodelay:
                c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.subscribe(topics)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("driver: no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        t, wall = time.perf_counter(), time.time()
        body = json.loads(msg.payload)
        if msg.topic == ECHO_REP:
            key = "echo:" + body["id"]
        else:
            if body.get("state") not in FINAL:
                return
            key = "agent:" + body["command_id"]
            if body.get("state") != "succeeded" or body.get("duplicate"):
                self.unexpected.append(body)
        with self.lock:
            if key in self.arrived:
                self.unexpected.append({"duplicate_final": key})
                return
            self.arrived[key] = t
            self.arrived_wall[key] = wall
            ev = self.events.get(key)
        if ev is not None:
            ev.set()

    def expect(self, key: str) -> threading.Event:
        ev = threading.Event()
        with self.lock:
            self.events[key] = ev
            if key in self.arrived:
                ev.set()
        return ev

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, 1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(rig: common.Rig, tmp: Path, args: argparse.Namespace, nodelay: bool) -> dict[str, Any]:
    from devtools.commander import Commander

    uid = "edge-bench-roundtrip"
    h = rig.host("host", uid)
    env = nodelay_env(tmp) if nodelay else dict(os.environ, PYTHONPATH=str(common.ROOT))
    echo = subprocess.Popen([common.PY, __file__, "--echo", str(rig.port)],
                            stdout=subprocess.PIPE, text=True, env=env)
    driver = None
    try:
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != "ready":
            raise RuntimeError("echo did not start")
        start_agent(h, env)
        with Commander(rig.port, uid=uid) as cmd:
            if not cmd.wait_phase("joined", 90, uid=uid):
                raise RuntimeError(f"agent did not join:\n{h.output()[-3000:]}")
        time.sleep(2)  # let the post-join status/health traffic pass
        driver = Driver(rig.port, uid, nodelay)
        total = args.warmup + 2 * args.n
        common.log(f"signing {total} envelopes")
        envs = []
        for _ in range(total):
            env = rig.signer.envelope("ping", uid=uid, ttl_s=1800)
            envs.append((env["id"], json.dumps(env, separators=(",", ":")).encode()))
        agent_topic = f"{common.PREFIX}/{uid}/commands"
        targets = {"agent": agent_topic, "echo": ECHO_REQ}
        it = iter(envs)
        # Warm-up, both ways, not recorded.
        for _ in range(args.warmup):
            ident, payload = next(it)
            for name in ("agent", "echo"):
                ev = driver.expect(f"{name}:{ident}")
                driver.publish(targets[name], payload)
                ev.wait(args.timeout)
        lat: dict[str, dict[str, list[float]]] = {m: {"agent": [], "echo": []}
                                                  for m in ("sequential", "burst")}
        lost: dict[str, int] = {"agent": 0, "echo": 0}
        seq_agent_keys: list[str] = []
        cpu0 = common.proc_cpu(h.proc.pid)
        t_start = time.perf_counter()
        for mode in ("sequential", "burst"):
            common.log(f"{mode}: {args.n} round trips each, agent and echo alternating "
                       f"in blocks of {args.block}")
            blocks = args.n // args.block
            for b in range(blocks):
                block = [next(it) for _ in range(args.block)]
                order = ("agent", "echo") if b % 2 == 0 else ("echo", "agent")
                if mode == "sequential":
                    seq_agent_keys += [f"agent:{ident}" for ident, _ in block]
                for name in order:
                    size = 1 if mode == "sequential" else args.burst
                    for i in range(0, len(block), size):
                        chunk = block[i:i + size]
                        got, missing = round_trips(driver, targets[name], name, chunk,
                                                   args.timeout)
                        lat[mode][name].extend(got)
                        lost[name] += missing
        elapsed = time.perf_counter() - t_start
        cpu1 = common.proc_cpu(h.proc.pid)
        agent_cpu = (cpu1["utime"] + cpu1["stime"]) - (cpu0["utime"] + cpu0["stime"])
        alive = h.proc.poll() is None
        rc = h.stop()
        stages = breakdown(driver, h.output(), seq_agent_keys)
        out: dict[str, Any] = {
            "tcp_nodelay_everywhere": nodelay,
            "agent_alive_at_end": alive,
            "agent_exit_code": rc,
            "lost": lost,
            "unexpected_replies": driver.unexpected[:20],
            "unexpected_count": len(driver.unexpected),
            "agent_cpu_ms_per_command": round(1000 * agent_cpu / (2 * args.n), 3),
            "measured_wall_s": round(elapsed, 2),
            "sequential_agent_stages_ms": stages,
        }
        for mode in ("sequential", "burst"):
            a = [x * 1000 for x in lat[mode]["agent"]]
            e = [x * 1000 for x in lat[mode]["echo"]]
            ratio = round(common.percentile(a, 50) / common.percentile(e, 50), 2)
            out[mode] = {
                "agent_ms": common.summary(a),
                "echo_ms": common.summary(e),
                "p50_ratio": ratio,
                "agent_minus_echo_p50_ms": round(common.percentile(a, 50)
                                                 - common.percentile(e, 50), 3),
                "samples_agent_ms": [round(x, 3) for x in a],
                "samples_echo_ms": [round(x, 3) for x in e],
            }
        return out
    finally:
        if driver is not None:
            driver.close()
        h.stop()
        echo.terminate()
        echo.wait(10)


def profile(rig: common.Rig, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Where an agent spends its CPU per command: cProfile over `args.profile` pings, on a
    host that joined in an earlier (unprofiled) run, TCP_NODELAY everywhere."""
    import pstats

    from devtools.commander import Commander

    uid = "edge-bench-profile"
    h = rig.host("host", uid)
    env = nodelay_env(tmp)
    start_agent(h, env)
    with Commander(rig.port, uid=uid) as cmd:
        if not cmd.wait_phase("joined", 90, uid=uid):
            raise RuntimeError(f"agent did not join:\n{h.output()[-3000:]}")
    h.stop()
    prof = tmp / "agent.prof"
    out = h.out_path.open("ab")
    h.proc = subprocess.Popen([common.PY, "-m", "cProfile", "-o", str(prof), "-m", "agent", "run",
                               "-c", str(h.config_path)], stdout=out, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True, cwd=common.ROOT)
    out.close()
    time.sleep(3)  # started and connected (the host is already joined)
    driver = Driver(rig.port, uid, True)
    try:
        envs = [rig.signer.envelope("ping", uid=uid, ttl_s=1800) for _ in range(args.profile)]
        lats, lost = [], 0
        for env_ in envs:
            got, missing = round_trips(driver, f"{common.PREFIX}/{uid}/commands", "agent",
                                       [(env_["id"], json.dumps(env_).encode())], args.timeout)
            lats += got
            lost += missing
    finally:
        driver.close()
    h.stop()
    stats = pstats.Stats(str(prof))
    n = args.profile
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, _where(filename, line, func)))
    top_self = sorted(rows, key=lambda r: -r[0])[:25]
    agent_cum = sorted((r for r in rows if r[3].startswith("agent/")), key=lambda r: -r[1])[:20]

    def fmt(r: tuple[float, float, int, str]) -> dict[str, Any]:
        return {"where": r[3], "self_ms_per_cmd": round(1000 * r[0] / n, 4),
                "cum_ms_per_cmd": round(1000 * r[1] / n, 4), "calls_per_cmd": round(r[2] / n, 2)}

    return {
        "pings": n,
        "lost": lost,
        "latency_ms_under_profiler": common.summary([x * 1000 for x in lats]),
        "note": "cProfile slows Python code several-fold; read shares, not absolute times. "
                "Includes the agent's start (imports) and idle loops over the same minutes.",
        "profiled_total_s": round(stats.total_tt, 3),  # type: ignore[attr-defined]
        "top_self_time": [fmt(r) for r in top_self],
        "agent_functions_by_cumulative": [fmt(r) for r in agent_cum],
    }


def breakdown(driver: Driver, agent_log: str, keys: list[str]) -> dict[str, Any]:
    """Sequential agent round trips cut at the agent's own log lines (wall clock, same host):
    publish -> `command.accepted` (broker, paho/aiomqtt, parse, checks, signature, ledger
    fsync), -> `command.finished` (the ping itself, ledger fsync, replies queued), -> final
    reply received (outbox drain, publish, broker, our paho)."""
    marks: dict[str, dict[str, float]] = {}
    for line in agent_log.splitlines():
        if '"command.' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") in ("command.accepted", "command.finished"):
            ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
            marks.setdefault("agent:" + doc["command_id"], {})[doc["event"]] = ts
    inbound, work, outbound = [], [], []
    for key in keys:
        m = marks.get(key, {})
        sent, got = driver.sent_wall.get(key), driver.arrived_wall.get(key)
        if sent is None or got is None or len(m) != 2:
            continue
        inbound.append(1000 * (m["command.accepted"] - sent))
        work.append(1000 * (m["command.finished"] - m["command.accepted"]))
        outbound.append(1000 * (got - m["command.finished"]))
    return {
        "n": len(inbound),
        "publish_to_accepted": common.summary(inbound),
        "accepted_to_finished": common.summary(work),
        "finished_to_reply_received": common.summary(outbound),
    }


def _where(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func
    if "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    elif filename.startswith(str(common.ROOT)):
        filename = filename[len(str(common.ROOT)) + 1:]
    elif "/lib/python3" in filename:
        filename = "stdlib/" + filename.split("/lib/python3", 1)[1].split("/", 1)[1]
    return f"{filename}:{line}({func})"


def round_trips(driver: Driver, topic: str, name: str, chunk: list[tuple[str, bytes]],
                timeout: float) -> tuple[list[float], int]:
    """Publish `chunk` back to back; wait for every answer; latencies from each publish."""
    sent: list[tuple[str, float, threading.Event]] = []
    for ident, payload in chunk:
        key = f"{name}:{ident}"
        ev = driver.expect(key)
        driver.sent_wall[key] = time.time()
        t0 = time.perf_counter()
        driver.publish(topic, payload)
        sent.append((key, t0, ev))
    got, missing = [], 0
    for key, t0, ev in sent:
        if ev.wait(timeout):
            got.append(driver.arrived[key] - t0)
        else:
            missing += 1
    return got, missing


def echo_main(port: int) -> int:
    """The bare MQTT echo: every message on ECHO_REQ goes back on ECHO_REP, QoS 1."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)

    def on_connect(c: Any, *_: Any) -> None:
        c.subscribe(ECHO_REQ, 1)

    def on_subscribe(*_: Any) -> None:
        print("ready", flush=True)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        c.publish(ECHO_REP, msg.payload, 1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port, 30)
    client.loop_forever()
    return 0


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(result["variants"])
    fig, axes = plt.subplots(len(variants), 2, figsize=(11, 4 * len(variants)), sharex=True,
                             squeeze=False)
    for row, variant in enumerate(variants):
        for col, mode in enumerate(("sequential", "burst")):
            ax = axes[row][col]
            m = result["variants"][variant][mode]
            for name, color in (("agent", "tab:blue"), ("echo", "tab:grey")):
                xs = sorted(m[f"samples_{name}_ms"])
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                p50, p99 = m[f"{name}_ms"]["p50"], m[f"{name}_ms"]["p99"]
                ax.step(xs, ys, where="post", color=color,
                        label=f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            ax.axvline(P99_TARGET_MS, color="red", linestyle="--", label="p99 target 10 ms")
            ax.set_xscale("log")
            how = ("one at a time" if mode == "sequential"
                   else f"bursts of {result['params']['burst']}")
            ax.set_title(f"{variant}: {how}, n={m['agent_ms']['n']} each", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, loc="lower right")
            if col == 0:
                ax.set_ylabel("fraction of round trips")
            if row == len(variants) - 1:
                ax.set_xlabel("round trip, ms (log)")
    fig.suptitle("signed ping -> final reply (agent) vs bare MQTT echo, QoS 1, same broker")
    fig.tight_layout()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / "roundtrip_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(common.ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
