"""``config.files``: unreadable token and key files are a failing check, with the remedy."""

from __future__ import annotations

from pathlib import Path

from agent.core.checks import CheckStatus
from tests.checks.helpers import config, context, one


async def test_names_each_missing_or_unreadable_file_and_passes_once_they_exist(
    tmp_path: Path,
) -> None:
    token, key = tmp_path / "registration-token", tmp_path / "signing.pub"
    cfg = config(
        tmp_path,
        tmp_path / "host",
        controller={"url": "https://c.example", "registration_token_file": str(token)},
        mqtt={"url": "mqtt://b"},
        commands={"public_key_file": str(key)},
    )
    r = await one(context(cfg), "config.files")
    assert r.status is CheckStatus.FAIL
    assert r.message == (
        f"controller.registration_token_file {token}: No such file or directory; "
        f"commands.public_key_file {key}: No such file or directory"
    )
    assert "registration token" in r.remedy
    token.write_text("t0ken")
    key.write_text("key")
    r = await one(context(cfg), "config.files")
    assert r.status is CheckStatus.PASS and r.message == "2 configured files are readable"
    assert r.details["files"] == {
        "controller.registration_token_file": str(token),
        "commands.public_key_file": str(key),
    }


async def test_a_directory_where_a_file_belongs_fails(tmp_path: Path) -> None:
    # The agent runs as root, which reads any file whatever its mode; a directory it cannot.
    password = tmp_path / "mqtt-password"
    password.mkdir()
    cfg = config(
        tmp_path,
        tmp_path / "host",
        mqtt={"url": "mqtt://b", "password_file": str(password)},
        commands={"allow_unsigned": True},
    )
    r = await one(context(cfg), "config.files")
    assert r.status is CheckStatus.FAIL
    assert r.message == f"mqtt.password_file {password}: Is a directory"


async def test_without_secret_files_there_is_nothing_to_fail(tmp_path: Path) -> None:
    r = await one(context(config(tmp_path, tmp_path / "host")), "config.files")
    assert r.status is CheckStatus.PASS and r.message == "0 configured files are readable"
