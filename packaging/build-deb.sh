#!/usr/bin/env bash
# Builds the edge-agent .deb from this repository, and the wheelhouse it is made from.
#
#   packaging/build-deb.sh [--out DIR] [--wheelhouse DIR] [--python PATH]
#   packaging/build-deb.sh --wheels-only [--out DIR] [--wheelhouse DIR]
#                          [--platform TAG --python-version X.Y]
#
# Output: DIR/edge-agent_<version>_<arch>.deb (DIR defaults to dist/ in the repository) and
# DIR/wheelhouse/ (or --wheelhouse): the project's wheel and every dependency as wheels, a
# requirements.txt pinning each by sha256, edge-agent.service and install.sh. The same wheelhouse
# builds the Kairos provider image (packaging/kairos/Dockerfile.fragment) and Agent Mode
# hosts without the .deb (install.sh --wheelhouse). Wheels come from PyPI (or whatever
# index pip is configured with); installing from the wheelhouse is offline and hash-checked.
#
# The package: a virtualenv at /usr/lib/edge-agent (not /opt: Kairos keeps /opt on the
# persistent partition, where stale files survive A/B upgrades), /usr/bin/edge-agent -> its
# bin/edge-agent, the unit in /usr/lib/systemd/system, /etc/edge-agent/config.yaml as a
# conffile, /var/lib/edge-agent (0700), maintainer scripts from packaging/deb/.
#
# Relocation: a venv hard-codes its own path (script shebangs, pyvenv.cfg, activate). The
# venv is created in a staging tree at <stage>/usr/lib/edge-agent with the system Python
# (--python, default /usr/bin/python3, whose version the package then depends on), filled
# offline from the wheelhouse without byte-compiling, then every text file in bin/ and
# pyvenv.cfg has the staging prefix rewritten to /usr/lib/edge-agent. The modules are then
# byte-compiled with their final paths (compileall -s <stage> -p /) as unchecked-hash .pyc:
# under ProtectSystem=strict the agent could never write them itself, and dpkg owns the
# sources. Finally the build fails if the staging path still appears in any file. The venv's
# bin/python links to the absolute system interpreter, which needs no rewriting.
#
# --wheels-only stops after the wheelhouse. With --platform (a wheel platform tag such as
# manylinux2014_aarch64) and --python-version (3.12), the dependencies are downloaded as
# binary wheels for that target instead of this machine: a wheelhouse for an image of another
# architecture or Python.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FINAL=/usr/lib/edge-agent

usage() {
    sed -n '4,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
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
PLATFORM=
TARGET_PY=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
        --wheelhouse) [ $# -ge 2 ] || usage; WHEELHOUSE=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift 2 ;;
        --wheels-only) WHEELS_ONLY=1; shift ;;
        --platform) [ $# -ge 2 ] || usage; PLATFORM=$2; shift 2 ;;
        --python-version) [ $# -ge 2 ] || usage; TARGET_PY=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-deb.sh: unknown argument: $1" >&2; usage ;;
    esac
done
if [ -n "$PLATFORM$TARGET_PY" ]; then
    [ "$WHEELS_ONLY" = 1 ] || die "--platform and --python-version need --wheels-only (a venv cannot be built for another target)"
    if [ -z "$PLATFORM" ] || [ -z "$TARGET_PY" ]; then
        die "--platform and --python-version go together"
    fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WHEELHOUSE=${WHEELHOUSE:-$OUT/wheelhouse}
mkdir -p "$WHEELHOUSE"
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)

VERSION=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$REPO/agent/__init__.py")
[ -n "$VERSION" ] || die "no __version__ = \"...\" line in agent/__init__.py"

[ -x "$PYTHON" ] || die "$PYTHON: no such interpreter (give --python PATH)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is Python $PYVER; the agent needs 3.11 or newer"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A throwaway environment with pip for the build itself (ensurepip: python3-venv on Debian).
"$PYTHON" -m venv "$WORK/buildenv" 2>"$WORK/venv.err" || {
    cat "$WORK/venv.err" >&2
    die "$PYTHON -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
}
PIP=("$WORK/buildenv/bin/python" -m pip --disable-pip-version-check)

# ---- the wheelhouse --------------------------------------------------------------------
# Build from a copy, so the build never writes build/ or *.egg-info into the repository.
echo "== edge-agent $VERSION: wheels into $WHEELHOUSE"
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md agent \
    | tar -C "$WORK/src" -xf -
"${PIP[@]}" wheel -q --no-deps --wheel-dir "$WORK/wheels" "$WORK/src"
PROJECT_WHEEL=$(find "$WORK/wheels" -name "edge_agent-$VERSION-*.whl" -print -quit)
[ -n "$PROJECT_WHEEL" ] || die "pip did not produce edge_agent-$VERSION-*.whl"
if [ -n "$PLATFORM" ]; then
    "${PIP[@]}" download -q --only-binary=:all: --platform "$PLATFORM" \
        --python-version "$TARGET_PY" --implementation cp --dest "$WORK/wheels" "$PROJECT_WHEEL"
else
    "${PIP[@]}" wheel -q --prefer-binary --wheel-dir "$WORK/wheels" "$PROJECT_WHEEL"
