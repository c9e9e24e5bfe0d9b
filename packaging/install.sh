#!/usr/bin/env bash
# Agent Mode installer: puts edge-agent on an existing Linux host (systemd required), writes
# its configuration and registration token, then enables and starts edge-agent.service.
#
#   install.sh (--deb PATH | --wheelhouse DIR | --skip-package)
#              [--controller-url URL] [--token TOKEN | --token-file FILE] [--broker-url URL]
#              [--public-key FILE] [--mode agent|appliance] [--uid UID]
#              [--force-config] [--no-start] [--root DIR] [--python PATH]
#
# Environment instead of flags: EDGE_CONTROLLER_URL, EDGE_REGISTRATION_TOKEN (better than
# --token, which other users can read in the process list), EDGE_BROKER_URL.
#
# --deb PATH         install the package with dpkg (skipped when that version is installed)
# --wheelhouse DIR   no package: build the virtualenv /usr/lib/edge-agent offline from DIR (made
#                    by packaging/build-deb.sh: wheels, requirements.txt with hashes, the unit)
# --skip-package     only write the configuration (the agent is installed already)
# --force-config     replace an existing /etc/edge-agent/config.yaml (the old one is kept as
#                    config.yaml.bak); without it an existing config is never touched
# --no-start         do not start the service (and do not need systemd as PID 1); the unit is
#                    still enabled offline (systemctl --root) when it is installed
# --root DIR         write everything under DIR instead of / (an image tree, or tests); needs
#                    --no-start, and --wheelhouse or --skip-package
#
# Idempotent: a second run with the same options changes nothing and says so. The token is
# never printed. The config written is checked with the installed agent's own parser (the
# same code `edge-agent run` uses) before it replaces anything; an error names the key path.
# Exit codes: 0 done (or nothing to do), 1 failed or refused, 2 bad usage.
set -euo pipefail
umask 077

FINAL=/usr/lib/edge-agent
ETC=/etc/edge-agent
TOKEN_PATH=$ETC/registration-token
PUBKEY_PATH=$ETC/controller-signing.pub

usage() {
    sed -n '5,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,3\}//' >&2
    exit 2
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

bad_usage() {
    echo "install.sh: $*" >&2
    exit 2
}

say() {
    echo "edge-agent: $*"
}

ROOT=/
DEB=
WHEELHOUSE=
SKIP_PACKAGE=0
NO_START=0
FORCE_CONFIG=0
PYTHON=python3
CONTROLLER_URL=${EDGE_CONTROLLER_URL:-}
TOKEN=${EDGE_REGISTRATION_TOKEN:-}
TOKEN_FILE=
BROKER_URL=${EDGE_BROKER_URL:-}
PUBLIC_KEY=
MODE=agent
HOST_UID=
need_value() {
    [ "$2" -ge 2 ] || bad_usage "$1 needs a value"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) need_value "$1" $#; DEB=$2; shift 2 ;;
        --wheelhouse) need_value "$1" $#; WHEELHOUSE=$2; shift 2 ;;
        --skip-package) SKIP_PACKAGE=1; shift ;;
        --controller-url) need_value "$1" $#; CONTROLLER_URL=$2; shift 2 ;;
        --token) need_value "$1" $#; TOKEN=$2; shift 2 ;;
        --token-file) need_value "$1" $#; TOKEN_FILE=$2; shift 2 ;;
        --broker-url) need_value "$1" $#; BROKER_URL=$2; shift 2 ;;
        --public-key) need_value "$1" $#; PUBLIC_KEY=$2; shift 2 ;;
        --mode) need_value "$1" $#; MODE=$2; shift 2 ;;
        --uid) need_value "$1" $#; HOST_UID=$2; shift 2 ;;
        --force-config) FORCE_CONFIG=1; shift ;;
        --no-start) NO_START=1; shift ;;
        --root) need_value "$1" $#; ROOT=$2; shift 2 ;;
        --python) need_value "$1" $#; PYTHON=$2; shift 2 ;;
        -h|--help) usage ;;
        *) bad_usage "unknown argument: $1 (--help for usage)" ;;
    esac
