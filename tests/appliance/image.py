"""The appliance image the suite boots: a Debian rootfs made into a provider image the way
CanvOS makes one, cached outside the clone.

An image is the system suite's cached Debian 12 rootfs (tests/system/nspawn.py) plus, in
this order: the lines of
``packaging/kairos/Dockerfile.fragment`` run as written (its ``ARG``s as the environment, its
``COPY`` from a wheelhouse made by ``packaging/build-deb.sh --wheels-only``, every ``RUN`` in
the image with ``systemd-nspawn``); the nodeadm stand-in (``devtools/fakehost``) as
``/usr/bin/nodeadm``; what ``K8S_DISTRIBUTION=nodeadm`` bakes into a CanvOS image, made by
running the stand-in's ``nodeadm install`` at build time (tracker, kubelet, units); dummy
kubelet and containerd services (the kubelet answers ``--version`` and serves ``/healthz``);
``/eks-hybrid`` (the user-data's ``extra-dirs-rootfs``). nodeadm accepts only Ubuntu, RHEL and
Amazon Linux by ``/etc/os-release``'s ID, so the image says Ubuntu 22.04 (the CanvOS base it
stands in for), with Kairos's own fields added, as a Kairos image does.

Images are keyed by the content of what goes into them (the agent's sources, the stand-in,
the fragment, this file) and built into a temporary directory that is renamed when done, so
a killed build never leaves half an image. ``version`` gives a build a different agent
version string: the "newer agent" of an A/B upgrade.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.system.nspawn import rootfs

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests")) / "appliance"
FRAGMENT = REPO / "packaging/kairos/Dockerfile.fragment"
# What the CanvOS image carries: Kubernetes built in with K8S_DISTRIBUTION=nodeadm.
IMAGE_KUBERNETES = "1.31.7"
NODE_IP = "10.200.0.10"

OS_RELEASE = """\
PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
KAIROS_NAME="kairos-core"
KAIROS_VERSION="v3.2.4"
KAIROS_FLAVOR="ubuntu"
"""

# A kubelet that says its version like the real one and otherwise serves /healthz on the
# kubelet's port, so the agent's health loop finds it healthy.
KUBELET = """\
#!/usr/lib/edge-agent/bin/python
import http.server, sys
if sys.argv[1:] == ["--version"]:
    print("Kubernetes v{version}")
    sys.exit(0)
class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 10248), Healthz).serve_forever()
"""

UNIT = """\
[Unit]
Description={name} (appliance test dummy)

[Service]
ExecStart={exec_start}
Restart=always

[Install]
WantedBy=multi-user.target
"""

NODEADM = """\
#!/bin/sh
# The nodeadm stand-in (devtools/fakehost) on the real root of this image.
NODEADM_FAKE_ROOT=/; export NODEADM_FAKE_ROOT
# The steps that change the host run in transient units, outside the agent's sandbox, and are
# logged; `nodeadm version` runs inside it, where /var/log is read-only, and writes nothing.
case "$1" in
    install|init|upgrade|uninstall)
        NODEADM_FAKE_LOG=/var/log/nodeadm-calls.jsonl; export NODEADM_FAKE_LOG ;;
esac
exec /usr/lib/edge-agent/bin/python /usr/lib/edge-agent-fakehost/devtools/fakehost/nodeadm.py "$@"
"""


def _tree_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _sources() -> list[Path]:
    files = [*REPO.glob("agent/**/*.py"), *REPO.glob("devtools/fakehost/*.py")]
    files += [REPO / "pyproject.toml", REPO / "devtools/__init__.py", FRAGMENT]
    files += [REPO / "systemd/edge-agent.service", REPO / "packaging/build-deb.sh"]
    files += [REPO / "packaging/wheelhouse.py", REPO / "packaging/build-venv.sh"]
    return [*files, Path(__file__).resolve()]


def _run(argv: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return str(r.stdout)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """``CACHE/name``, built by ``build(tmp)`` into a temporary sibling and renamed, under a
    lock so that two runs at once build it once."""
    final = CACHE / name
    if final.is_dir():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
        try:
            build(tmp)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def wheelhouse(out: Path, version: str | None) -> Path:
    """The wheelhouse of this checkout, or of a copy whose agent says ``version``."""
    repo = REPO
    if version is not None:
        repo = out / "src"
        shutil.copytree(
            REPO,
            repo,
            ignore=shutil.ignore_patterns(".venv", ".git", "dist", "__pycache__", "*.egg-info"),
        )
        init = repo / "agent/__init__.py"
        text = init.read_text()
        text, n = re.subn(r'__version__ = "[^"]*"', f'__version__ = "{version}"', text)
        if n != 1:
            raise RuntimeError(f"no __version__ line in {init}")
        init.write_text(text)
    # The image's architecture is this machine's; the wheelhouse serves every Python 3.10-3.13.
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    target = ["--arch", arch]
    build = [str(repo / "packaging/build-deb.sh"), "--wheels-only", "--out", str(out), *target]
    _run(build, timeout=600)
    return out / "wheelhouse"


def _in_image(root: Path, script: str, env: dict[str, str]) -> None:
    """One shell command inside the image tree (not booted), with the host's network."""
    setenv = [f"--setenv={k}={v}" for k, v in env.items()]
    argv = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", *setenv]
    # nspawn mounts a fresh tmpfs on /tmp unless told not to; what a Dockerfile COPYs into
    # /tmp must stay visible to the next RUN, as in a docker build.
    _run([*argv, "/bin/sh", "-c", script], env={**os.environ, "SYSTEMD_NSPAWN_TMPFS_TMP": "0"})


