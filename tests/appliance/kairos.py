"""Kairos's immutable layout, as systemd-nspawn arguments read from the shipped user-data.

On a Kairos host the root is read-only, ``/etc``, ``/var`` and ``/srv`` are overlays whose
upper layer lives in memory, and only some paths persist, bind-mounted from the persistent
partition: Kairos's own defaults (the ones that matter here are listed below) and the
user-data's ``install.bind_mounts``. The bind list is read from
``packaging/kairos/user-data.example.yaml`` itself, so the file and the suite cannot drift.
Like immucore, a persistent directory that does not exist yet is first filled with the
image's own content at that path.

The ``initramfs`` stage's files are written, with their modes, into the ``/etc`` overlay's
upper layer before the boot: a fresh directory per boot, which is what an ``initramfs``
stage writing into the in-memory ``/etc`` amounts to. ``/var`` and ``/srv`` get nspawn's
temporary upper layers, gone at poweroff.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
USER_DATA = REPO / "packaging/kairos/user-data.example.yaml"
# Kairos's default persistent paths (its cos-layout) that nodeadm and the kubelet write.
KAIROS_PERSISTENT = (
    "/etc/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/etc/systemd",
    "/var/log",
    "/opt",
    "/root",
)
EPHEMERAL = ("/etc", "/var", "/srv")


def user_data() -> dict[str, Any]:
    doc = yaml.safe_load(USER_DATA.read_text())
    assert isinstance(doc, dict)
    return doc


def persistent_paths(doc: Mapping[str, Any]) -> list[str]:
    """Every path that survives a reboot: the user-data's binds, then Kairos's own."""
    binds = list(doc["install"]["bind_mounts"])
    return binds + [p for p in KAIROS_PERSISTENT if p not in binds]


def stage_files(doc: Mapping[str, Any], stage: str = "initramfs") -> dict[str, dict[str, Any]]:
    """The files a user-data stage writes, by path (``content``, ``permissions``)."""
    out: dict[str, dict[str, Any]] = {}
    for step in doc["stages"][stage]:
        for entry in step.get("files", []):
            out[entry["path"]] = entry
    return out


def prepare_persistent(persist: Path, image: Path, paths: list[str]) -> None:
    """Create each persistent directory, the first time from the image's content there."""
    for path in paths:
        target = persist / path.lstrip("/")
        if target.exists():
            continue
        source = image / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            subprocess.run(["cp", "-a", str(source), str(target)], check=True)
        else:
            target.mkdir()


def write_stage(upper_etc: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Write a stage's ``/etc`` files into the ``/etc`` overlay's upper layer."""
    for path, entry in files.items():
        if not path.startswith("/etc/"):
            raise ValueError(f"{path}: the suite only writes stage files under /etc")
        target = upper_etc / path.removeprefix("/etc/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"])
        mode = entry.get("permissions", 0o644)
        # YAML 1.1 (PyYAML, like Kairos's parser) reads 0600 as octal already.
        target.chmod(mode if isinstance(mode, int) else int(str(mode), 8))


def nspawn_args(persist: Path, paths: list[str], upper_etc: Path) -> list[str]:
    """The appliance boot: read-only image, in-memory overlays, persistent binds."""
    args = ["--read-only", "--private-network", f"--overlay=+/etc:{upper_etc}:/etc"]
    args += [f"--overlay=+{p}::{p}" for p in EPHEMERAL if p != "/etc"]
    args += [f"--bind={persist / p.lstrip('/')}:{p}" for p in paths]
    return args


def fresh_upper(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory
