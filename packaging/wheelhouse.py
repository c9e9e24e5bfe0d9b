"""Makes and checks the wheelhouse the .deb, the .rpm and the Kairos image install from.

One wheelhouse serves every supported CPython (3.10 to 3.13) on one architecture: pip
downloads the project's dependencies once per Python, as binary wheels for manylinux tags of
glibc 2.28 or older (RHEL 8's glibc, the oldest on a supported host), so a wheel built for one
interpreter only (PyYAML, cffi) comes once per Python and abi3 or pure-Python wheels once.
``requirements.txt`` pins each name and version with the sha256 of every wheel of it, and an
environment marker when only some Pythons need it, so ``pip install --require-hashes`` on any
of those Pythons takes exactly its own wheels. ``check`` opens every wheel and refuses a
compiled extension of another architecture or one that needs glibc symbols newer than 2.28.

    python3 wheelhouse.py build --arch amd64 --project-wheel W --dest DIR
    python3 wheelhouse.py check --arch amd64 DIR
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# The optional features a package brings with it: IAM Roles Anywhere credentials (cryptography)
# and Prometheus metrics (prometheus-client, pure Python, imported only when enabled).
EXTRAS = ("iamra", "metrics")
GLIBC_MAX = (2, 28)
# Debian architecture -> (wheel platform machine, what `file` prints for its ELF objects)
ARCHES = {"amd64": ("x86_64", "x86-64"), "arm64": ("aarch64", "ARM aarch64")}
PIP_WHEEL_SUMS = "pip-wheel.sha256"
# manylinux1/2010/2014 are the old names of glibc 2.5, 2.12 and 2.17.
LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
GLIBC_NEED = re.compile(r"\bGLIBC_(\d+)\.(\d+)")


class WheelhouseError(Exception):
    """What makes a wheelhouse unfit for a supported host; the message names the wheel."""


def platforms(machine: str) -> list[str]:
    """Every manylinux platform tag a glibc 2.28 host of this machine accepts."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MAX[1], 4, -1)]
    return tags + [f"{legacy}_{machine}" for legacy in LEGACY]


def wheel_tags(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, platform tags) from a wheel's file name (PEP 427)."""
    parts = wheel.name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise WheelhouseError(f"{wheel.name}: not a wheel file name")
    return parts[0], parts[1], parts[-1].split(".")


