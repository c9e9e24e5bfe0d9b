#!/bin/sh
# Builds edge-agent's virtualenv at /usr/lib/edge-agent from the wheelhouse its package carries,
# for this host's Python, offline and hash-checked. The .deb's postinst and the .rpm's %post run
# it as /usr/libexec/edge-agent/build-venv; running it again rebuilds the venv.
#
#   build-venv [--python PATH] [--wheelhouse DIR] [--target DIR]
#
# Why at install time: PyYAML and cffi ship a compiled wheel per Python minor, so one package
# for Debian 12 (3.11), Debian 13 (3.13), Ubuntu 22.04 (3.10), Ubuntu 24.04 (3.12) and the
# python3.11 of RHEL and Amazon Linux carries every minor's wheels and pip takes this host's.
# pip itself comes from a wheel in the wheelhouse (checked against pip-wheel.sha256), so the
# host needs no python3-venv or python3-pip. The venv is built beside the old one, checked,
# and swapped in by rename: a running agent keeps its files until the package restarts it.
set -eu
umask 022

PYTHON=python3
WHEELHOUSE=/usr/share/edge-agent/wheelhouse
TARGET=/usr/lib/edge-agent

die() {
    echo "edge-agent build-venv: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --python|--wheelhouse|--target)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --python) PYTHON=$2 ;;
                --wheelhouse) WHEELHOUSE=$2 ;;
                --target) TARGET=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown argument: $1 (usage: build-venv [--python PATH] [--wheelhouse DIR] [--target DIR])" ;;
    esac
done

python=$(command -v "$PYTHON") || die "$PYTHON: no such interpreter"
# The wheelhouse has compiled wheels for CPython 3.10 to 3.13 only.
"$python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' \
    || die "$python is Python $("$python" -c 'import sys; print(sys.version.split()[0])'); edge-agent needs 3.10 to 3.13"
[ -f "$WHEELHOUSE/requirements.txt" ] || die "$WHEELHOUSE/requirements.txt is missing"
sums=$WHEELHOUSE/pip-wheel.sha256
[ -f "$sums" ] || die "$sums is missing"
read -r _ pip_name <"$sums" || die "$sums is empty"
pip_wheel=$WHEELHOUSE/$pip_name
(cd "$WHEELHOUSE" && sha256sum --status -c pip-wheel.sha256) \
    || die "$pip_wheel does not match its sha256 in $sums"

NEW=$TARGET.new
OLD=$TARGET.old
rm -rf "$NEW" "$OLD"
trap 'rm -rf "$NEW"' EXIT
"$python" -m venv --without-pip "$NEW" || die "$python -m venv --without-pip $NEW failed"
# Offline and hermetic: no index, no pip configuration (PIP_CONFIG_FILE=/dev/null skips every
# config file), hashes required for every wheel.
PIP_CONFIG_FILE=/dev/null "$NEW/bin/python" "$pip_wheel/pip" --isolated --disable-pip-version-check \
    install -q --no-index --find-links "$WHEELHOUSE" --require-hashes \
    -r "$WHEELHOUSE/requirements.txt" --no-compile --no-warn-script-location \
    || die "pip could not install the wheelhouse $WHEELHOUSE for $python"
"$NEW/bin/python" -I -c 'import agent.cli, nacl.signing, yaml, psutil, httpx, aiomqtt, cryptography.x509, prometheus_client' \
    || die "the new virtualenv $NEW cannot import the agent"

# A venv records its path in its scripts' #! lines, bin/activate* and pyvenv.cfg; bin/python
# is a link to the system interpreter and needs nothing.
for f in "$NEW"/bin/* "$NEW/pyvenv.cfg"; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" && grep -qF "$NEW" "$f"; then
        sed -i "s|$NEW|$TARGET|g" "$f"
    fi
done
if [ -e "$TARGET" ]; then
    mv "$TARGET" "$OLD"
fi
mv "$NEW" "$TARGET"
trap - EXIT
rm -rf "$OLD"
# Byte-compile now: under ProtectSystem=strict the agent can never write its own .pyc files.
"$TARGET/bin/python" -I -m compileall -q --invalidation-mode unchecked-hash "$TARGET/lib" >/dev/null \
    || die "byte-compiling $TARGET failed"
echo "edge-agent: virtualenv $TARGET built for $("$TARGET/bin/python" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])')"
