"""`commands.public_key_file` is watched: a key rotated in place takes effect at the next
command, without a reload; a replacement that is not a usable key refuses everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.commands.signature import BadPublicKey, KeyFile

MESSAGE = b"canonical command bytes"


def pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def age(path: Path, seconds: float) -> None:
    """Backdate the file, as if written a while ago (no racy-stamp re-read then)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


@pytest.fixture
def keys() -> tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey]:
    return ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()


def test_a_key_overwritten_in_place_is_used_at_the_next_verify(
    tmp_path: Path, keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey]
) -> None:
    old, new = keys
    path = tmp_path / "ctl.pub"
    path.write_bytes(pem(old))
    seen: list[tuple[str | None, str | None]] = []
    kf = KeyFile(path, on_change=lambda fp, err: seen.append((fp, err)))
    assert kf.verify(MESSAGE, old.sign(MESSAGE))
    inode = path.stat().st_ino
    path.write_bytes(pem(new))  # same inode, same size: only the content and mtime differ
    assert path.stat().st_ino == inode
    assert not kf.verify(MESSAGE, old.sign(MESSAGE))
    assert kf.verify(MESSAGE, new.sign(MESSAGE))
    assert [err for _, err in seen] == [None]
    assert seen[0][0] == kf.fingerprint


def test_same_size_rewrite_within_one_clock_tick_is_still_seen(
    tmp_path: Path, keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey]
) -> None:
    old, new = keys
    path = tmp_path / "ctl.pub"
    path.write_bytes(pem(old))
    stamp = path.stat().st_mtime_ns
    kf = KeyFile(path)
    path.write_bytes(pem(new))
    # Force the worst case: the filesystem clock did not move between the two writes.
    os.utime(path, ns=(stamp, stamp))
    assert kf.verify(MESSAGE, new.sign(MESSAGE))
    assert not kf.verify(MESSAGE, old.sign(MESSAGE))


def test_a_settled_file_is_not_read_again_while_its_stamp_holds(
    tmp_path: Path, keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey]
) -> None:
    """The stat is the cost per command, not a read: shown by changing the content behind
    an unchanged (old) stamp, which only a re-read would notice."""
    old, new = keys
    path = tmp_path / "ctl.pub"
    path.write_bytes(pem(old))
    age(path, 60)
    kf = KeyFile(path)
    st = path.stat()
    path.write_bytes(pem(new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert kf.verify(MESSAGE, old.sign(MESSAGE))
    assert not kf.verify(MESSAGE, new.sign(MESSAGE))


def test_a_broken_replacement_fails_closed_until_fixed(
    tmp_path: Path, keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PrivateKey]
) -> None:
    old, new = keys
    path = tmp_path / "ctl.pub"
    path.write_bytes(pem(old))
    seen: list[str | None] = []
    kf = KeyFile(path, on_change=lambda _fp, err: seen.append(err))
    path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert not kf.verify(MESSAGE, old.sign(MESSAGE))
    assert kf.error is not None and "PRIVATE KEY" in kf.error
    path.unlink()
    assert not kf.verify(MESSAGE, old.sign(MESSAGE))
    assert kf.error is not None and "cannot read" in kf.error
    path.write_bytes(pem(new))
    assert kf.verify(MESSAGE, new.sign(MESSAGE))
    assert kf.error is None
    assert seen[0] is not None and "PRIVATE KEY" in seen[0]
    assert seen[-1] is None


def test_an_unusable_key_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctl.pub"
    path.write_text("ssh-ed25519 AAAA me@host\n")
    with pytest.raises(BadPublicKey, match="OpenSSH"):
        KeyFile(path)
