"""Shared by the packaging tests: one real build of the .deb and its wheelhouse per content of
the tree and architecture, and the CPythons 3.10 to 3.13 this machine has.

`packaging/build-deb.sh` runs once per architecture (wheels from the configured index for every
supported Python, checked, then dpkg-deb); the .deb tests read and unpack what it made, the
install.sh tests build a virtualenv from the same wheelhouse, and the .rpm is built from it.
The build is cached with the system suite's (tests/system/package.py): an unchanged package is
not built again, and a whole run builds it in the background before pytest starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.nspawn import CACHE
from tests.system.package import deb

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


def _cache() -> Path:
    """The system suite's cache; without root, /var/cache is not ours: a private one then."""
    if os.access(CACHE if CACHE.exists() else CACHE.parent, os.W_OK):
        return CACHE
    return Path(tempfile.gettempdir()) / f"edge-agent-tests-{os.getuid()}"


def cached_build(arch: str | None = None) -> Build:
    """build-deb.sh's output for this tree, built once per content and shared with the system
    suite (tests/system/package.py). Read it; copy before altering anything in it."""
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the .deb cannot be built here")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system /usr/bin/python3 to run the build with")
    package = deb(REPO, _cache(), arch)
    return Build(package, package.parent / "wheelhouse")


@pytest.fixture(scope="session")
def build() -> Build:
    """The package for this machine's architecture."""
    return cached_build()


@pytest.fixture(scope="session")
def build_arm64() -> Build:
    """The arm64 package, built here (an amd64 machine) from arm64 wheels."""
    return cached_build("arm64")
