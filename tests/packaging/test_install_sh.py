"""packaging/install.sh (Agent Mode) run for real against throwaway roots (--root DIR --no-start).

Config-only runs use --skip-package; their root gets a stand-in for the installed venv's python
(this test run's own interpreter, which imports the agent), so install.sh validates the config
with the agent's parser exactly as on a host. One test builds the real venv from the wheelhouse
the .deb build made. Also: shellcheck over every script in packaging/, and the refusals (not
root, no systemd, bad options).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from agent import __version__
from agent.configfile import load_config
from agent.core.config import Config
from devtools.signer import CommandSigner
from tests.packaging.conftest import PACKAGING, Build

INSTALL = PACKAGING / "install.sh"
TOKEN = "tok-3f9c1e0a5b7d4c2e8f6a"  # unique enough to be found in any output
URL = "https://controller.example.com"


def scripts() -> list[Path]:
    """Every shell script under packaging/ (by its #! line)."""
    found = []
    for path in sorted(PACKAGING.rglob("*")):
        if path.is_file() and path.suffix != ".md":
            first = path.read_bytes()[:64].split(b"\n", 1)[0]
            if first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1]):
                found.append(path)
    return found


def test_every_script_is_shellcheck_clean_and_says_what_it_is_for() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    found = scripts()
    names = {p.relative_to(PACKAGING).as_posix() for p in found}
    assert {"build-deb.sh", "install.sh", "deb/postinst", "deb/prerm", "deb/postrm"} <= names
    r = subprocess.run(
        ["shellcheck", *map(str, found)], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for path in found:
        header = path.read_text().splitlines()[1]
        assert header.startswith("# ") and len(header) > 20, f"{path}: no header comment"
        assert os.access(path, os.X_OK), f"{path} is not executable"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(extra)
    return env


def install(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--no-start", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env or clean_env(),
        stdin=subprocess.DEVNULL,
    )


def fake_venv_python(root: Path) -> None:
    """Stand in for <root>/usr/lib/edge-agent/bin/python: this run's interpreter, agent inside."""
    python = root / "usr/lib/edge-agent/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("install.sh refuses to run without root")
    r = tmp_path / "root"
    r.mkdir()
    fake_venv_python(r)
    return r


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    return CommandSigner.generate().write_public_key(tmp_path / "signing.pub")


def load(root: Path) -> Config:
    """The written config as the agent reads it, file paths taken under `root`."""
    return load_config(
        root / "etc/edge-agent/config.yaml",
        {},
        readable=lambda p: (root / str(p).lstrip("/")).exists(),
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    etc = root / "etc/edge-agent"
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_mode) for p in etc.iterdir()
    }


def full_args(public_key: Path, url: str = URL) -> list[str]:
    return [
        "--skip-package",
        "--controller-url",
        url,
        "--broker-url",
        "mqtts://broker.example.com:8883",
        "--public-key",
        str(public_key),
        "--uid",
        "edge-store-7",
    ]


def test_writes_config_token_and_key_with_private_modes(root: Path, public_key: Path) -> None:
    r = install(root, *full_args(public_key), env=clean_env(EDGE_REGISTRATION_TOKEN=TOKEN))
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stdout + r.stderr
    etc = root / "etc/edge-agent"
    assert (etc / "registration-token").read_text() == TOKEN + "\n"
    assert mode(etc / "registration-token") == 0o600
    assert mode(etc / "config.yaml") == 0o600
    assert mode(etc / "controller-signing.pub") == 0o644
    assert mode(root / "var/lib/edge-agent") == 0o700
    assert TOKEN not in (etc / "config.yaml").read_text()
    assert "is valid" in r.stdout
    cfg = load(root)
    assert cfg.host.mode == "agent" and cfg.host.uid == "edge-store-7"
    assert cfg.controller is not None and cfg.controller.url == URL
    assert str(cfg.controller.registration_token_file) == "/etc/edge-agent/registration-token"
    assert cfg.mqtt is not None and (cfg.mqtt.host, cfg.mqtt.port) == ("broker.example.com", 8883)
    assert str(cfg.commands.public_key_file) == "/etc/edge-agent/controller-signing.pub"
    assert not list(etc.glob(".install.*")), "scratch files left behind"


