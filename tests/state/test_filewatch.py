"""FileWatch (agent/state/filewatch.py), as the secrets struck from the log use it: a file
rewritten in place with a value of the same length inside one tick of the filesystem's
clock still reads as changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.secrets import Secrets
from agent.state.filewatch import RACY_NS, FileWatch


def same_tick_rewrite(path: Path, text: str) -> None:
    """Rewrite in place and give the file back its old stamp: same inode, size and mtime."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size) == (st.st_ino, st.st_size)


def test_a_same_stamp_rewrite_just_after_a_read_is_read_again(tmp_path: Path) -> None:
    password = tmp_path / "mqtt-password"
    password.write_text("broker-pass-1111aaaa\n")
    secrets = Secrets(None, password)
    assert secrets() == ["broker-pass-1111aaaa"]
    same_tick_rewrite(password, "broker-pass-2222bbbb\n")
    assert secrets() == ["broker-pass-2222bbbb"]


def test_a_settled_file_is_trusted_by_its_stamp_and_a_missing_one_keeps_the_last_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("registration-token-1\n")
    old = time.time_ns() - 2 * RACY_NS
    os.utime(path, ns=(old, old))
    watch = FileWatch(path)
    assert watch.changed()
    assert not watch.changed()  # settled: its stamp stands for its content
    secrets = Secrets(path)
    assert secrets() == ["registration-token-1"]
    path.unlink()  # a rotation by rename, half done
    assert secrets() == ["registration-token-1"]
    path.write_text("registration-token-2\n")
    assert secrets() == ["registration-token-2"]
