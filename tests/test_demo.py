"""The README's main-job command: the demo runs end to end and says what it simulated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_brings_the_host_to_joined_and_stops_cleanly() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "devtools.demo", "--delay", "0.02"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    for phase in ("registering", "preflight", "installing", "joining", "joined"):
        assert f"-> {phase}" in out
    assert "nodeadm install Installing kubelet..." in out
    assert "ping result   {'pong': True" in out
    assert "rejected bad_signature" in out
    assert "availability  offline" in out and "agent exited with 0" in out
    assert "stand-ins" in out
