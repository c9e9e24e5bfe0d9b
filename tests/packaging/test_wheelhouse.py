"""The wheelhouse for each architecture (packaging/wheelhouse.py via build-deb.sh --arch): every
supported CPython gets its wheels, every compiled extension is of that architecture and needs
nothing newer than glibc 2.28, and the check refuses wheels that are not, naming them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.packaging.conftest import PACKAGING, Build

CHECK = [sys.executable, str(PACKAGING / "wheelhouse.py"), "check"]
ELF = {"amd64": "x86-64", "arm64": "ARM aarch64"}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def extensions(wheelhouse: Path, into: Path) -> list[Path]:
    """Every compiled extension of every wheel, unpacked."""
    found = []
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if re.search(r"\.so(\.\d+)*$", name):
                    found.append(Path(zf.extract(name, into / wheel.name)))
    return found


def pythons_served(wheelhouse: Path) -> dict[str, set[str]]:
    """Package -> the CPython tags (cp310...) of its per-interpreter wheels."""
    served: dict[str, set[str]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        name, _, python, abi, _ = wheel.name[:-4].split("-")[-5:]
        if python == abi:
            served.setdefault(name, set()).add(python)
    return served


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_each_arch_has_its_extensions_for_every_python_and_glibc_2_28(
    arch: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    build: Build = request.getfixturevalue("build_arm64" if arch == "arm64" else "build")
    assert build.deb.name.endswith(f"_{arch}.deb")
    r = run("dpkg-deb", "-f", build.deb, "Architecture")
    assert r.stdout.strip() == arch
    found = extensions(build.wheelhouse, tmp_path)
    # PyYAML, cffi (per interpreter), PyNaCl, psutil, cryptography (abi3) at least.
    assert len(found) >= 8, found
    for so in found:
        what = run("file", "-b", so).stdout
        assert ELF[arch] in what, f"{so}: {what}"
        needs = run("readelf", "-V", "-W", so).stdout
        newest = max(
            (tuple(map(int, v)) for v in re.findall(r"GLIBC_(\d+)\.(\d+)", needs)), default=(0, 0)
        )
        assert newest <= (2, 28), f"{so} needs GLIBC_{newest}"
    served = pythons_served(build.wheelhouse)
    for package in ("pyyaml", "cffi"):
        assert served[package] == {"cp310", "cp311", "cp312", "cp313"}, served
    requirements = (build.wheelhouse / "requirements.txt").read_text()
    # 3.10 gets its backports, and only 3.10.
    assert re.search(r'^exceptiongroup==\S+ ; python_version == "3.10" --hash', requirements, re.M)
    assert "iamra" not in requirements and re.search(r"^cryptography==", requirements, re.M)
    # metrics work on a packaged host without reaching PyPI
    assert re.search(r"^prometheus[-_]client==", requirements, re.M)
    assert run(*CHECK, "--arch", arch, build.wheelhouse).returncode == 0


def test_check_refuses_another_architecture_naming_the_wheel(
    build_arm64: Build, tmp_path: Path
) -> None:
    r = run(*CHECK, "--arch", "amd64", build_arm64.wheelhouse)
    assert r.returncode == 1
    assert re.search(
        r"^wheelhouse: \S+aarch64\.whl: platform tag \S+_aarch64 is not a manylinux tag for x86_64$",
        r.stderr,
    ), r.stderr
    # An arm64 extension under an x86_64 tag: `file` on the .so decides, not the name.
    (pyyaml,) = build_arm64.wheelhouse.glob("pyyaml-*-cp311-*.whl")
    renamed = pyyaml.name.replace("aarch64", "x86_64")
    shutil.copy(pyyaml, tmp_path / renamed)
    r = run(*CHECK, "--arch", "amd64", tmp_path)
    assert r.returncode == 1
    assert (
        f"wheelhouse: {renamed}: yaml/_yaml.cpython-311-aarch64-linux-gnu.so is not amd64: ELF 64-bit"
        in r.stderr
    ), r.stderr


def test_check_refuses_a_wheel_tagged_for_a_newer_glibc(build: Build, tmp_path: Path) -> None:
    (pynacl,) = build.wheelhouse.glob("pynacl-*.whl")
    machine = "x86_64" if "x86_64" in pynacl.name else "aarch64"
    arch = "amd64" if machine == "x86_64" else "arm64"
    renamed = re.sub(r"-[^-]+\.whl$", f"-manylinux_2_34_{machine}.whl", pynacl.name)
    shutil.copy(pynacl, tmp_path / renamed)
    r = run(*CHECK, "--arch", arch, tmp_path)
    assert r.returncode == 1
    assert f"wheelhouse: {renamed}: needs a glibc newer than 2.28" in r.stderr


def test_check_reads_the_glibc_an_extension_really_needs(tmp_path: Path) -> None:
    """A manylinux2014 tag is not taken on trust: the symbol versions decide."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build an extension against this machine's glibc")
    glibc = run("ldd", "--version").stdout.splitlines()[0].rsplit(" ", 1)[1]
    if tuple(map(int, glibc.split("."))) < (2, 34):
        pytest.skip(f"glibc {glibc} here: cannot link against a symbol newer than 2.28")
    src = tmp_path / "new.c"
    # pthread_create moved into libc as GLIBC_2.34.
    src.write_text("#include <pthread.h>\nvoid *f(void *a) { return a; }\n"
                   "int go(void) { pthread_t t; return pthread_create(&t, 0, f, 0); }\n")  # fmt: skip
    so = tmp_path / "_new.cpython-311-x86_64-linux-gnu.so"
    assert run("gcc", "-shared", "-fPIC", "-o", so, src).returncode == 0
    house = tmp_path / "house"
    house.mkdir()
    wheel = house / "fake-1.0-cp311-cp311-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(so, f"fake/{so.name}")
    r = run(*CHECK, "--arch", "amd64", house)
    assert r.returncode == 1
    assert f"wheelhouse: {wheel.name}: fake/{so.name} needs GLIBC_2.34" in r.stderr, r.stderr
