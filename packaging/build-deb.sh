#!/usr/bin/env bash
# Builds the edge-agent .deb for one architecture from this repository, and its wheelhouse.
#
#   packaging/build-deb.sh [--arch amd64|arm64] [--out DIR] [--wheelhouse DIR] [--python PATH]
#   packaging/build-deb.sh --wheels-only [--arch amd64|arm64] [--out DIR] [--wheelhouse DIR]
#
# Output: DIR/edge-agent_<version>_<arch>.deb (DIR defaults to dist/ in the repository) and
# DIR/wheelhouse/ (or --wheelhouse): the project's wheel and every dependency as wheels for
# CPython 3.10 to 3.13 on that architecture (packaging/wheelhouse.py: manylinux wheels for
# glibc 2.28 or older, each compiled extension checked with `file` and `readelf`), a
# requirements.txt pinning each by sha256, a pip wheel to install them with, build-venv,
# edge-agent.service and install.sh. The same wheelhouse goes into the .rpm
# (packaging/build-rpm.sh) and the Kairos image, and installs Agent Mode hosts without a
# package (install.sh --wheelhouse). --arch defaults to this machine's; wheels come from PyPI
# (or whatever index pip is configured with) and any architecture can be built anywhere.
#
# The package carries the wheelhouse, not a virtualenv: /usr/share/edge-agent/wheelhouse and
# /usr/libexec/edge-agent/build-venv, which postinst runs to build /usr/lib/edge-agent for the
# host's own python3, offline and hash-checked. So one .deb serves Debian 12 (Python 3.11),
# Debian 13 (3.13), Ubuntu 22.04 (3.10) and Ubuntu 24.04 (3.12): it depends on python3 from
# 3.10 up to 3.13, the minors the wheelhouse has compiled wheels for. Also in it:
# /usr/bin/edge-agent -> /usr/lib/edge-agent/bin/edge-agent, the unit in
# /usr/lib/systemd/system, /etc/edge-agent/config.yaml as a conffile, /var/lib/edge-agent
# (0700), maintainer scripts from packaging/deb/. /usr/lib, not /opt: Kairos keeps /opt on the
# persistent partition, where stale files survive A/B upgrades.
#
# --python names the interpreter that runs the build (default /usr/bin/python3, 3.10 or newer
# with the venv module). When --arch is this machine's, the build also builds the venv with it
# from the finished wheelhouse, as postinst will, and runs `edge-agent version` in it.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
    exit 2
}

die() {
    echo "build-deb.sh: $*" >&2
    exit 1
}

OUT=$REPO/dist
WHEELHOUSE=
PYTHON=/usr/bin/python3
WHEELS_ONLY=0
ARCH=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
        --wheelhouse) [ $# -ge 2 ] || usage; WHEELHOUSE=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift 2 ;;
        --arch) [ $# -ge 2 ] || usage; ARCH=$2; shift 2 ;;
        --wheels-only) WHEELS_ONLY=1; shift ;;
        -h|--help) usage ;;
        *) echo "build-deb.sh: unknown argument: $1" >&2; usage ;;
    esac
done
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
ARCH=${ARCH:-$HOST_ARCH}
case "$ARCH" in
    amd64|arm64) ;;
    *) die "--arch must be amd64 or arm64, got '$ARCH'" ;;
esac

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WHEELHOUSE=${WHEELHOUSE:-$OUT/wheelhouse}
mkdir -p "$WHEELHOUSE"
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)

VERSION=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$REPO/agent/__init__.py")
[ -n "$VERSION" ] || die "no __version__ = \"...\" line in agent/__init__.py"

[ -x "$PYTHON" ] || die "$PYTHON: no such interpreter (give --python PATH)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is older than Python 3.10"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A throwaway environment with pip for the build itself (ensurepip: python3-venv on Debian).
"$PYTHON" -m venv "$WORK/buildenv" 2>"$WORK/venv.err" || {
    cat "$WORK/venv.err" >&2
    die "$PYTHON -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
}
PIP=("$WORK/buildenv/bin/python" -m pip --disable-pip-version-check)
# wheelhouse.py evaluates environment markers for each target Python with `packaging`.
"${PIP[@]}" install -q packaging

# ---- the wheelhouse --------------------------------------------------------------------
# Build from a copy, so the build never writes build/ or *.egg-info into the repository.
echo "== edge-agent $VERSION for $ARCH: wheels into $WHEELHOUSE"
mkdir -p "$WORK/src" "$WORK/project"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md agent \
    | tar -C "$WORK/src" -xf -
"${PIP[@]}" wheel -q --no-deps --wheel-dir "$WORK/project" "$WORK/src"
PROJECT_WHEEL=$(find "$WORK/project" -name "edge_agent-$VERSION-*.whl" -print -quit)
[ -n "$PROJECT_WHEEL" ] || die "pip did not produce edge_agent-$VERSION-*.whl"
"$WORK/buildenv/bin/python" "$REPO/packaging/wheelhouse.py" build --arch "$ARCH" \
    --project-wheel "$PROJECT_WHEEL" --dest "$WORK/wheels" >"$WORK/wheelhouse.log" \
    || { cat "$WORK/wheelhouse.log"; die "the wheelhouse for $ARCH failed (above)"; }
