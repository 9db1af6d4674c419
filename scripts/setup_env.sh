#!/usr/bin/env bash
# Create or update the project's CPU environments: .venv (tests, quickstart, data tools) and .venv-real (the real
# components the tests run: slime's router binary and a CPU Ray, tests/requirements-real.txt; kept apart so their
# dependencies never touch .venv's pins). Idempotent: a second run with unchanged requirement files checks stamps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REAL_VENV="${REAL_VENV:-$ROOT/.venv-real}"
PYTHON="${PYTHON:-python3}"
REQ_FILES=(
  "$ROOT/scripts/torch-cpu.txt"
  "$ROOT/pyproject.toml"
  "$ROOT/local_dense_retriever/requirements.txt"
  "$ROOT/tests/requirements-nodeps.txt"
)

REAL_REQ="$ROOT/tests/requirements-real.txt"

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# is_current VENV FILES...: whether VENV exists and was built from exactly these files (creates it when missing).
is_current() {
  local venv="$1"; shift
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "[setup_env] creating $venv"
    "$PYTHON" -m venv "$venv"
  fi
  wanted="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  stamp="$venv/.search-r1-oai-requirements.sha256"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]
}

if is_current "$REAL_VENV" "$REAL_REQ"; then
  echo "[setup_env] $REAL_VENV is up to date"
else
  echo "[setup_env] installing the real test components (router, Ray) into $REAL_VENV"
  "$REAL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REAL_REQ"
  echo "$wanted" > "$stamp"
fi

if is_current "$VENV" "${REQ_FILES[@]}"; then
  echo "[setup_env] $VENV is up to date"
  exit 0
fi

# torch first and only when missing: an unpinned torch pulls a multi-GB CUDA build, and on a GPU image
# the existing CUDA torch must never be replaced.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup_env] installing $(cat "$ROOT/scripts/torch-cpu.txt") (CPU build)"
  pip_install -r "$ROOT/scripts/torch-cpu.txt"
fi
echo "[setup_env] installing project, retriever and test requirements"
pip_install -e "${ROOT}[dev]" -r "$ROOT/local_dense_retriever/requirements.txt"
pip_install --no-deps -r "$ROOT/tests/requirements-nodeps.txt"
echo "$wanted" > "$stamp"
echo "[setup_env] ready: $VENV"
