"""Print the targets of every result in benchmarks/results/ as a Markdown table, and the
machine they ran on. Reads only; runs nothing.

    /tmp/venv/bin/python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        print("no results yet: run benchmarks/run_all", file=sys.stderr)
        return 1
    machine = None
    print("| result | target | goal | measured | pass |")
    print("| --- | --- | --- | --- | --- |")
    for path in files:
        doc = json.loads(path.read_text())
        machine = machine or doc.get("machine")
        for name, t in doc.get("targets", {}).items():
            measured = t.get("measured")
            mark = "pass" if t.get("pass") else "**miss**"
            print(f"| {path.stem} | {name} | {t.get('target')} | {measured} | {mark} |")
    if machine:
        pk = machine.get("packages", {})
        print()
        print(f"{machine.get('nproc')} x {machine.get('cpu_model')}, {machine.get('ram_gib')} GiB, "
              f"kernel {machine.get('kernel')}, Python {machine.get('python')}, "
              f"aiomqtt {pk.get('aiomqtt')}, paho-mqtt {pk.get('paho-mqtt')}, "
              f"httpx {pk.get('httpx')}, {machine.get('mosquitto')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
