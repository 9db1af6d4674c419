#!/usr/bin/env bash
# Create or update the project's CPU environment in .venv (tests, quickstart, data tools).
# Idempotent: a second run with unchanged requirement files only checks a stamp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQ_FILES=(
  "$ROOT/scripts/torch-cpu.txt"
  "$ROOT/pyproject.toml"
  "$ROOT/local_dense_retriever/requirements.txt"
  "$ROOT/tests/requirements-nodeps.txt"
)

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup_env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

stamp="$VENV/.search-r1-oai-requirements.sha256"
wanted="$(cat "${REQ_FILES[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
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
