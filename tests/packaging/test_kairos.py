"""The Kairos (Appliance Mode) files agree with the agent: packaging/kairos/*.

The user-data must persist exactly the agent's `checks.bind_mounts` default plus
/etc/sysctl.d (nodeadm's sysctl file) and its state directory, create /eks-hybrid in the rootfs, and write a config the agent's own parser accepts
in appliance mode, with every file that config names written by the same stage, privately.
The Dockerfile fragment must install under /usr/lib/edge-agent (never /opt), offline from the
hashed wheelhouse; the CanvOS .arg must select the nodeadm provider.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import __version__
from agent.commands.signature import load_public_key
from agent.core.config import EKS_BIND_MOUNTS, SUPPORTED_K8S, parse_config
from tests.packaging.conftest import PACKAGING, Build

KAIROS = PACKAGING / "kairos"
STATE_DIR = "/var/lib/edge-agent"
SYSCTL_D = "/etc/sysctl.d"


@pytest.fixture(scope="module")
def user_data() -> dict[str, Any]:
    text = (KAIROS / "user-data.example.yaml").read_text()
    assert text.startswith("#cloud-config\n"), "Kairos reads user-data only after #cloud-config"
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def stage_files(user_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every `files:` entry of every stage, by path."""
    out: dict[str, dict[str, Any]] = {}
    for steps in user_data["stages"].values():
        for step in steps:
            for entry in step.get("files", []):
                assert entry["path"] not in out, f"{entry['path']} written twice"
                out[entry["path"]] = entry
    return out


def test_bind_mounts_are_the_agents_paths_plus_sysctl_d_and_its_state_dir(
    user_data: dict[str, Any],
) -> None:
    mounts = user_data["install"]["bind_mounts"]
    assert len(mounts) == len(set(mounts)), "a bind mount is listed twice"
    assert STATE_DIR in mounts
    assert SYSCTL_D in mounts  # nodeadm's 99-nodeadm.conf must survive a reboot
    assert [m for m in mounts if m not in (STATE_DIR, SYSCTL_D)] == list(EKS_BIND_MOUNTS)


def test_eks_hybrid_is_created_in_the_rootfs(user_data: dict[str, Any]) -> None:
    assert "/eks-hybrid" in user_data["install"]["extra-dirs-rootfs"]


def test_stage_writes_an_appliance_config_the_agent_accepts(user_data: dict[str, Any]) -> None:
    files = stage_files(user_data)
    entry = files["/etc/edge-agent/config.yaml"]
    cfg = parse_config(yaml.safe_load(entry["content"]), readable=lambda p: True)
    assert cfg.host.mode == "appliance"
    assert cfg.controller is not None and cfg.controller.url.startswith("https://")
    assert cfg.mqtt is not None and cfg.mqtt.tls
    # The files the config names are written by the stage too.
    named = [cfg.controller.registration_token_file, cfg.commands.public_key_file]
    for path in named:
        assert path is not None and str(path) in files, f"{path} is not written by a stage"
    # The host name Palette registers is the agent's uid, so both identify the host alike.
    assert cfg.host.uid == user_data["stylus"]["site"]["name"]


def test_config_and_secrets_are_private(user_data: dict[str, Any]) -> None:
    for path, entry in stage_files(user_data).items():
        if path.startswith("/etc/edge-agent/"):
            # YAML 1.1 reads 0600 as octal, as yip does.
            assert entry["permissions"] == 0o600, path
            assert (entry.get("owner", 0), entry.get("group", 0)) == (0, 0), path


def test_example_public_key_is_an_ed25519_key_the_agent_loads(user_data: dict[str, Any]) -> None:
    pem = stage_files(user_data)["/etc/edge-agent/controller-signing.pub"]["content"]
    load_public_key(pem.encode())


def test_stage_runs_before_systemd_starts_the_agent(user_data: dict[str, Any]) -> None:
    # initramfs (or rootfs) stages run before any unit; boot/network would race the agent.
    writer = [
        name
        for name, steps in user_data["stages"].items()
        if any(
            "/etc/edge-agent/config.yaml" in [f["path"] for f in s.get("files", [])] for s in steps
        )
    ]
    assert writer and set(writer) <= {"rootfs", "initramfs", "initramfs.before", "initramfs.after"}


