"""Helper of footprint.py (not a benchmark): where does a running agent's memory go?

Run in a fresh interpreter with only the standard library's lightest modules loaded, it
imports in stages (the floor's dependencies, the agent's eager imports, its lazily imported
modules, the third-party modules httpx loads on its first request) and then runs an
in-process `Agent` to `joined`, reading its own RSS/PSS after each stage. It also sums the
size of the compiled bytecode (.pyc) of every module loaded beyond the floor, by package: code
objects are most of what an import costs. With ``--tracemalloc`` it snapshots the Python heap
once everything is imported and again when the agent has idled, and lists what grew in between
(the agent's runtime data) by line.

    python benchmarks/memprobe.py CONFIG OUT.json [--tracemalloc]
"""

from __future__ import annotations

import os
import sys
import time

T0 = time.monotonic()
# Exactly what common.FLOOR_IMPORTS names; repeated here so that this process imports nothing
# else before the first stage.
FLOOR = ("asyncio", "httpx", "aiomqtt", "structlog", "tenacity", "psutil", "yaml", "nacl.signing")
AGENT_EAGER = ("agent.cli", "agent.daemon")
# What a running agent imports after start (seen by running this probe with both lists empty
# and reading `loaded_at_runtime`): the checks on its first preflight, the broker link, the
# controller client, the nodeadm runner; and what httpx imports on its first request.
AGENT_LAZY = ("agent.checks.runner", "agent.link.mqtt", "agent.link.controller",
              "agent.host.nodeadm", "agent.host.packages", "agent.host.routes",
              "agent.core.nodeconfig", "agent.core.nodeadm_errors")
THIRD_PARTY_LAZY = ("httpcore", "httpcore._async.connection_pool", "httpcore._backends.auto",
                    "httpcore._backends.anyio", "anyio", "anyio._backends._asyncio",
                    "anyio.streams.tls", "h11", "certifi", "typing_extensions",
                    "concurrent.futures.thread")


def rss_pss() -> tuple[int, int]:
    out = {}
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        for line in f.read().splitlines()[1:]:
            key, _, rest = line.partition(":")
            parts = rest.split()
            out[key] = int(parts[0]) * 1024
    return out["Rss"], out["Pss"]


def main() -> int:
    config_path, out_path = sys.argv[1], sys.argv[2]
    traced = "--tracemalloc" in sys.argv
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    if traced:
        import tracemalloc

        tracemalloc.start(1)
    stages: list[dict[str, object]] = []

    def stage(name: str) -> None:
        rss, pss = rss_pss()
        stages.append({"stage": name, "rss": rss, "pss": pss, "modules": len(sys.modules)})

    stage("bare interpreter")
    for mod in FLOOR:
        __import__(mod)
    stage("+ floor imports (the agent's dependencies)")
    floor_modules = set(sys.modules)
    for mod in AGENT_EAGER:
        __import__(mod)
    stage("+ agent eager imports (agent.cli, agent.daemon)")
    for mod in AGENT_LAZY:
        __import__(mod)
    stage("+ agent lazy imports (checks, link, controller, nodeadm runner)")
    for mod in THIRD_PARTY_LAZY:
        __import__(mod)
    stage("+ what httpx loads on its first request (httpcore, anyio, h11, certifi)")
    preloaded = set(sys.modules)

    import asyncio
    import json
    from pathlib import Path

    from agent.configfile import load_config
    from agent.daemon import Agent

    cfg = load_config(Path(config_path), {})
    log_file = (Path(config_path).parent / "probe-agent.log").open("w")
    result: dict[str, object] = {}
    snap0 = None
    if traced:
        import tracemalloc

        snap0 = tracemalloc.take_snapshot()

    async def go() -> None:
        agent = Agent(cfg, stdout=log_file, env={})
        stage("+ Agent(config) constructed")
        task = asyncio.create_task(agent.run())
        deadline = time.monotonic() + 90
        while str(agent.driver.state.phase) != "joined":
            if time.monotonic() > deadline or task.done():
                raise RuntimeError(f"probe agent did not join: {agent.driver.state.phase}")
            await asyncio.sleep(0.1)
        stage("running, joined")
        await asyncio.sleep(15)
        stage("running, joined, 15 s idle")
        if traced:
            result["tracemalloc"] = growth(snap0, root)
        agent.request_stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(go())
    log_file.close()
    beyond = sorted(set(sys.modules) - floor_modules)
    result["stages"] = stages
    result["modules_floor"] = len(floor_modules)
    result["modules_beyond_floor"] = len(beyond)
    result["loaded_at_runtime"] = sorted(set(sys.modules) - preloaded)
    result["bytecode_beyond_floor_kib"] = bytecode_by_package(beyond)
    result["bytecode_floor_kib"] = bytecode_by_package(sorted(floor_modules))
    result["tracemalloc_on"] = traced
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 0


def bytecode_by_package(names: list[str]) -> dict[str, object]:
    """Size of each loaded module's .pyc, summed by top-level package (a proxy of the code
    objects it keeps in memory)."""
    import importlib.util

    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    for name in names:
        mod = sys.modules.get(name)
        src = getattr(mod, "__file__", None)
        if not src or not src.endswith(".py"):
            continue
        try:
            size = os.path.getsize(importlib.util.cache_from_source(src))
        except (OSError, NotImplementedError, ValueError):
            continue
        top = name.split(".")[0]
        if "/lib/python3" in src and "site-packages" not in src:
            top = "stdlib"
        sizes[top] = sizes.get(top, 0) + size
        counts[top] = counts.get(top, 0) + 1
    order = sorted(sizes, key=lambda k: -sizes[k])
    return {
        "total": round(sum(sizes.values()) / 1024, 1),
        "by_package": {k: {"kib": round(sizes[k] / 1024, 1), "modules": counts[k]} for k in order},
    }


def growth(snap0: object, root: str) -> dict[str, object]:
    import tracemalloc

    snap1 = tracemalloc.take_snapshot()
    assert isinstance(snap0, tracemalloc.Snapshot)
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    snap1 = snap1.filter_traces(flt)
    base = snap0.filter_traces(flt)
    diffs = snap1.compare_to(base, "lineno")
    total = sum(d.size_diff for d in diffs)

    def short(filename: str) -> str:
        if "site-packages/" in filename:
            return filename.split("site-packages/", 1)[1]
        if filename.startswith(root):
            return filename[len(root) + 1:]
        return "/".join(filename.split("/")[-2:])

    top = [
        {"where": f"{short(d.traceback[0].filename)}:{d.traceback[0].lineno}",
         "kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff}
        for d in diffs[:25]
    ]
    by_file: dict[str, int] = {}
    for d in diffs:
        f = short(d.traceback[0].filename)
        by_file[f] = by_file.get(f, 0) + d.size_diff
    files = sorted(by_file.items(), key=lambda kv: -kv[1])[:20]
    return {
        "python_heap_total_mb": round(sum(s.size for s in snap1.statistics("filename")) / 2**20, 2),
        "grew_while_running_kib": round(total / 1024, 1),
        "top_lines": top,
        "top_files_kib": {f: round(s / 1024, 1) for f, s in files},
    }


if __name__ == "__main__":
    sys.exit(main())