done

# ---- checks before anything is written ---------------------------------------------------
case "$MODE" in
    agent|appliance) ;;
    *) bad_usage "--mode must be agent or appliance, got '$MODE'" ;;
esac
sources=$SKIP_PACKAGE
[ -z "$DEB" ] || sources=$((sources + 1))
[ -z "$WHEELHOUSE" ] || sources=$((sources + 1))
[ "$sources" -eq 1 ] || bad_usage "give exactly one of --deb PATH, --wheelhouse DIR, --skip-package"
[ -z "$TOKEN" ] || [ -z "$TOKEN_FILE" ] || bad_usage "give --token or --token-file, not both"

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo --preserve-env=EDGE_REGISTRATION_TOKEN $0 ...)"

[ -d "$ROOT" ] || die "--root $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd -P)
R=${ROOT%/}  # prefix for every path written: "" for /
if [ "$NO_START" -eq 0 ]; then
    [ -d /run/systemd/system ] \
        || die "systemd is not running as PID 1 here, so the service cannot be started; use --no-start to install without starting it"
    [ -z "$R" ] || die "--root $ROOT needs --no-start (a service in another root cannot be started)"
fi
if [ -n "$DEB" ]; then
    [ -z "$R" ] || die "--deb installs into / with dpkg; use --wheelhouse with --root"
    [ -f "$DEB" ] || die "--deb $DEB: no such file"
    command -v dpkg >/dev/null || die "--deb needs dpkg (on rpm hosts use --wheelhouse)"
fi
if [ -n "$WHEELHOUSE" ]; then
    [ -f "$WHEELHOUSE/requirements.txt" ] \
        || die "--wheelhouse $WHEELHOUSE: no requirements.txt (build it with packaging/build-deb.sh)"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd -P)
    if [ -z "$R" ] && dpkg-query -W -f='${Status}' edge-agent 2>/dev/null | grep -q ' installed$'; then
        die "edge-agent is installed as a package here; upgrade it with --deb, not --wheelhouse"
    fi
fi

no_newline() {  # name value: refuse values that would break the YAML line they go on
    case "$2" in
        *$'\n'*|*$'\r'*) bad_usage "$1 must be a single line" ;;
    esac
}
no_newline --controller-url "$CONTROLLER_URL"
no_newline --broker-url "$BROKER_URL"
no_newline --uid "$HOST_UID"
case "$CONTROLLER_URL" in
    ''|http://*|https://*) ;;
    *) bad_usage "--controller-url must be an http:// or https:// URL" ;;
esac
case "$BROKER_URL" in
    ''|mqtt://*|mqtts://*) ;;
    *) bad_usage "--broker-url must be an mqtt:// or mqtts:// URL" ;;
esac
if [ -n "$PUBLIC_KEY" ]; then
    [ -r "$PUBLIC_KEY" ] || die "--public-key $PUBLIC_KEY: cannot read it"
    grep -q -- '-----BEGIN PUBLIC KEY-----' "$PUBLIC_KEY" \
        || die "--public-key $PUBLIC_KEY: not a PEM public key (-----BEGIN PUBLIC KEY-----)"
fi
if [ -n "$BROKER_URL" ] && [ -z "$PUBLIC_KEY" ] && [ ! -f "$R$PUBKEY_PATH" ]; then
    bad_usage "--broker-url needs --public-key FILE (the controller's Ed25519 key: commands must be signed)"
fi
if [ -n "$TOKEN_FILE" ]; then
    [ -r "$TOKEN_FILE" ] || die "--token-file $TOKEN_FILE: cannot read it"
    TOKEN=$(cat -- "$TOKEN_FILE")
    [ -n "$TOKEN" ] || die "--token-file $TOKEN_FILE is empty"
fi
case "$TOKEN" in
    *$'\n'*|*$'\r'*) bad_usage "the registration token must be a single line" ;;
