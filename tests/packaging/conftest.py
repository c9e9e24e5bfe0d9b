"""Shared by the packaging tests: one real build of the .deb and its wheelhouse per session.

`packaging/build-deb.sh` runs once (wheels from the configured index, then the staged and
relocated virtualenv, then dpkg-deb); the .deb tests install what it made, and the install.sh
tests build a virtualenv from the same wheelhouse, as an Agent Mode host or an image would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"


@dataclass(frozen=True)
class Build:
    deb: Path
    wheelhouse: Path
    seconds: float
    output: str


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the .deb cannot be built here")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system /usr/bin/python3 to build the package's virtualenv with")
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    r = subprocess.run(
        [str(PACKAGING / "build-deb.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.monotonic() - started
    assert r.returncode == 0, f"build-deb.sh failed:\n{r.stdout}\n{r.stderr}"
    debs = sorted(out.glob("edge-agent_*.deb"))
    assert len(debs) == 1, f"expected one .deb in {out}: {debs}"
    return Build(debs[0], out / "wheelhouse", seconds, r.stdout)