head -1 "$WORK/wheelhouse.log"
echo "   $(grep -c '^   ok ' "$WORK/wheelhouse.log") compiled extensions checked: $ARCH, glibc <= 2.28"
# With the unit, build-venv and the installer, the wheelhouse is a self-contained bundle.
cp "$REPO/systemd/edge-agent.service" "$REPO/packaging/install.sh" "$WORK/wheels/"
install -m 0755 "$REPO/packaging/build-venv.sh" "$WORK/wheels/build-venv"
# Replace only what this script manages in the wheelhouse.
rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/requirements.txt" "$WHEELHOUSE/pip-wheel.sha256" \
    "$WHEELHOUSE/edge-agent.service" "$WHEELHOUSE/install.sh" "$WHEELHOUSE/build-venv"
cp -p "$WORK/wheels"/* "$WHEELHOUSE/"

if [ "$ARCH" = "$HOST_ARCH" ]; then
    # What postinst will do, with the build's Python: the wheelhouse installs and runs.
    "$WHEELHOUSE/build-venv" --python "$PYTHON" --wheelhouse "$WHEELHOUSE" \
        --target "$WORK/smoke/edge-agent" >/dev/null
    "$WORK/smoke/edge-agent/bin/edge-agent" version >/dev/null \
        || die "edge-agent version failed in a venv built from the wheelhouse"
    echo "   installs and runs on $("$PYTHON" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])')"
fi

if [ "$WHEELS_ONLY" = 1 ]; then
    echo "$WHEELHOUSE"
    exit 0
fi

# ---- the package -----------------------------------------------------------------------
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to build the package"
PKG=$WORK/pkg
install -d -m 0755 "$PKG/usr/bin" "$PKG/usr/lib/systemd/system" "$PKG/etc/edge-agent" \
    "$PKG/usr/share/doc/edge-agent" "$PKG/usr/share/edge-agent/wheelhouse" \
    "$PKG/usr/libexec/edge-agent" "$PKG/DEBIAN"
install -d -m 0700 "$PKG/var/lib/edge-agent"
install -m 0644 "$WHEELHOUSE"/*.whl "$WHEELHOUSE/requirements.txt" "$WHEELHOUSE/pip-wheel.sha256" \
    "$PKG/usr/share/edge-agent/wheelhouse/"
install -m 0755 "$REPO/packaging/build-venv.sh" "$PKG/usr/libexec/edge-agent/build-venv"
# Dangling until postinst has built the venv.
ln -s ../lib/edge-agent/bin/edge-agent "$PKG/usr/bin/edge-agent"
install -m 0644 "$REPO/systemd/edge-agent.service" "$PKG/usr/lib/systemd/system/"
install -m 0600 "$REPO/packaging/deb/config.yaml" "$PKG/etc/edge-agent/config.yaml"
install -m 0644 "$REPO/config.example.yaml" "$PKG/usr/share/doc/edge-agent/"
install -m 0644 "$REPO/packaging/deb/copyright" "$PKG/usr/share/doc/edge-agent/"
for script in postinst prerm postrm; do
    install -m 0755 "$REPO/packaging/deb/$script" "$PKG/DEBIAN/"
done
echo /etc/edge-agent/config.yaml >"$PKG/DEBIAN/conffiles"

# The wheelhouse has compiled wheels for 3.10 to 3.13; build-venv refuses any other minor.
DEPENDS="python3 (>= 3.10), python3 (<< 3.14)"
# What the unit and the agent execute: /bin/kill for ExecReload= (procps, not Essential),
# systemd-run, systemctl and journalctl (systemd), and a running system bus for
# `systemd-run --wait` (systemd only Recommends dbus; without it the first step fails with
# "Failed to connect to bus").
DEPENDS="$DEPENDS, systemd, procps, dbus | dbus-broker"
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: edge-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: edge-agent maintainers <edge-agent@example.com>
Installed-Size: $(( $(du -sk --exclude=DEBIAN "$PKG" | cut -f1) + 40 * 1024 ))
Depends: $DEPENDS
Section: admin
Priority: optional
Homepage: https://github.com/example/edge-agent
Description: on-host agent that turns edge hosts into Amazon EKS Hybrid Nodes
 edge-agent registers the host with a central controller, runs preflight checks, drives
 nodeadm install/init/upgrade/uninstall and reports status, health and events over MQTT.
 It runs as the systemd service edge-agent.service from its own virtualenv in
 /usr/lib/edge-agent, which the package builds at install time for the host's python3 from
 the wheels it carries; the configuration is /etc/edge-agent/config.yaml.
CONTROL

chmod 0755 "$PKG"
DEB=$OUT/edge-agent_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "== $DEB ($(du -k "$DEB" | cut -f1) KiB)"