def run_fragment(root: Path, context: Path) -> None:
    """Each ARG, COPY and RUN of Dockerfile.fragment, in order, as docker build would."""
    env: dict[str, str] = {"DEBIAN_FRONTEND": "noninteractive"}
    text = FRAGMENT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word == "ARG":
            name, _, default = rest.partition("=")
            env[name] = default
        elif word == "COPY":
            src, dst = rest.split()
            shutil.copytree(context / src, root / dst.lstrip("/"), dirs_exist_ok=True)
        elif word == "RUN":
            _in_image(root, rest, env)
        else:
            raise RuntimeError(f"Dockerfile.fragment: no support here for {word!r}")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def add_nodeadm_and_kubernetes(root: Path) -> None:
    stand_in = root / "usr/lib/edge-agent-fakehost/devtools"
    shutil.copytree(REPO / "devtools/fakehost", stand_in / "fakehost", dirs_exist_ok=True)
    shutil.copy(REPO / "devtools/__init__.py", stand_in / "__init__.py")
    _write(root / "usr/bin/nodeadm", NODEADM, 0o755)
    for name in ("etc/os-release", "usr/lib/os-release"):
        (root / name).unlink(missing_ok=True)
        _write(root / name, OS_RELEASE)
    (root / "eks-hybrid").mkdir(exist_ok=True)
    # What K8S_DISTRIBUTION=nodeadm puts into the image at build time.
    install = f"nodeadm install {IMAGE_KUBERNETES} -p ssm --containerd-source distro -r us-west-2"
    _in_image(root, f"{install} -t 600s && rm -f /var/log/nodeadm-calls.jsonl", {})
    _write(root / "usr/bin/kubelet", KUBELET.replace("{version}", IMAGE_KUBERNETES), 0o755)
    for name, exec_start in (
        ("kubelet", "/usr/bin/kubelet"),
        ("containerd", "/bin/sleep infinity"),
    ):
        unit = UNIT.format(name=name, exec_start=exec_start)
        _write(root / f"etc/systemd/system/{name}.service", unit)
        wants = root / "etc/systemd/system/multi-user.target.wants" / f"{name}.service"
        wants.unlink(missing_ok=True)
        wants.symlink_to(f"/etc/systemd/system/{name}.service")


def appliance_image(version: str | None = None) -> Path:
    """The booted image (``<cache>/<key>/root``); ``version`` makes a distinct agent build."""
    base = rootfs("bookworm")
    key = _tree_hash(_sources()) + f"-{base.name}" + (f"-{version}" if version else "")

    def build(tmp: Path) -> None:
        root = tmp / "root"
        _run(["cp", "-a", "--reflink=auto", str(base), str(root)])
        context = tmp / "context"
        shutil.copytree(wheelhouse(tmp / "build", version), context / "edge-agent")
        run_fragment(root, context)
        add_nodeadm_and_kubernetes(root)
        shutil.rmtree(context)
        shutil.rmtree(tmp / "build")

    image = _cached(f"image-{key}", build)
    _prune(keep=image.name.split("-")[1])
    return image / "root"


def _prune(keep: str) -> None:
    """Remove images built from other sources (about 230 MB each) a day after they were made:
    a checkout boots only its own, and a CI machine would otherwise fill up. The day leaves
    alone the images another checkout on this machine may be booting right now."""
    for old in CACHE.glob("image-*"):
        stale = time.time() - old.stat().st_mtime > 86400
        if old.is_dir() and old.name.split("-")[1] != keep and stale:
            shutil.rmtree(old, ignore_errors=True)
