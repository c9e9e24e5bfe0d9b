"""Fixtures of the system suite: a pristine Debian 12 tree (built once, cached outside the
clone) and a per-module writable overlay of it. Everything here is skipped, with the reason,
where systemd-nspawn cannot boot a container at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.nspawn import Tree, cannot_boot_reason, rootfs


@pytest.fixture(scope="session")
def bookworm() -> Path:
    reason = cannot_boot_reason()
    if reason:
        pytest.skip(f"cannot boot a systemd container here: {reason}")
    return rootfs("bookworm")


@pytest.fixture(scope="module")
def tree(bookworm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with Tree(bookworm, tmp_path_factory.mktemp("tree")) as t:
        yield t
