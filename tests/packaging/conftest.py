"""Shared by the packaging tests: one real build of the .deb and its wheelhouse per session
and architecture, and the CPythons 3.10 to 3.13 this machine has.

`packaging/build-deb.sh` runs once per architecture (wheels from the configured index for every
supported Python, checked, then dpkg-deb); the .deb tests read and unpack what it made, the
install.sh tests build a virtualenv from the same wheelhouse, and the .rpm is built from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"


def find_python(minor: str) -> str | None:
    """An interpreter of that CPython minor: pyenv's newest, else the system's pythonX.Y."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(versions.glob(f"{minor}.*"), reverse=True):
        if (candidate / "bin/python3").exists() and candidate.name.count(".") == 2:
            return str(candidate / "bin/python3")
    system = Path(f"/usr/bin/python{minor}")
    return str(system) if system.exists() else None


# The minors the wheelhouse serves (packaging/wheelhouse.py PYTHONS).
PYTHONS = {minor: find_python(minor) for minor in ("3.10", "3.11", "3.12", "3.13")}


@dataclass(frozen=True)
class Build:
    deb: Path
    wheelhouse: Path
    seconds: float
    output: str


def build_deb(out: Path, *args: str) -> Build:
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the .deb cannot be built here")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system /usr/bin/python3 to run the build with")
    started = time.monotonic()
    r = subprocess.run(
        [str(PACKAGING / "build-deb.sh"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.monotonic() - started
    assert r.returncode == 0, f"build-deb.sh failed:\n{r.stdout}\n{r.stderr}"
    debs = sorted(out.glob("edge-agent_*.deb"))
    assert len(debs) == 1, f"expected one .deb in {out}: {debs}"
    return Build(debs[0], out / "wheelhouse", seconds, r.stdout)


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The package for this machine's architecture."""
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def build_arm64(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The arm64 package, built here (an amd64 machine) from arm64 wheels."""
    return build_deb(tmp_path_factory.mktemp("deb-arm64"), "--arch", "arm64")
