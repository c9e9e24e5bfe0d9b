#!/usr/bin/env bash
# Builds the edge-agent .rpm for RHEL 8/9 and Amazon Linux 2023, for one architecture.
#
#   packaging/build-rpm.sh [--arch x86_64|aarch64] [--out DIR] [--wheelhouse DIR]
#
# Output: DIR/edge-agent-<version>-1.<arch>.rpm (DIR defaults to dist/ in the repository).
# The wheelhouse is the one build-deb.sh makes (wheels for CPython 3.10 to 3.13 on glibc 2.28
# and older, hash-pinned, each extension checked): with --wheelhouse DIR an existing one is
# checked again for this architecture and used, otherwise build-deb.sh --wheels-only makes it
# (into DIR/wheelhouse-<arch>). The layout and %post are those of the .deb: the wheelhouse in
# /usr/share/edge-agent/wheelhouse, /usr/libexec/edge-agent/build-venv run by %post with
# python3.12 or python3.11. The spec is packaging/rpm/edge-agent.spec. Needs rpmbuild (on
# Debian/Ubuntu: apt-get install rpm); --arch defaults to this machine's.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
    exit 2
}

die() {
    echo "build-rpm.sh: $*" >&2
    exit 1
}

OUT=$REPO/dist
WHEELHOUSE=
ARCH=$(uname -m)
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
        --wheelhouse) [ $# -ge 2 ] || usage; WHEELHOUSE=$2; shift 2 ;;
        --arch) [ $# -ge 2 ] || usage; ARCH=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build-rpm.sh: unknown argument: $1" >&2; usage ;;
    esac
done
case "$ARCH" in
    x86_64|amd64) ARCH=x86_64; DEB_ARCH=amd64 ;;
    aarch64|arm64) ARCH=aarch64; DEB_ARCH=arm64 ;;
    *) die "--arch must be x86_64 or aarch64, got '$ARCH'" ;;
esac
command -v rpmbuild >/dev/null || die "rpmbuild is needed (Debian/Ubuntu: apt-get install rpm)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VERSION=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$REPO/agent/__init__.py")
[ -n "$VERSION" ] || die "no __version__ = \"...\" line in agent/__init__.py"
case "$VERSION" in
    *-*) die "version $VERSION has a '-', which an rpm Version cannot hold" ;;
esac

if [ -z "$WHEELHOUSE" ]; then
    WHEELHOUSE=$OUT/wheelhouse-$ARCH
    "$REPO/packaging/build-deb.sh" --wheels-only --arch "$DEB_ARCH" --wheelhouse "$WHEELHOUSE" \
        --out "$OUT" >/dev/null
fi
[ -f "$WHEELHOUSE/requirements.txt" ] || die "--wheelhouse $WHEELHOUSE: no requirements.txt"
grep -q "^edge_agent==$VERSION " "$WHEELHOUSE/requirements.txt" \
    || die "--wheelhouse $WHEELHOUSE is not for edge-agent $VERSION"
python3 "$REPO/packaging/wheelhouse.py" check --arch "$DEB_ARCH" "$WHEELHOUSE" >/dev/null \
    || die "--wheelhouse $WHEELHOUSE is not fit for $ARCH (above)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-rpm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/stage
install -d -m 0755 "$STAGE/usr/bin" "$STAGE/usr/lib/systemd/system" "$STAGE/etc/edge-agent" \
    "$STAGE/usr/share/doc/edge-agent" "$STAGE/usr/share/edge-agent/wheelhouse" \
    "$STAGE/usr/libexec/edge-agent"
install -d -m 0700 "$STAGE/var/lib/edge-agent"
install -m 0644 "$WHEELHOUSE"/*.whl "$WHEELHOUSE/requirements.txt" "$WHEELHOUSE/pip-wheel.sha256" \
    "$STAGE/usr/share/edge-agent/wheelhouse/"
install -m 0755 "$REPO/packaging/build-venv.sh" "$STAGE/usr/libexec/edge-agent/build-venv"
ln -s ../lib/edge-agent/bin/edge-agent "$STAGE/usr/bin/edge-agent"
install -m 0644 "$REPO/systemd/edge-agent.service" "$STAGE/usr/lib/systemd/system/"
install -m 0600 "$REPO/packaging/deb/config.yaml" "$STAGE/etc/edge-agent/config.yaml"
install -m 0644 "$REPO/config.example.yaml" "$STAGE/usr/share/doc/edge-agent/"

# --target sets the package's architecture; nothing in it is compiled for the build machine.
rpmbuild -bb --quiet --target "$ARCH-linux" \
    --define "_topdir $WORK/rpmbuild" \
    --define "edge_agent_version $VERSION" \
    --define "edge_agent_stage $STAGE" \
    "$REPO/packaging/rpm/edge-agent.spec" >"$WORK/rpmbuild.log" 2>&1 \
    || { cat "$WORK/rpmbuild.log" >&2; die "rpmbuild failed (above)"; }
RPM=$(find "$WORK/rpmbuild/RPMS" -name "edge-agent-$VERSION-1.$ARCH.rpm" -print -quit)
[ -n "$RPM" ] || die "rpmbuild made no edge-agent-$VERSION-1.$ARCH.rpm"
cp "$RPM" "$OUT/"
echo "== $OUT/$(basename "$RPM") ($(du -k "$RPM" | cut -f1) KiB)"
