"""The .deb for real: built by packaging/build-deb.sh, read with dpkg-deb, installed with dpkg on
this machine, run from its installed paths, then purged until nothing is left.

The install test changes the machine, so it holds a lock (two test runs never install at once),
skips when an edge-agent is already there (someone's install is never clobbered), and purges
in a `finally` whatever happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent import __version__
from agent.core.config import ConfigError, parse_config
from devtools.fakehost.hosttree import install_fake_programs, make_host
from tests.packaging.conftest import REPO, Build
from tests.support import assignment

FINAL = Path("/usr/lib/edge-agent")
# Everything the package puts on the machine or the agent creates there; none of it may exist
# before the install test and none of it may survive the purge.
FOOTPRINT = (
    FINAL,
    Path("/usr/bin/edge-agent"),
    Path("/usr/lib/systemd/system/edge-agent.service"),
    Path("/etc/edge-agent"),
    Path("/var/lib/edge-agent"),
    Path("/usr/share/doc/edge-agent"),
    Path("/etc/systemd/system/multi-user.target.wants/edge-agent.service"),
)
LOCK = Path("/tmp/edge-agent-packaging-test.lock")
SUMMARY = re.compile(r"^\d+ checks?: \d+ passed, \d+ warned, \d+ failed, \d+ skipped, \d+ errored")
ROW = re.compile(r"^(PASS|WARN|FAIL|SKIP|ERROR) +[a-z_]+\.[a-z_.]+ ")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
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


def test_build_is_named_by_version_and_arch_and_declares_its_needs(
    build: Build, tmp_path: Path
) -> None:
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert build.deb.name == f"edge-agent_{__version__}_{arch}.deb"
    assert field(build.deb, "Package") == "edge-agent"
    assert field(build.deb, "Version") == __version__
    assert field(build.deb, "Architecture") == arch
    depends = field(build.deb, "Depends")
    assert "python3 (>= 3.11)" in depends, depends
    info = run("dpkg-deb", "--info", build.deb).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"\s{script}\b", info), f"{script} missing from the control archive"
    control = tmp_path / "DEBIAN"
    assert run("dpkg-deb", "--control", build.deb, control).returncode == 0
    assert (control / "conffiles").read_text().split() == ["/etc/edge-agent/config.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert (control / script).read_bytes() == (REPO / "packaging/deb" / script).read_bytes()
        assert os.access(control / script, os.X_OK)


def test_contents_layout_modes_and_no_staging_path(build: Build, tmp_path: Path) -> None:
    tree = members(build.deb)
    venv = "./usr/lib/edge-agent"
    link = tree["./usr/bin/edge-agent"]
    assert link.issym() and link.linkname == "../lib/edge-agent/bin/edge-agent"
    assert tree[f"{venv}/bin/edge-agent"].mode & 0o111
    assert tree[f"{venv}/pyvenv.cfg"].isfile()
    assert tree[f"{venv}/bin/python3"].linkname.startswith("/usr/bin/python3")
    assert (
        tree["./var/lib/edge-agent"].isdir() and tree["./var/lib/edge-agent"].mode & 0o777 == 0o700
    )
    assert tree["./etc/edge-agent/config.yaml"].mode & 0o777 == 0o600
    assert "./usr/share/doc/edge-agent/config.example.yaml" in tree
    assert not [n for n in tree if n == "./opt" or n.startswith(("./opt/", "./usr/local"))]
    assert all(m.uid == 0 and m.gid == 0 for m in tree.values()), "files must be root-owned"
    # Byte-compiled at build time: under ProtectSystem=strict the agent cannot write .pyc.
    assert any(
        n.startswith(f"{venv}/lib/python3.") and "/agent/__pycache__/cli." in n for n in tree
    )

    root = tmp_path / "x"
    assert run("dpkg-deb", "-x", build.deb, root).returncode == 0
    unit = root / "usr/lib/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (REPO / "systemd" / "edge-agent.service").read_bytes()
    shebang = (root / "usr/lib/edge-agent/bin/edge-agent").read_text().splitlines()[0]
    assert shebang == "#!/usr/lib/edge-agent/bin/python"
    cfg_text = (root / "usr/lib/edge-agent/pyvenv.cfg").read_text()
    assert "/usr/lib/edge-agent" in cfg_text and "edge-agent-deb." not in cfg_text
    # The build's staging directory (mktemp edge-agent-deb.XXXXXX) is recorded nowhere, .pyc included.
    leftovers = run("grep", "-rlF", "edge-agent-deb.", root)
    assert leftovers.stdout == "", leftovers.stdout


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
    pins = {}
    for line in (build.wheelhouse / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            spec, _, digest = line.partition(" --hash=sha256:")
            pins[spec] = digest
    assert len(pins) == len(wheels)
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        assert pins[f"{name}=={version}"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    unit = build.wheelhouse / "edge-agent.service"
    assert unit.read_bytes() == (REPO / "systemd" / "edge-agent.service").read_bytes()
    installer = build.wheelhouse / "install.sh"
    assert installer.read_bytes() == (REPO / "packaging" / "install.sh").read_bytes()
    assert os.access(installer, os.X_OK)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    with LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def package_state() -> str:
    r = run("dpkg-query", "-W", "-f=${db:Status-Status}", "edge-agent")
    return r.stdout.strip() if r.returncode == 0 else "not-installed"


def files_under(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


def check_config(tmp: Path) -> Path:
    """A config for `edge-agent check` against a made-up host with the fake programs."""
    root = tmp / "host"
    make_host(root)
    programs = install_fake_programs(tmp / "bin", root, env={"NODEADM_FAKE_DELAY": "0"})
    (tmp / "assignment.yaml").write_text(yaml.safe_dump(assignment()))
    config = {
        "host": {"uid": "edge-deb-test", "root": str(root)},
        "state_dir": str(tmp / "state"),
        "assignment_file": str(tmp / "assignment.yaml"),
        "checks": {"min_free_disk_gb": 0},
        "nodeadm": {"config_path": str(tmp / "nodeconfig.yaml"), "systemd_run": "never"},
        "programs": programs,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_install_run_and_purge_on_this_machine(build: Build, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root")
    with machine_lock():
        present = [str(p) for p in FOOTPRINT if p.exists() or p.is_symlink()]
        if package_state() != "not-installed" or present:
            pytest.skip(
                "an edge-agent is already on this machine (package state "
                f"{package_state()!r}, paths {present}); not clobbering it"
            )
        try:
            _installed_lifecycle(build, tmp_path)
        finally:
            if package_state() != "not-installed":
                run("dpkg", "--purge", "edge-agent")
        _assert_gone()


def _installed_lifecycle(build: Build, tmp_path: Path) -> None:
    r = run("dpkg", "-i", build.deb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert package_state() == "installed"
    listed = run("dpkg", "-L", "edge-agent").stdout.splitlines()
    assert "/usr/lib/edge-agent/bin/edge-agent" in listed
    assert "/usr/lib/systemd/system/edge-agent.service" in listed
    assert Path("/usr/bin/edge-agent").resolve() == FINAL / "bin" / "edge-agent"
    assert (Path("/var/lib/edge-agent").stat().st_mode & 0o777) == 0o700
    if not Path("/run/systemd/system").exists():
        # postinst touches systemd only when it is PID 1.
        assert not Path("/etc/systemd/system/multi-user.target.wants/edge-agent.service").exists()

    before = files_under(FINAL)
    r = run("/usr/bin/edge-agent", "version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"edge-agent {__version__}", r.stderr
    probe = (
        "import sys, agent, nacl.signing, yaml, psutil; "
        "print(agent.__file__); print(sys.prefix); print(yaml.__with_libyaml__)"
    )
    r = run(FINAL / "bin" / "python", "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    agent_file, prefix, libyaml = r.stdout.split()
    assert agent_file.startswith("/usr/lib/edge-agent/lib/python3.") and prefix == str(FINAL)
    assert libyaml == "True"

    # The shipped config: the agent refuses it (78, naming the key) until the URL is filled.
    r = run("/usr/bin/edge-agent", "check", "-c", "/etc/edge-agent/config.yaml", cwd=tmp_path)
    assert r.returncode == 78 and "controller.url" in r.stderr, r.stderr

    config = check_config(tmp_path)
    r = run(FINAL / "bin" / "edge-agent", "check", "-c", config, cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr
    lines = r.stdout.splitlines()
    assert any(SUMMARY.match(line) for line in lines), r.stdout
    rows = [line for line in lines if ROW.match(line)]
    assert len(rows) >= 10, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    # Nothing written under the venv: the shipped .pyc files were used.
    assert files_under(FINAL) == before

    # Agent Mode on top: install.sh sees the package installed, replaces the untouched
    # placeholder config, writes the token, validates with the installed agent, and enables
    # the unit offline (no systemd here). Nothing of it survives the purge below.
    token = "deb-test-token-5b1d"
    r = run(REPO / "packaging" / "install.sh", "--deb", build.deb, "--no-start",
            "--controller-url", "https://controller.example.com", "--token", token)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is installed already" in r.stdout and "over the package's placeholder" in r.stdout
    assert "config.yaml is valid" in r.stdout and token not in r.stdout + r.stderr
    conffile = Path("/etc/edge-agent/config.yaml")
    assert "url: 'https://controller.example.com'" in conffile.read_text()
    assert Path("/etc/edge-agent/registration-token").read_text() == token + "\n"
    if shutil.which("systemctl") and not Path("/run/systemd/system").exists():
        assert "enabled edge-agent.service" in r.stdout, r.stdout
        assert Path("/etc/systemd/system/multi-user.target.wants/edge-agent.service").is_symlink()

    # A changed conffile survives a reinstall; the agent's own files are there to be purged.
    conffile.write_text(conffile.read_text() + "# edited by the operator\n")
    Path("/var/lib/edge-agent/state.json").write_text("{}\n")
    # A file dpkg does not know about inside the venv (a stray .pyc) must not keep it alive.
    (FINAL / "bin" / "__pycache__").mkdir()
    (FINAL / "bin" / "__pycache__" / "stray.pyc").write_bytes(b"")
    r = run("dpkg", "-i", build.deb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert conffile.read_text().endswith("# edited by the operator\n")

    r = run("dpkg", "--purge", "edge-agent")
    assert r.returncode == 0, r.stdout + r.stderr


def _assert_gone() -> None:
    left = [str(p) for p in FOOTPRINT if p.exists() or p.is_symlink()]
    assert left == [], f"left behind after purge: {left}"
    assert package_state() == "not-installed"
    assert run("dpkg", "-L", "edge-agent").returncode != 0
