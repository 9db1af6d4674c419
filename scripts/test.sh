#!/usr/bin/env bash
# The project's one test command: set up .venv, lint (ruff, shellcheck), run the whole pytest suite offline.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k retriever`; -h/--help alone prints this text.
# VENV=DIR uses another virtual environment than .venv, REAL_VENV=DIR another than .venv-real (router, Ray),
# SGLANG_VENV_DIR=DIR another folder for the .venv-sglang-<version> environments (SGLang's serving code per release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "$#" -eq 1 && ("$1" == "-h" || "$1" == "--help") ]]; then
  bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"
  exit 0
fi
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
REAL_VENV="${REAL_VENV:-$ROOT/.venv-real}"
export VENV REAL_VENV

phase() {
  local name="$1"; shift
  local start=$SECONDS
  echo "=== $name"
  "$@"
  echo "=== $name: $((SECONDS - start))s"
}

shell_scripts() { git ls-files -co --exclude-standard '*.sh' .ci/run; }

run_shellcheck() {
  local files=()
  mapfile -t files < <(shell_scripts)
  "$VENV/bin/shellcheck" "${files[@]}"
}

phase "environment" bash scripts/setup_env.sh
phase "ruff" "$VENV/bin/ruff" check .
phase "ruff format" "$VENV/bin/ruff" format --check .
phase "shellcheck" run_shellcheck
phase "pytest" env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" -m pytest "$@"
echo "all checks passed in $SECONDS s"
