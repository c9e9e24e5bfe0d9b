"""The .rpm for RHEL 8/9 and Amazon Linux 2023, as packaging/build-rpm.sh makes it from the
wheelhouse of the .deb build: its metadata and files read with `rpm -qp`, its scriptlets
checked as shell, and an install into a throwaway `rpm --root` whose build-venv is then run with
the Pythons the package accepts (3.11 and 3.12). What cannot be tested here: the scriptlets
running on a real RHEL or Amazon Linux, and dnf resolving `(python3.12 or python3.11)` there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import __version__
from tests.packaging.conftest import PACKAGING, PYTHONS, Build


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False
    )


def build_rpm(out: Path, build: Build, arch: str) -> Path:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed (apt-get install rpm)")
    r = run(PACKAGING / "build-rpm.sh", "--arch", arch, "--out", out,
            "--wheelhouse", build.wheelhouse)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out / f"edge-agent-{__version__}-1.{arch}.rpm"


@pytest.fixture(scope="module")
def rpm_x86_64(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rpm(tmp_path_factory.mktemp("rpm"), build, "x86_64")


def query(rpm: Path, *args: str) -> str:
    r = run("rpm", "-qp", *args, rpm)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_metadata_asks_for_python3_11_or_3_12_and_nothing_scanned(rpm_x86_64: Path) -> None:
    head = query(rpm_x86_64, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}")
    assert head == f"edge-agent {__version__} 1 x86_64"
    requires = query(rpm_x86_64, "--requires").splitlines()
    assert "(python3.12 or python3.11)" in requires
    # No dependency on the system python3 (3.6 on RHEL 8, 3.9 on RHEL 9 and AL2023), nor
    # anything rpm would have guessed from the wheels.
    assert not [r for r in requires if r.startswith(("python3 ", "python(abi)", "libc.so"))]


def test_files_modes_and_the_config_kept_on_upgrade(rpm_x86_64: Path, build: Build) -> None:
    files = query(rpm_x86_64, "--qf", "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILENAMES}\n]")
    rows = {line.rsplit(" ", 1)[1]: line.split()[:-1] for line in files.splitlines()}
    assert rows["/etc/edge-agent/config.yaml"] == ["-rw-------", "cn"]  # %config(noreplace)
    assert rows["/var/lib/edge-agent"][0] == "drwx------"
    assert rows["/usr/libexec/edge-agent/build-venv"][0] == "-rwxr-xr-x"
    assert rows["/usr/bin/edge-agent"][0].startswith("l")
    shipped = {Path(f).name for f in rows if f.startswith("/usr/share/edge-agent/wheelhouse/")}
    made = {p.name for p in build.wheelhouse.iterdir() if p.suffix in (".whl", ".txt", ".sha256")}
    assert shipped == made
    assert not [f for f in rows if f.startswith(("/usr/lib/edge-agent/", "/opt"))]


def test_scriptlets_are_valid_shell_and_build_the_venv(rpm_x86_64: Path, tmp_path: Path) -> None:
    for tag in ("POSTIN", "PREUN", "POSTUN"):
        body = query(rpm_x86_64, "--qf", f"%{{{tag}}}")
        assert body.strip() and body != "(none)", tag
        script = tmp_path / tag
        script.write_text("#!/bin/sh\n" + body)
        assert run("sh", "-n", script).returncode == 0, body
        if shutil.which("shellcheck"):
            r = run("shellcheck", "-s", "sh", script)
            assert r.returncode == 0, r.stdout
    post = query(rpm_x86_64, "--qf", "%{POSTIN}")
    assert "/usr/libexec/edge-agent/build-venv --python" in post
    assert "command -v python3.12 || command -v python3.11" in post
    assert "rm -rf /usr/lib/edge-agent " in query(rpm_x86_64, "--qf", "%{POSTUN}")


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_installs_into_a_throwaway_root_and_its_venv_runs(
    rpm_x86_64: Path, tmp_path: Path, python: str
) -> None:
    interpreter = PYTHONS[python]
    if interpreter is None:
        pytest.skip(f"no CPython {python} on this machine")
    root = tmp_path / "root"
    root.mkdir()
    assert run("rpm", "--root", root, "--initdb").returncode == 0
    # --noscripts: rpm would run %post chrooted into a root without a shell; it is run by hand.
    r = run("rpm", "--root", root, "-i", "--nodeps", "--noscripts", rpm_x86_64)
    assert r.returncode == 0, r.stderr
    assert run("rpm", "--root", root, "-q", "edge-agent").stdout.strip() == (
        f"edge-agent-{__version__}-1.x86_64"
    )
    r = run(root / "usr/libexec/edge-agent/build-venv", "--python", interpreter,
            "--wheelhouse", root / "usr/share/edge-agent/wheelhouse",
            "--target", root / "usr/lib/edge-agent")  # fmt: skip
    assert r.returncode == 0 and f"built for Python {python}" in r.stdout, r.stderr
    r = run(root / "usr/lib/edge-agent/bin/edge-agent", "version")
    assert r.stdout.strip() == f"edge-agent {__version__}", r.stderr
    config = root / "etc/edge-agent/config.yaml"
    assert config.stat().st_mode & 0o777 == 0o600
    config.write_text(config.read_text() + "# edited\n")
    assert run("rpm", "--root", root, "-e", "--noscripts", "edge-agent").returncode == 0
    assert (root / "etc/edge-agent/config.yaml.rpmsave").read_text().endswith("# edited\n")
    assert not (root / "usr/share/edge-agent").exists()


def test_aarch64_rpm_carries_only_aarch64_wheels(build_arm64: Build, tmp_path: Path) -> None:
    rpm = build_rpm(tmp_path, build_arm64, "aarch64")
    assert query(rpm, "--qf", "%{ARCH}") == "aarch64"
    wheels = [f for f in query(rpm, "-l").splitlines() if f.endswith(".whl")]
    compiled = [w for w in wheels if not w.endswith("-any.whl")]
    assert compiled and all(re.search(r"_aarch64(\.|\.whl$)", w) for w in compiled), compiled
    # The wheelhouse is checked again for the architecture asked for.
    r = run(PACKAGING / "build-rpm.sh", "--arch", "x86_64", "--out", tmp_path / "x",
            "--wheelhouse", build_arm64.wheelhouse)  # fmt: skip
    assert r.returncode == 1 and "is not fit for x86_64" in r.stderr, r.stderr