esac

CHANGED=0
changed() {
    CHANGED=1
    say "$*"
}

# ---- the package -------------------------------------------------------------------------
relocate_venv() {  # staged-path: rewrite a venv built at $R$FINAL to run at $FINAL
    local staged=$1 f
    while IFS= read -r -d '' f; do
        if grep -Iq . "$f" && grep -qF "$staged" "$f"; then
            sed -i "s|$staged|$FINAL|g" "$f"
        fi
    done < <(find "$staged/bin" -maxdepth 1 -type f -print0)
    sed -i "s|$staged|$FINAL|g" "$staged/pyvenv.cfg"
}

install_deb() {
    local want have
    want=$(dpkg-deb -f "$DEB" Version)
    have=$(dpkg-query -W -f='${Status} ${Version}' edge-agent 2>/dev/null || true)
    if [ "$have" = "install ok installed $want" ]; then
        say "package edge-agent $want is installed already"
        return
    fi
    # --force-confold: a modified /etc/edge-agent/config.yaml is kept, never prompted for.
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$DEB" >/dev/null \
        || die "dpkg -i $DEB failed (missing python3? apt-get install -f)"
    changed "installed package edge-agent $want"
}

install_wheelhouse() {
    local venv=$R$FINAL python
    python=$(command -v "$PYTHON") || die "--python $PYTHON: not found"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is older than Python 3.10"
    if [ -x "$venv/bin/python" ] && [ -f "$venv/requirements.txt" ] \
        && cmp -s "$venv/requirements.txt" "$WHEELHOUSE/requirements.txt"; then
        say "virtualenv $FINAL is up to date"
    else
        rm -rf "$venv"
        install -d -m 0755 "$(dirname "$venv")"
        (umask 022 && "$python" -m venv "$venv") \
            || die "$python -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
        # Offline and hermetic: no index, no pip configuration or PIP_* variables, hashes required.
        (umask 022 && PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip --isolated \
            --disable-pip-version-check install -q --no-index --find-links "$WHEELHOUSE" \
            --require-hashes -r "$WHEELHOUSE/requirements.txt" --no-compile) \
            || die "installing from $WHEELHOUSE failed (built for another Python or architecture?)"
        PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip --isolated uninstall -q -y pip setuptools \
            >/dev/null 2>&1 || true
        [ -z "$R" ] || relocate_venv "$venv"
        # Byte-compile now: under ProtectSystem=strict the agent cannot write .pyc files itself.
        # -f: a .pyc already there (an earlier import under --root) would name the staged path;
        # -I: a PYTHONPYCACHEPREFIX in our environment would send the .pyc files elsewhere.
        "$venv/bin/python" -I -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
            ${R:+-s "$R" -p /} "$venv/lib" >/dev/null
        install -m 0644 "$WHEELHOUSE/requirements.txt" "$venv/requirements.txt"
        changed "built virtualenv $FINAL from $WHEELHOUSE"
    fi
    local unit=$R/usr/lib/systemd/system/edge-agent.service
    if [ -f "$WHEELHOUSE/edge-agent.service" ] && ! cmp -s "$WHEELHOUSE/edge-agent.service" "$unit"; then
        install -d -m 0755 "$(dirname "$unit")"
        install -m 0644 "$WHEELHOUSE/edge-agent.service" "$unit"
        changed "installed ${unit#"$R"}"
    fi
    if [ "$(readlink "$R/usr/bin/edge-agent" 2>/dev/null)" != "../lib/edge-agent/bin/edge-agent" ]; then
        install -d -m 0755 "$R/usr/bin"
        ln -sfn ../lib/edge-agent/bin/edge-agent "$R/usr/bin/edge-agent"
        changed "linked /usr/bin/edge-agent"
    fi
}

if [ -n "$DEB" ]; then
    install_deb
elif [ -n "$WHEELHOUSE" ]; then
    install_wheelhouse
fi
PACKAGE_CHANGED=$CHANGED