def test_flags_and_environment_are_alternatives(root: Path) -> None:
    env = clean_env(EDGE_CONTROLLER_URL=URL, EDGE_REGISTRATION_TOKEN=TOKEN)
    r = install(root, "--skip-package", "--mode", "appliance", env=env)
    assert r.returncode == 0, r.stderr
    cfg = load(root)
    assert cfg.host.mode == "appliance" and cfg.controller is not None
    assert cfg.mqtt is None
    token_file = root.parent / "token"
    token_file.write_text(TOKEN + "\n")
    other = root.parent / "other"
    other.mkdir()
    fake_venv_python(other)
    r = install(other, "--skip-package", "--controller-url", URL, "--token-file", str(token_file))
    assert r.returncode == 0, r.stderr
    assert (other / "etc/edge-agent/registration-token").read_text() == TOKEN + "\n"


def test_second_run_changes_nothing_and_says_so(root: Path, public_key: Path) -> None:
    args = [*full_args(public_key), "--token", TOKEN]
    first = install(root, *args)
    assert first.returncode == 0, first.stderr
    before = snapshot(root)
    second = install(root, *args)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().endswith("edge-agent: nothing changed"), second.stdout
    assert snapshot(root) == before
    assert TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr


def test_existing_config_is_kept_unless_forced(root: Path, public_key: Path) -> None:
    assert install(root, *full_args(public_key), "--token", TOKEN).returncode == 0
    config = root / "etc/edge-agent/config.yaml"
    original = config.read_text()
    other = "https://other-controller.example.com"
    r = install(root, *full_args(public_key, other), "--token", TOKEN)
    assert r.returncode == 0, r.stderr
    assert "kept the existing" in r.stdout and "--force-config" in r.stdout
    assert config.read_text() == original
    r = install(root, *full_args(public_key, other), "--token", TOKEN, "--force-config")
    assert r.returncode == 0, r.stderr
    cfg = load(root)
    assert cfg.controller is not None and cfg.controller.url == other
    assert (root / "etc/edge-agent/config.yaml.bak").read_text() == original
    assert mode(config) == 0o600 and mode(root / "etc/edge-agent/config.yaml.bak") == 0o600


def test_token_is_rotated_when_a_new_one_is_given(root: Path) -> None:
    assert (
        install(root, "--skip-package", "--controller-url", URL, "--token", TOKEN).returncode == 0
    )
    r = install(root, "--skip-package", "--controller-url", URL, "--token", TOKEN + "-new")
    assert r.returncode == 0, r.stderr
    assert (root / "etc/edge-agent/registration-token").read_text() == TOKEN + "-new\n"
    assert "registration-token" in r.stdout and TOKEN not in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "bogus"], "--mode must be agent or appliance, got 'bogus'"),
        (["--controller-url", "ftp://x"], "--controller-url must be an http:// or https:// URL"),
        (["--broker-url", "mqtts://b.example.com"], "--broker-url needs --public-key"),
        (["--deb", "/nonexistent.deb", "--skip-package"], "exactly one of"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
    ],
)
def test_bad_options_are_refused_clearly_and_write_nothing(
    root: Path, args: list[str], message: str
) -> None:
    base = ["--controller-url", URL, "--token", TOKEN]
    if "--deb" not in args:
        base.insert(0, "--skip-package")
    r = install(root, *base, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert TOKEN not in r.stdout + r.stderr
    assert not (root / "etc").exists()


def test_invalid_config_is_refused_naming_the_key(root: Path, tmp_path: Path) -> None:
    r = install(
        root, "--skip-package", "--controller-url", URL, "--token", TOKEN, "--uid", "u" * 200
    )
    assert r.returncode == 1
    assert "host.uid: must be 1-128 characters" in r.stderr
    assert not (root / "etc/edge-agent/config.yaml").exists()
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    r = install(
        root,
        "--skip-package",
        "--controller-url",
        URL,
        "--token",
        TOKEN,
        "--public-key",
        str(bad_key),
    )
    assert r.returncode == 1
    assert "commands.public_key_file" in r.stderr
    assert not (root / "etc/edge-agent/config.yaml").exists()


def test_no_token_and_no_config_is_refused(root: Path) -> None:
    r = install(root, "--skip-package", "--controller-url", URL)
    assert r.returncode == 1 and "no registration token" in r.stderr
    r = install(root, "--skip-package", "--token", TOKEN)
    assert r.returncode == 1 and "--controller-url" in r.stderr


def test_refuses_without_root(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs setpriv and root to drop to an unprivileged user")
    # A copy nobody can read: tmp_path is private to root.
    shared = Path(tempfile.mkdtemp(prefix="edge-agent-install-"))
    try:
        shared.chmod(0o755)
        script = shared / "install.sh"
        shutil.copy(INSTALL, script)
        script.chmod(0o755)
        r = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(script),
             "--skip-package", "--no-start", "--root", str(shared), "--controller-url", URL],
            capture_output=True, text=True, timeout=60, check=False,
            env=clean_env(EDGE_REGISTRATION_TOKEN=TOKEN), stdin=subprocess.DEVNULL, cwd=shared,
        )  # fmt: skip
        assert r.returncode == 1, r.stdout + r.stderr
        assert "must run as root" in r.stderr
        assert TOKEN not in r.stdout + r.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["install.sh"]
    finally:
        shutil.rmtree(shared)


