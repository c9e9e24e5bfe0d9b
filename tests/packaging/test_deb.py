"""The .deb as built by packaging/build-deb.sh, read with dpkg-deb: its fields, its layout, and
the wheelhouse it carries, built into a venv by its own build-venv with every CPython from 3.10
to 3.13 on this machine, as postinst does on a host. Installing it under systemd is
test_install_systemd.py (never on this machine: dpkg -i belongs in a container).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from agent import __version__
from agent.core.config import ConfigError, parse_config
from tests.packaging.conftest import PYTHONS, REPO, Build

WHEELHOUSE = "./usr/share/edge-agent/wheelhouse"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "-f", deb, name).stdout.strip()


def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The data archive's members by path (./usr/...), read with dpkg-deb --fsys-tarfile."""
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, timeout=60, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name.rstrip("/") if m.name != "./" else ".": m for m in tar.getmembers()}


def test_build_is_named_by_version_and_arch_and_accepts_every_supported_python(
    build: Build, tmp_path: Path
) -> None:
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert build.deb.name == f"edge-agent_{__version__}_{arch}.deb"
    assert field(build.deb, "Package") == "edge-agent"
    assert field(build.deb, "Version") == __version__
    assert field(build.deb, "Architecture") == arch
    # Ubuntu 22.04's 3.10 up to Debian 13's 3.13: no pin on the build machine's minor.
    # and what the unit and the agent execute (tests/system/test_package.py checks each one).
    assert field(build.deb, "Depends") == (
        "python3 (>= 3.10), python3 (<< 3.14), systemd, procps, dbus | dbus-broker"
    )
    info = run("dpkg-deb", "--info", build.deb).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"\s{script}\b", info), f"{script} missing from the control archive"
    control = tmp_path / "DEBIAN"
    assert run("dpkg-deb", "--control", build.deb, control).returncode == 0
    assert (control / "conffiles").read_text().split() == ["/etc/edge-agent/config.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert (control / script).read_bytes() == (REPO / "packaging/deb" / script).read_bytes()
        assert os.access(control / script, os.X_OK)
    assert "/usr/libexec/edge-agent/build-venv" in (control / "postinst").read_text()


def test_contents_are_the_wheelhouse_and_its_builder_not_a_venv(build: Build) -> None:
    tree = members(build.deb)
    link = tree["./usr/bin/edge-agent"]
    assert link.issym() and link.linkname == "../lib/edge-agent/bin/edge-agent"
    builder = tree["./usr/libexec/edge-agent/build-venv"]
    assert builder.isfile() and builder.mode & 0o777 == 0o755
    shipped = sorted(n.rsplit("/", 1)[1] for n in tree if n.startswith(f"{WHEELHOUSE}/"))
    made = sorted(
        p.name
        for p in build.wheelhouse.iterdir()
        if p.suffix == ".whl" or p.suffix in (".txt", ".sha256")
    )
    assert shipped == made
    # The venv is the host's to build: nothing of it in the package.
    assert not [n for n in tree if n.startswith("./usr/lib/edge-agent")]
    assert (
        tree["./var/lib/edge-agent"].isdir() and tree["./var/lib/edge-agent"].mode & 0o777 == 0o700
    )
    assert tree["./etc/edge-agent/config.yaml"].mode & 0o777 == 0o600
    assert "./usr/share/doc/edge-agent/config.example.yaml" in tree
    assert not [n for n in tree if n == "./opt" or n.startswith(("./opt/", "./usr/local"))]
    assert all(m.uid == 0 and m.gid == 0 for m in tree.values()), "files must be root-owned"


@pytest.mark.parametrize("python", sorted(PYTHONS))
def test_shipped_wheelhouse_builds_a_working_venv_for_each_python(
    build: Build, tmp_path: Path, python: str
) -> None:
    """What postinst does on a host, with each CPython from 3.10 to 3.13 (pyenv's here)."""
    interpreter = PYTHONS[python]
    if interpreter is None:
        pytest.skip(f"no CPython {python} on this machine (pyenv install {python})")
    assert run("dpkg-deb", "-x", build.deb, tmp_path / "x").returncode == 0
    target = tmp_path / "usr/lib/edge-agent"
    r = run(tmp_path / "x/usr/libexec/edge-agent/build-venv", "--python", interpreter,
            "--wheelhouse", tmp_path / "x/usr/share/edge-agent/wheelhouse", "--target", target)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"built for Python {python}" in r.stdout
    r = run(target / "bin/edge-agent", "version")
    assert r.returncode == 0 and r.stdout.strip() == f"edge-agent {__version__}", r.stderr
    probe = "import sys, nacl.signing, yaml, cryptography.x509; print(sys.prefix, yaml.__with_libyaml__)"
    r = run(target / "bin/python", "-I", "-c", probe)
    assert r.stdout.split() == [str(target), "True"], r.stderr
    shebang = (target / "bin/edge-agent").read_text().splitlines()[0]
    assert shebang == f"#!{target}/bin/python"
    assert not (target / "bin/pip").exists(), "pip is install-time only"
    assert not list(tmp_path.glob("usr/lib/edge-agent.*")), "the .new or .old venv was left"
    assert list((target / "lib").glob("python3.*/site-packages/agent/__pycache__/cli.*.pyc"))


def test_build_venv_refuses_a_python_outside_3_10_to_3_13_and_a_swapped_pip(
    build: Build, tmp_path: Path
) -> None:
    old = Path("/root/.pyenv/versions/3.9.18/bin/python3")
    if old.exists():
        r = run(build.wheelhouse / "build-venv", "--python", old,
                "--wheelhouse", build.wheelhouse, "--target", tmp_path / "v")  # fmt: skip
        assert r.returncode == 1 and "is Python 3.9.18; edge-agent needs 3.10 to 3.13" in r.stderr
        assert not (tmp_path / "v").exists()
    copy = tmp_path / "wh"
    copy.mkdir()
    for f in build.wheelhouse.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (pip_wheel,) = copy.glob("pip-*.whl")
    pip_wheel.write_bytes(pip_wheel.read_bytes() + b"\0")
    r = run(build.wheelhouse / "build-venv", "--python", "/usr/bin/python3",
            "--wheelhouse", copy, "--target", tmp_path / "v")  # fmt: skip
    assert r.returncode == 1 and f"{pip_wheel} does not match its sha256" in r.stderr
    assert not (tmp_path / "v").exists()


def test_shipped_config_asks_for_the_controller_url_and_is_valid_once_given(
    build: Build, tmp_path: Path
) -> None:
    assert run("dpkg-deb", "-x", build.deb, tmp_path).returncode == 0
    doc = yaml.safe_load((tmp_path / "etc/edge-agent/config.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        parse_config(doc, readable=lambda p: True)
    assert err.value.key == "controller.url"
    doc["controller"]["url"] = "https://controller.example.com"
    cfg = parse_config(doc, readable=lambda p: True)
    assert cfg.host.mode == "agent"
    assert cfg.controller is not None
    assert str(cfg.controller.registration_token_file) == "/etc/edge-agent/registration-token"


def test_wheelhouse_pins_every_wheel_by_hash(build: Build) -> None:
    wheels = sorted(build.wheelhouse.glob("*.whl"))
    assert any(w.name.startswith(f"edge_agent-{__version__}-") for w in wheels)
    pinned: dict[str, str] = {}
    for line in (build.wheelhouse / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            spec = line.split(" ;")[0].split(" --hash")[0]
            for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
                pinned[digest] = spec
    for wheel in wheels:
        if wheel.name.startswith("pip-"):
            sums = (build.wheelhouse / "pip-wheel.sha256").read_text().split()
            assert sums == [hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.name]
            continue
        name, version = wheel.name.split("-")[:2]
        assert pinned[hashlib.sha256(wheel.read_bytes()).hexdigest()] == f"{name}=={version}"
    assert len(pinned) == len(wheels) - 1
    unit = build.wheelhouse / "edge-agent.service"
    assert unit.read_bytes() == (REPO / "systemd" / "edge-agent.service").read_bytes()
    for script in ("install.sh", "build-venv"):
        assert os.access(build.wheelhouse / script, os.X_OK)
