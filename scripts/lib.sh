# shellcheck shell=bash
# Shared by scripts/test and scripts/demo: Debian packages and the project's virtualenv.
VENV=${EDGE_AGENT_VENV:-$PWD/.venv}

need_debian_packages() {
  local missing=()
  for p in "$@"; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "== installing ${missing[*]} from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The Debian package starts a broker on 1883; the tests and demo start their own.
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

make_venv() {
  local extra=$1
  if [ ! -x "$VENV/bin/python" ]; then
    command -v python3 >/dev/null || { echo "python3 (>= 3.11) is required" >&2; exit 1; }
    python3 -m venv "$VENV" 2>/dev/null || {
      need_debian_packages python3-venv
      apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    }
  fi
  local stamp="$VENV/.installed-$extra"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing edge-agent[$extra] into $VENV" >&2
    local log="$VENV/pip-install.log"
    if ! { "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e ".[$extra]"; } >"$log" 2>&1; then
      tail -20 "$log" >&2
      echo "pip install failed; full log in $log" >&2
      exit 1
    fi
    touch "$stamp"
  fi
}