def test_refuses_to_start_without_systemd(root: Path) -> None:
    if Path("/run/systemd/system").exists():
        pytest.skip("systemd is PID 1 here; the refusal is for hosts without it")
    r = subprocess.run(
        [str(INSTALL), "--root", str(root), "--skip-package", "--controller-url", URL,
         "--token", TOKEN],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 1
    assert "systemd is not running as PID 1" in r.stderr and "--no-start" in r.stderr
    assert not (root / "etc").exists()


@pytest.mark.slow
def test_wheelhouse_builds_a_relocated_venv_and_enables_the_unit(
    build: Build, tmp_path: Path, public_key: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("install.sh refuses to run without root")
    root = tmp_path / "image"
    root.mkdir()
    args = [*full_args(public_key), "--token", TOKEN]
    args[0] = "--wheelhouse"
    args.insert(1, str(build.wheelhouse))
    # An operator's own bytecode cache does not take the image's .pyc files away from it.
    r = install(root, *args, env=clean_env(PYTHONPYCACHEPREFIX=str(tmp_path / "pycache")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built virtualenv /usr/lib/edge-agent" in r.stdout and "is valid" in r.stdout
    venv = root / "usr/lib/edge-agent"
    # Built for its final path: nothing in it names the throwaway root.
    leftovers = subprocess.run(
        ["grep", "-rlF", str(root), str(venv)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""
    # ...and byte-compiled for it, the modules install.sh's config check imports too: under
    # ProtectSystem=strict the agent cannot write its .pyc files itself.
    (pyc,) = venv.glob("lib/python3.*/site-packages/agent/__pycache__/configfile.*.pyc")
    assert b"/usr/lib/edge-agent/lib/python3." in pyc.read_bytes()
    assert (venv / "bin/edge-agent").read_text().startswith("#!/usr/lib/edge-agent/bin/python\n")
    assert os.readlink(root / "usr/bin/edge-agent") == "../lib/edge-agent/bin/edge-agent"
    unit = root / "usr/lib/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (build.wheelhouse / "edge-agent.service").read_bytes()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
        assert wants.is_symlink()
    assert not (venv / "bin/pip").exists(), "pip is build-time only"
    version = subprocess.run(
        [str(venv / "bin/python"), "-I", "-m", "agent", "version"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert version.stdout.strip() == f"edge-agent {__version__}", version.stderr
    again = install(root, *args)
    assert again.returncode == 0, again.stderr
    assert "virtualenv /usr/lib/edge-agent is up to date" in again.stdout
    assert again.stdout.strip().endswith("nothing changed"), again.stdout
    assert (
        yaml.safe_load((root / "etc/edge-agent/config.yaml").read_text())["host"]["mode"] == "agent"
    )
