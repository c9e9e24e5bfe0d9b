"""The .deb (and the wheelhouse next to it) built by packaging/build-deb.sh, cached by content.

The system suite installs it; tests/packaging reads it. The key is a hash of every file that
goes into the package (the agent's sources, the project metadata, the unit, the maintainer
scripts and the build script itself) and the architecture, so an edit to any of them builds a
new package and an unrelated edit (a test) reuses the cached one: one build per content, not
one per suite. The cache lives next to the root filesystems (``nspawn.CACHE``/deb/<key>/); a
build goes to a temporary directory first and is renamed into place, so a killed build leaves
nothing behind. Tests read what is cached and never change it (they copy before they alter).
Each use marks its entry; a new build removes the entries nobody used for a week (each is a
.deb and a wheelhouse, about 40 MB).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.system.nspawn import CACHE, _locked

# What packaging/build-deb.sh reads from the repository.
INPUTS = (
    "agent",
    "pyproject.toml",
    "README.md",
    "config.example.yaml",
    "systemd/edge-agent.service",
    "packaging/build-deb.sh",
    "packaging/install.sh",
    "packaging/deb",
    "packaging/build-venv.sh",
    "packaging/wheelhouse.py",
)


def content_key(repo: Path, arch: str | None = None) -> str:
    h = hashlib.sha256(b"with-wheelhouse\0")  # older entries kept only the .deb
    if arch is not None:
        h.update(f"arch={arch}\0".encode())
    for rel in INPUTS:
        path = repo / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(repo)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
            h.update(b"x" if os.access(f, os.X_OK) else b"-")
    return h.hexdigest()[:16]


def _build_env() -> dict[str, str]:
    # A PYTHONPATH naming this checkout makes pip think the project is already installed in
    # the staged venv (it then leaves out bin/edge-agent); a caller's venv must not leak in.
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop}


def deb(repo: Path, cache: Path = CACHE, arch: str | None = None) -> Path:
    """The package for the tree at ``repo``, built once per content; its wheelhouse is
    ``wheelhouse/`` next to it. ``arch``: build-deb.sh's --arch (default: this machine's)."""
    final = cache / "deb" / content_key(repo, arch)
    found = sorted(final.glob("edge-agent_*.deb"))
    if found:
        with contextlib.suppress(OSError):  # a non-root run may not mark a root's cache
            os.utime(final)  # in use: kept by prune()
        if found[0].exists():  # else pruned meanwhile: build it again below
            return found[0]
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        found = sorted(final.glob("edge-agent_*.deb"))
        if found:
            return found[0]
        build = Path(tempfile.mkdtemp(prefix=f".build-{final.name}.", dir=final.parent))
        arch_args = ["--arch", arch] if arch else []
        try:
            done = subprocess.run(
                [str(repo / "packaging/build-deb.sh"), "--out", str(build / "out"), *arch_args],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
                env=_build_env(),
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"packaging/build-deb.sh failed ({done.returncode}):\n{done.stderr[-3000:]}"
                )
            os.rename(build / "out", final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        prune(final.parent)
    return sorted(final.glob("edge-agent_*.deb"))[0]


UNUSED_FOR_S = 7 * 86400


def prune(debs: Path, unused_for_s: float = UNUSED_FOR_S, now: float | None = None) -> list[str]:
    """Removes the cached packages not used for ``unused_for_s``; returns the keys removed.
    Each under its build lock, taken without waiting: one being built or pruned elsewhere is
    skipped. A build in progress (``.build-*``) and the lock files are left alone."""
    cutoff = (time.time() if now is None else now) - unused_for_s
    removed = []
    for entry in sorted(debs.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            with (debs / f".{entry.name}.lock").open("a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                if not entry.is_dir() or entry.stat().st_mtime >= cutoff:
                    continue
                shutil.rmtree(entry)
                removed.append(entry.name)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed
