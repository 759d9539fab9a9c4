# Sourced by scripts/test, scripts/demo and scripts/kafka: finds Python 3.11+ and makes
# sure .venv holds the project and its pinned dependencies (re-installs when
# pyproject.toml changes). Prints nothing when all is already in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECLOOP_VENV:-$ROOT/.venv}"

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "recloop needs Python 3.11 or newer on PATH" >&2
  return 1
}

ensure_venv() {
  local stamp="$VENV/.recloop-installed" want
  want="$(cat "$ROOT/pyproject.toml" | cksum)"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  local py
  py="$(find_python)"
  echo "setting up $VENV with $("$py" --version) ..." >&2
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" >&2
  echo "$want" >"$stamp"
}