fi
# Pin every wheel by hash: installs use --require-hashes, so a wheel swapped in the
# wheelhouse (or one pip found elsewhere) is refused.
"$PYTHON" - "$WORK/wheels" >"$WORK/wheels/requirements.txt" <<'PY'
import hashlib, pathlib, sys
print("# edge-agent and its dependencies, pinned by hash (written by packaging/build-deb.sh).")
print("# pip install --no-index --find-links <this dir> --require-hashes -r requirements.txt")
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"{name}=={version} --hash=sha256:{digest}")
PY
# With the unit and the installer, the wheelhouse is a self-contained Agent Mode bundle.
cp "$REPO/systemd/edge-agent.service" "$REPO/packaging/install.sh" "$WORK/wheels/"
# Replace only what this script manages in the wheelhouse.
rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/requirements.txt" "$WHEELHOUSE/edge-agent.service" \
    "$WHEELHOUSE/install.sh"
cp -p "$WORK/wheels"/* "$WHEELHOUSE/"
echo "   $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, requirements.txt, edge-agent.service, install.sh"

if [ "$WHEELS_ONLY" = 1 ]; then
    echo "$WHEELHOUSE"
    exit 0
fi

# ---- the virtualenv, staged and relocated ----------------------------------------------
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed to build the package"
ARCH=$(dpkg --print-architecture)
PKG=$WORK/pkg
STAGED=$PKG$FINAL
echo "== virtualenv at $FINAL (staged), Python $PYVER"
"$PYTHON" -m venv --without-pip "$STAGED"
# Offline and hermetic: no index, no pip configuration, no PIP_* variables, hashes required.
PIP_CONFIG_FILE=/dev/null "${PIP[@]}" --isolated --python "$STAGED/bin/python" install -q \
    --no-index --find-links "$WHEELHOUSE" --require-hashes -r "$WHEELHOUSE/requirements.txt" \
    --no-compile --no-warn-script-location
"$STAGED/bin/python" -c 'import agent, nacl.signing, yaml, psutil, httpx, aiomqtt' \
    || die "the staged virtualenv cannot import the agent's dependencies"
# Rewrite the staging prefix: script shebangs and activate files in bin/, and pyvenv.cfg
# (whose `command =` line records the path; `home =` names the system interpreter's dir).
while IFS= read -r -d '' f; do
    if grep -Iq . "$f" && grep -qF "$STAGED" "$f"; then
        sed -i "s|$STAGED|$FINAL|g" "$f"
    fi
done < <(find "$STAGED/bin" -maxdepth 1 -type f -print0)
sed -i "s|$STAGED|$FINAL|g" "$STAGED/pyvenv.cfg"
find "$STAGED" -name __pycache__ -prune -exec rm -rf {} +
"$STAGED/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    -s "$PKG" -p / "$STAGED/lib" >/dev/null
if grep -rlF "$WORK" "$PKG" >"$WORK/leftover"; then
    sed 's/^/   /' "$WORK/leftover" >&2
    die "the staging path is still recorded in the files above"
fi
head -1 "$STAGED/bin/edge-agent" | grep -qx "#!$FINAL/bin/python[0-9.]*" \
    || die "unexpected shebang in bin/edge-agent: $(head -1 "$STAGED/bin/edge-agent")"

# ---- the rest of the package -----------------------------------------------------------
install -d -m 0755 "$PKG/usr/bin" "$PKG/usr/lib/systemd/system" "$PKG/etc/edge-agent" \
    "$PKG/usr/share/doc/edge-agent" "$PKG/DEBIAN"
install -d -m 0700 "$PKG/var/lib/edge-agent"
ln -s ../lib/edge-agent/bin/edge-agent "$PKG/usr/bin/edge-agent"
install -m 0644 "$REPO/systemd/edge-agent.service" "$PKG/usr/lib/systemd/system/"
install -m 0600 "$REPO/packaging/deb/config.yaml" "$PKG/etc/edge-agent/config.yaml"
install -m 0644 "$REPO/config.example.yaml" "$PKG/usr/share/doc/edge-agent/"
install -m 0644 "$REPO/packaging/deb/copyright" "$PKG/usr/share/doc/edge-agent/"
install -m 0644 "$WHEELHOUSE/requirements.txt" "$PKG/usr/share/doc/edge-agent/"
for script in postinst prerm postrm; do
    install -m 0755 "$REPO/packaging/deb/$script" "$PKG/DEBIAN/"
done
echo /etc/edge-agent/config.yaml >"$PKG/DEBIAN/conffiles"

# The venv holds C extensions built for this Python minor (lib/pythonX.Y, cpXY wheels), so
# the package pins the system python3 to that minor.
NEXT=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
case "$PYTHON" in
    */python3) DEPENDS="python3 (>= $PYVER), python3 (<< $NEXT)" ;;
    *) DEPENDS="python$PYVER" ;;
esac
# What the unit and the agent execute: /bin/kill for ExecReload= (procps, not Essential),
# systemd-run, systemctl and journalctl (systemd), and a running system bus for
# `systemd-run --wait` (systemd only Recommends dbus; without it the first step fails with
# "Failed to connect to bus").
DEPENDS="$DEPENDS, systemd, procps, dbus | dbus-broker"
cat >"$PKG/DEBIAN/control" <<EOF
Package: edge-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: edge-agent maintainers <edge-agent@example.com>
Installed-Size: $(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
Depends: $DEPENDS
Section: admin
Priority: optional
Homepage: https://github.com/example/edge-agent
Description: on-host agent that turns edge hosts into Amazon EKS Hybrid Nodes
 edge-agent registers the host with a central controller, runs preflight checks, drives
 nodeadm install/init/upgrade/uninstall and reports status, health and events over MQTT.
 It runs as the systemd service edge-agent.service from its own virtualenv in
 /usr/lib/edge-agent; the configuration is /etc/edge-agent/config.yaml.
EOF

chmod 0755 "$PKG"
DEB=$OUT/edge-agent_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "== $DEB ($(du -k "$DEB" | cut -f1) KiB)"