def dockerfile_instructions() -> list[str]:
    """The fragment's instructions, comments dropped and continuation lines joined."""
    text = (KAIROS / "Dockerfile.fragment").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_dockerfile_installs_under_usr_lib_never_opt() -> None:
    instructions = dockerfile_instructions()
    assert instructions, "the fragment has no instructions"
    body = "\n".join(instructions)
    assert "/opt" not in body and "/usr/local" not in body
    assert re.search(r"-m venv /usr/lib/edge-agent\b", body)
    assert "/usr/lib/systemd/system/edge-agent.service" in body
    assert "systemctl enable edge-agent" in body
    keywords = {i.split()[0] for i in instructions}
    assert keywords <= {"ARG", "RUN", "COPY", "ENV"}, keywords
    assert not any(i.startswith("FROM") for i in instructions), "a fragment, not a Dockerfile"


def test_dockerfile_installs_offline_from_the_hashed_wheelhouse() -> None:
    body = "\n".join(dockerfile_instructions())
    for flag in ("--no-index", "--require-hashes", "--find-links /tmp/edge-agent"):
        assert flag in body, flag
    assert "requirements.txt" in body
    assert re.search(r"python3(\.\d+)?-venv|python3\.1\d", body)


def arg_file() -> dict[str, str]:
    values = {}
    for line in (KAIROS / "edgeforge.arg.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def test_arg_file_selects_nodeadm_and_a_supported_version() -> None:
    args = arg_file()
    assert args["K8S_DISTRIBUTION"] == "nodeadm"
    for key in (
        "OS_DISTRIBUTION",
        "OS_VERSION",
        "IMAGE_REGISTRY",
        "IMAGE_REPO",
        "CUSTOM_TAG",
        "ARCH",
    ):
        assert args.get(key), key
    minor = ".".join(args["K8S_VERSION"].split(".")[:2])
    assert minor in SUPPORTED_K8S


def test_dockerfile_run_steps_are_shellcheck_clean(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    script = tmp_path / "runs.sh"
    runs = [i.removeprefix("RUN ") for i in dockerfile_instructions() if i.startswith("RUN ")]
    script.write_text("\n".join(runs) + "\n")
    r = subprocess.run(
        ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout


@pytest.mark.slow
def test_dockerfile_install_steps_run_against_the_wheelhouse(build: Build, tmp_path: Path) -> None:
    """The fragment's RUN steps after the package install, run for real with every absolute
    path moved under a throwaway root (the venv is built where it then runs, as in the image)."""
    python = shutil.which("python3.11")
    if python is None:
        pytest.skip("no python3.11 on this machine to stand in for the image's interpreter")
    root = tmp_path / "image"
    for d in ("usr/lib/systemd/system", "usr/bin", "etc", "var/lib"):
        (root / d).mkdir(parents=True)
    context = tmp_path / "context"
    shutil.copytree(build.wheelhouse, context)
    runs = [i.removeprefix("RUN ") for i in dockerfile_instructions() if i.startswith("RUN ")]
    body = "\n".join(runs[1:])  # runs[0] installs the distribution's python packages
    body = body.replace(" /tmp/edge-agent", f" {context}")
    for path in ("/usr/lib/edge-agent", "/usr/lib/systemd/system", "/usr/bin/edge-agent",
                 "/etc/edge-agent", "/var/lib/edge-agent"):  # fmt: skip
        body = body.replace(f" {path}", f" {root}{path}")
    body = body.replace("systemctl enable", f"systemctl --root={root} enable")
    if shutil.which("systemctl") is None:
        body = body.replace(f"systemctl --root={root} enable edge-agent.service", "true")
    env = {"PATH": os.environ["PATH"], "EDGE_AGENT_PYTHON": python, "HOME": str(tmp_path)}
    r = subprocess.run(
        ["sh", "-c", body], capture_output=True, text=True, timeout=240, check=False, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"edge-agent {__version__}" in r.stdout
    venv = root / "usr/lib/edge-agent"
    assert not (venv / "bin/pip").exists(), "pip is build-time only"
    assert any((venv / "lib").glob("python3.11/site-packages/agent/__pycache__/*.pyc"))
    assert os.readlink(root / "usr/bin/edge-agent") == "../lib/edge-agent/bin/edge-agent"
    unit = root / "usr/lib/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (build.wheelhouse / "edge-agent.service").read_bytes()
    assert stat.S_IMODE((root / "var/lib/edge-agent").stat().st_mode) == 0o700
    assert not context.exists(), "the wheelhouse is removed from the image"
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").is_symlink()