# ---- directories, key, token -------------------------------------------------------------
install -d -m 0755 "$R$ETC"
install -d -m 0700 "$R/var/lib/edge-agent"

put_file() {  # source mode destination description: install when the content differs
    if cmp -s "$1" "$3"; then
        chmod "$2" "$3"
        return 1
    fi
    install -m "$2" "$1" "$3"
}

if [ -n "$PUBLIC_KEY" ] && put_file "$PUBLIC_KEY" 0644 "$R$PUBKEY_PATH"; then
    changed "wrote $PUBKEY_PATH"
fi

scratch=$(mktemp -d "$R$ETC/.install.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

if [ -n "$TOKEN" ]; then
    printf '%s\n' "$TOKEN" >"$scratch/token"   # printf is a builtin: not in the process list
    if put_file "$scratch/token" 0600 "$R$TOKEN_PATH"; then
        changed "wrote $TOKEN_PATH (mode 0600)"
    fi
elif [ ! -s "$R$TOKEN_PATH" ] && { [ -n "$CONTROLLER_URL" ] || [ ! -f "$R$ETC/config.yaml" ]; }; then
    die "no registration token: give --token-file FILE, EDGE_REGISTRATION_TOKEN or --token"
fi

# ---- the configuration -------------------------------------------------------------------
yaml_quote() {  # single-quoted YAML scalar
    local s=${1//\'/\'\'}
    printf "'%s'" "$s"
}

render_config() {
    echo "# $ETC/config.yaml: written by edge-agent's install.sh (Agent Mode)."
    echo "# Every key, with its default: config.example.yaml (/usr/share/doc/edge-agent/ with the"
    echo "# .deb). After an edit: systemctl reload edge-agent (a bad file is refused, the old kept)."
    echo "host:"
    echo "  mode: $MODE"
    [ -z "$HOST_UID" ] || echo "  uid: $(yaml_quote "$HOST_UID")"
    echo "controller:"
    echo "  url: $(yaml_quote "$CONTROLLER_URL")"
    echo "  registration_token_file: $TOKEN_PATH"
    if [ -n "$BROKER_URL" ]; then
        echo "mqtt:"
        echo "  url: $(yaml_quote "$BROKER_URL")"
    fi
    if [ -n "$PUBLIC_KEY" ] || [ -n "$BROKER_URL" ]; then
        echo "commands:"
        echo "  public_key_file: $PUBKEY_PATH"
    fi
}

VALIDATOR=$R$FINAL/bin/python
validate() {  # file: 0 valid, 1 invalid (the message names the key), 2 no agent to ask
    [ -x "$VALIDATOR" ] || return 2
    # -I: never import from the current directory; -B: write no .pyc into the tree (under
    # --root they would name the staged path). File paths in the config are read relative to
    # --root, as the agent would see them once that tree is /.
    "$VALIDATOR" -I -B - "$1" "$ROOT" <<'PY'
import os, sys
from pathlib import Path
from agent.configfile import load_config
from agent.core.config import ConfigError
from agent.commands.signature import BadPublicKey, load_public_key_file

root = sys.argv[2]
def under(p): return os.path.join(root, str(p).lstrip("/"))
try:
    cfg = load_config(Path(sys.argv[1]), {}, readable=lambda p: os.access(under(p), os.R_OK))
    if cfg.commands.public_key_file is not None:
        try:
            load_public_key_file(under(cfg.commands.public_key_file))
        except BadPublicKey as e:
            raise ConfigError("commands.public_key_file", str(e)) from None
except ConfigError as e:
    print(f"install.sh: the config is not valid: {e}", file=sys.stderr)
    sys.exit(1)
PY
}

CONFIG=$R$ETC/config.yaml
placeholder() {  # is the config the .deb's conffile, untouched since dpkg unpacked it?
    local want
    [ -z "$R" ] && [ -f "$CONFIG" ] && command -v dpkg-query >/dev/null || return 1
    want=$(dpkg-query -W -f='${Conffiles}\n' edge-agent 2>/dev/null \
        | awk -v f="$ETC/config.yaml" '$1 == f { print $2 }')
    [ -n "$want" ] && [ "$want" = "$(md5sum <"$CONFIG" | cut -d' ' -f1)" ]
}
if [ -n "$CONTROLLER_URL" ]; then
    render_config >"$scratch/config.yaml"
    if [ -f "$CONFIG" ] && cmp -s "$scratch/config.yaml" "$CONFIG"; then
        chmod 0600 "$CONFIG"
        say "$ETC/config.yaml is up to date"
    elif [ -f "$CONFIG" ] && [ "$FORCE_CONFIG" -eq 0 ] && ! placeholder; then
        say "kept the existing $ETC/config.yaml (it differs from these options; --force-config replaces it)"
    else
        rc=0
        validate "$scratch/config.yaml" || rc=$?
        [ "$rc" -ne 1 ] || exit 1
        if placeholder; then
            install -m 0600 "$scratch/config.yaml" "$CONFIG"
            changed "wrote $ETC/config.yaml (mode 0600) over the package's placeholder"
        elif [ -f "$CONFIG" ]; then
            install -m 0600 "$CONFIG" "$CONFIG.bak"
            install -m 0600 "$scratch/config.yaml" "$CONFIG"
            changed "replaced $ETC/config.yaml (the old one is $ETC/config.yaml.bak)"
        else
            install -m 0600 "$scratch/config.yaml" "$CONFIG"
            changed "wrote $ETC/config.yaml (mode 0600)"
        fi
    fi
elif [ ! -f "$CONFIG" ]; then
    die "no $ETC/config.yaml yet: give --controller-url URL (or EDGE_CONTROLLER_URL)"
elif [ "$FORCE_CONFIG" -eq 1 ]; then
    bad_usage "--force-config needs --controller-url (the config is written from the options)"
fi

rc=0
validate "$CONFIG" || rc=$?
case "$rc" in
    0) say "$ETC/config.yaml is valid" ;;
    1) exit 1 ;;
    *) say "note: $ETC/config.yaml not checked (no agent installed at $FINAL yet)" ;;
