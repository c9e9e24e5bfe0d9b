"""Fixtures of the system suite: a pristine Debian 12 tree (built once, cached outside the
clone) and a per-module writable overlay of it. Everything here is skipped, with the reason,
where systemd-nspawn cannot boot a container at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.system.agent_host import AgentHost
from tests.system.nspawn import Machine, Tree, boot_failure, cannot_boot_reason, rootfs
from tests.system.package import deb


@pytest.fixture(scope="session")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = cannot_boot_reason()
    if reason:
        pytest.skip(f"cannot boot a systemd container here: {reason}")
    tree = rootfs("bookworm")
    failure = boot_failure(tree, tmp_path_factory.mktemp("probe"))
    if failure:
        pytest.skip(f"systemd-nspawn cannot boot Debian 12 here: {failure}")
    return tree


@pytest.fixture(scope="module")
def tree(bookworm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    with Tree(bookworm, tmp_path_factory.mktemp("tree")) as t:
        yield t


@pytest.fixture(scope="session")
def agent_deb(bookworm: Path) -> Path:
    """The package built from this tree by packaging/build-deb.sh (cached by content)."""
    return deb(ROOT)


@pytest.fixture
def agent_host(bookworm: Path, agent_deb: Path, tmp_path: Path) -> Iterator[AgentHost]:
    """A fresh Debian 12 booted with the package installed (not yet configured)."""
    with Tree(bookworm, tmp_path / "tree") as t, Machine.boot(t.root, tmp_path / "machine") as m:
        host = AgentHost(m, agent_deb)
        host.install()
        yield host