def platform_glibc(tag: str, machine: str) -> tuple[int, int] | None:
    """The glibc a platform tag needs, or None for `any`; an error for another platform."""
    if tag == "any":
        return None
    for legacy, glibc in LEGACY.items():
        if tag == f"{legacy}_{machine}":
            return glibc
    m = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{machine}", tag)
    if m is None:
        raise WheelhouseError(f"platform tag {tag} is not a manylinux tag for {machine}")
    return int(m[1]), int(m[2])


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        text = zf.read(meta).decode()
    return [line[len("Requires-Dist:") :].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip


def walk(into: Path, python: str, machine: str) -> tuple[set[Path], list[str]]:
    """The wheels edge-agent[EXTRAS] needs on this Python, and the requirements not yet here.

    pip evaluates environment markers against the Python running it, not --python-version
    (so a build on 3.11 leaves out 3.10's `exceptiongroup; python_version < "3.11"`): the
    markers are evaluated here, for the target, from each wheel's own metadata.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    by_name = {canonicalize_name(wheel_tags(w)[0]): w for w in into.glob("*.whl")}
    env = {"python_version": python, "python_full_version": f"{python}.0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": machine}  # fmt: skip
    found: set[Path] = set()
    missing: list[str] = []
    todo = [("edge-agent", frozenset(EXTRAS))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        wheel = by_name[name]
        found.add(wheel)
        for line in requires_dist(wheel):
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)
            )
            if not wanted:
                continue
            dep = canonicalize_name(req.name)
            if dep in by_name:
                todo.append((dep, frozenset(req.extras)))
            else:
                req.marker = None
                missing.append(str(req))
    return found, missing


def download(pip: list[str], arch: str, project: str, dest: Path) -> dict[str, set[str]]:
    """Downloads the dependencies for each Python; returns wheel file name -> Pythons."""
    machine = ARCHES[arch][0]
    needed: dict[str, set[str]] = defaultdict(set)
    for python in PYTHONS:
        into = dest / python
        cmd = [*pip, "download", "-q", "--only-binary=:all:", "--implementation", "cp"]
        cmd += ["--python-version", python, "--dest", str(into)]
        cmd += [arg for tag in platforms(machine) for arg in ("--platform", tag)]
        wanted = [f"{project}[{','.join(EXTRAS)}]"]
        for _ in range(5):
            subprocess.run([*cmd, *wanted], check=True)
            found, wanted = walk(into, python, machine)
            if not wanted:
                break
        else:
            raise WheelhouseError(f"Python {python}: still missing {', '.join(wanted)}")
        for wheel in found:
            needed[wheel.name].add(python)
    return needed


def marker(pythons: set[str]) -> str:
    if pythons == set(PYTHONS):
        return ""
    alternatives = " or ".join(f'python_version == "{p}"' for p in sorted(pythons))
    return f" ; {alternatives}"


def requirements(wheels: dict[Path, set[str]]) -> str:
    """requirements.txt: one line per name, version and set of Pythons, every hash on it."""
    lines: dict[tuple[str, str], list[str]] = defaultdict(list)
    pythons: dict[tuple[str, str], set[str]] = defaultdict(set)
    for wheel, needed_by in sorted(wheels.items()):
        name, version, _ = wheel_tags(wheel)
        key = (name, version)
        lines[key].append(hashlib.sha256(wheel.read_bytes()).hexdigest())
        pythons[key] |= needed_by
    out = [
        "# edge-agent and its dependencies for CPython " + ", ".join(PYTHONS) + ", pinned by hash.",
        "# pip install --no-index --find-links <this dir> --require-hashes -r requirements.txt",
    ]
    for (name, version), digests in sorted(lines.items()):
        hashes = " ".join(f"--hash=sha256:{d}" for d in sorted(digests))
        out.append(f"{name}=={version}{marker(pythons[(name, version)])} {hashes}")
    return "\n".join(out) + "\n"


def check_extension(wheel: str, member: str, path: Path, arch: str) -> None:
    what = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True)
    if ARCHES[arch][1] not in what.stdout:
        raise WheelhouseError(f"{wheel}: {member} is not {arch}: {what.stdout.strip()}")
    # readelf reads any architecture's ELF; the version-needs section lists GLIBC_2.x.
    needs = subprocess.run(
        ["readelf", "-V", "-W", str(path)], capture_output=True, text=True, check=True
    )
    newest = max(((int(a), int(b)) for a, b in GLIBC_NEED.findall(needs.stdout)), default=None)
    if newest is not None and newest > GLIBC_MAX:
        raise WheelhouseError(
            f"{wheel}: {member} needs GLIBC_{newest[0]}.{newest[1]} "
            f"(supported hosts have {GLIBC_MAX[0]}.{GLIBC_MAX[1]})"
        )


def check(directory: Path, arch: str) -> list[str]:
    """Checks every wheel; returns one line per compiled extension that passed."""
    machine = ARCHES[arch][0]
    checked = []
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise WheelhouseError(f"{directory}: no wheels")
    for wheel in wheels:
        _, _, tags = wheel_tags(wheel)
        try:
            glibcs = [platform_glibc(tag, machine) for tag in tags]
        except WheelhouseError as e:
            raise WheelhouseError(f"{wheel.name}: {e}") from None
        if all(g is not None and g > GLIBC_MAX for g in glibcs):
            raise WheelhouseError(f"{wheel.name}: needs a glibc newer than 2.28")
        with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
            for member in zf.namelist():
                if re.search(r"\.so(\.\d+)*$", member):
                    path = Path(zf.extract(member, tmp))
                    check_extension(wheel.name, member, path, arch)
                    checked.append(f"{wheel.name}: {member}")
    return checked


def build(args: argparse.Namespace) -> None:
    dest: Path = args.dest
    project: Path = args.project_wheel
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory() as tmp:
        needed = download(pip, args.arch, str(project), Path(tmp))
        subprocess.run([*pip, "download", "-q", "--only-binary=:all:", "--no-deps", "pip",
                        "--dest", str(Path(tmp) / "pip")], check=True)  # fmt: skip
        dest.mkdir(parents=True, exist_ok=True)
        for old in [*dest.glob("*.whl"), dest / "requirements.txt", dest / PIP_WHEEL_SUMS]:
            old.unlink(missing_ok=True)
        wheels: dict[Path, set[str]] = {}
        for name, pythons in needed.items():
            source = Path(tmp) / sorted(pythons)[0] / name
            wheels[Path(shutil.copy2(source, dest / name))] = pythons
        (pip_wheel,) = (Path(tmp) / "pip").glob("pip-*.whl")
        copied = Path(shutil.copy2(pip_wheel, dest / pip_wheel.name))
    (dest / "requirements.txt").write_text(requirements(wheels))
    digest = hashlib.sha256(copied.read_bytes()).hexdigest()
    (dest / PIP_WHEEL_SUMS).write_text(f"{digest}  {copied.name}\n")
    print(
        f"   {len(wheels)} wheels for CPython {', '.join(PYTHONS)} on {args.arch}, and {copied.name}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the wheels and write requirements.txt")
    b.add_argument("--arch", choices=sorted(ARCHES), required=True)
    b.add_argument("--project-wheel", type=Path, required=True)
    b.add_argument("--dest", type=Path, required=True)
    c = sub.add_parser("check", help="check every wheel's tags and compiled extensions")
    c.add_argument("--arch", choices=sorted(ARCHES), required=True)
    c.add_argument("directory", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "build":
            build(args)
        for line in check(args.dest if args.command == "build" else args.directory, args.arch):
            print(f"   ok {line}")
    except WheelhouseError as e:
        print(f"wheelhouse: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"wheelhouse: {' '.join(e.cmd[:6])}... failed (exit {e.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