esac

# ---- the service -------------------------------------------------------------------------
UNIT_FILE=$R/usr/lib/systemd/system/edge-agent.service
if [ "$NO_START" -eq 1 ]; then
    if [ -f "$UNIT_FILE" ] && command -v systemctl >/dev/null; then
        if [ "$(systemctl --root="$ROOT" is-enabled edge-agent.service 2>/dev/null)" != enabled ]; then
            systemctl --root="$ROOT" enable edge-agent.service >/dev/null 2>&1 \
                || die "systemctl --root=$ROOT enable edge-agent.service failed"
            changed "enabled edge-agent.service"
        fi
    else
        say "note: edge-agent.service not enabled (no unit or no systemctl under $ROOT)"
    fi
    say "not starting the service (--no-start)"
else
    [ -f "$UNIT_FILE" ] || die "no $UNIT_FILE: install the package first (--deb or --wheelhouse)"
    [ "$PACKAGE_CHANGED" -eq 0 ] || systemctl daemon-reload
    if [ "$(systemctl is-enabled edge-agent.service 2>/dev/null)" != enabled ]; then
        systemctl enable edge-agent.service >/dev/null 2>&1 || die "systemctl enable edge-agent failed"
        changed "enabled edge-agent.service"
    fi
    if systemctl is-active --quiet edge-agent.service; then
        if [ "$CHANGED" -eq 1 ]; then
            systemctl restart edge-agent.service || die "systemctl restart edge-agent failed"
            say "restarted edge-agent.service"
        fi
    else
        systemctl start edge-agent.service \
            || die "edge-agent did not start: journalctl -u edge-agent -n 50"
        changed "started edge-agent.service"
    fi
fi

if [ "$CHANGED" -eq 0 ]; then
    say "nothing changed"
else
    say "done"
fi
