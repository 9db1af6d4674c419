#!/usr/bin/env bash
# The project's one test command: set up .venv, lint (ruff, shellcheck), type-check (mypy), run the whole pytest
# suite offline.
#
#   bash scripts/test.sh [--fast] [PYTEST ARGS...]
#
# --fast is the inner loop: only .venv is set up (scripts/setup_env.sh --main-only), the same lint, then every test
# not marked e2e (pytest -m "not e2e": no SGLang serving code, router, Ray, tmux, quickstart.sh, retriever server
# with the real encoder or CLI launched as a subprocess). CI runs everything (no --fast). The marker is described in
# pyproject.toml; a -m of your own replaces "not e2e".
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
fast=0
pytest_args=()
for arg in "$@"; do
  if [[ "$arg" == "--fast" ]]; then fast=1; else pytest_args+=("$arg"); fi
done
setup_args=()
if ((fast)); then
  setup_args=(--main-only)
  pytest_args=(-m "not e2e" "${pytest_args[@]}")
fi
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

phase "environment" bash scripts/setup_env.sh "${setup_args[@]}"
phase "ruff" "$VENV/bin/ruff" check .
phase "ruff format" "$VENV/bin/ruff" format --check .
phase "shellcheck" run_shellcheck
# mypy reads its files and settings from [tool.mypy] in pyproject.toml.
phase "mypy" "$VENV/bin/mypy"
phase "pytest" env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" -m pytest "${pytest_args[@]}"
echo "all checks passed in $SECONDS s"
