"""Host paths stay under the host root: `..`, absolute and relative links resolve inside it,
as in a chroot. Some of these paths come from the controller (IAM Roles Anywhere files)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from agent.host.hostroot import HostRoot


@pytest.fixture
def tree(tmp_path: Path) -> tuple[HostRoot, Path]:
    root = tmp_path / "host"
    (root / "etc" / "pki").mkdir(parents=True)
    (root / "etc" / "pki" / "node.crt").write_text("host cert")
    (root / "etc" / "passwd").write_text("host passwd")
    outside = tmp_path / "agent-secret"
    outside.write_text("the agent's own secret")
    return HostRoot(root), outside


def test_dot_dot_stops_at_the_host_root(tree: tuple[HostRoot, Path]) -> None:
    host, _ = tree
    assert host.path("/../../agent-secret") == host.root / "agent-secret"
    assert host.path("/etc/pki/../../../etc/passwd").read_text() == "host passwd"
    assert host.read_text("/../agent-secret") is None
    assert host.path("etc/./pki//node.crt").read_text() == "host cert"


def test_an_absolute_link_is_taken_inside_the_host_root(tree: tuple[HostRoot, Path]) -> None:
    host, outside = tree
    (host.root / "etc" / "pki" / "key.pem").symlink_to(outside)  # the host's path, not ours
    (host.root / "etc" / "pki" / "pw").symlink_to("/etc/passwd")
    assert host.path("/etc/pki/pw").read_text() == "host passwd"
    assert host.read_text("/etc/pki/key.pem") is None
    assert host.path("/etc/pki/key.pem") == host.root / outside.relative_to("/")


def test_a_relative_link_cannot_climb_out(tree: tuple[HostRoot, Path]) -> None:
    host, _ = tree
    (host.root / "etc" / "up").symlink_to("../../../..")
    assert host.path("/etc/up/agent-secret") == host.root / "agent-secret"
    (host.root / "etc" / "dir").symlink_to("pki")
    assert host.path("/etc/dir/node.crt").read_text() == "host cert"


def test_a_link_loop_is_eloop(tree: tuple[HostRoot, Path]) -> None:
    host, _ = tree
    (host.root / "a").symlink_to("/b")
    (host.root / "b").symlink_to("/a")
    with pytest.raises(OSError, match="symbolic links") as caught:
        host.path("/a/x")
    assert caught.value.errno == errno.ELOOP
