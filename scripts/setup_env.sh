#!/usr/bin/env bash
# Create or update the project's CPU environments: .venv (tests, quickstart, data tools), .venv-real (the real
# components the tests run: slime's router binary and a CPU Ray, tests/requirements-real.txt) and one
# .venv-sglang-<version> per SGLang release whose serving code the tests run (tests/requirements-sglang-*.txt,
# installed --no-deps, sharing .venv's CPU torch through build/shared-torch). Each is kept apart so its
# dependencies never touch .venv's pins. Idempotent: a second run with unchanged requirement files checks stamps.
#
#   bash scripts/setup_env.sh [--main-only]
#
# --main-only sets up .venv alone (enough for `scripts/test.sh --fast`, which runs no end-to-end test);
# -h/--help prints this text. VENV=DIR, REAL_VENV=DIR and SGLANG_VENV_DIR=DIR move the environments, PYTHON=EXE
# picks the interpreter that creates .venv and .venv-real.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_ONLY=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; exit 0 ;;
    --main-only) MAIN_ONLY=1 ;;
    *) echo "setup_env.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
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
# The supported SGLang releases (first column of tests/sglang_releases.txt, the list the tests read too); the tests
# serve each for real from .venv-sglang-<release>. SGLANG_VENV_DIR moves those venvs.
SGLANG_RELEASES="$ROOT/tests/sglang_releases.txt"
SGLANG_VERSIONS=()
mapfile -t SGLANG_VERSIONS < <(awk '{ sub(/#.*/, "") } NF { print $1 }' "$SGLANG_RELEASES")
if ((${#SGLANG_VERSIONS[@]} == 0)); then
  echo "setup_env.sh: $SGLANG_RELEASES lists no SGLang release" >&2
  exit 1
fi
for version in "${SGLANG_VERSIONS[@]}"; do
  if [[ ! -f "$ROOT/tests/requirements-sglang-$version.txt" ]]; then
    echo "setup_env.sh: $SGLANG_RELEASES lists SGLang $version but tests/requirements-sglang-$version.txt is missing" >&2
    exit 1
  fi
done
SGLANG_VENV_DIR="${SGLANG_VENV_DIR:-$ROOT}"
SHARED_TORCH="$ROOT/build/shared-torch"
VENV_CREATOR="$PYTHON"

pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
# is_current VENV FILES...: whether VENV exists and was built from exactly these files (creates it when missing).
is_current() {
  local venv="$1"; shift
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "[setup_env] creating $venv"
    "$VENV_CREATOR" -m venv "$venv"
  fi
  wanted="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  stamp="$venv/.search-r1-oai-requirements.sha256"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]
}

if ((MAIN_ONLY)); then
  echo "[setup_env] --main-only: leaving $REAL_VENV and the SGLang venvs as they are"
elif is_current "$REAL_VENV" "$REAL_REQ"; then
  echo "[setup_env] $REAL_VENV is up to date"
else
  echo "[setup_env] installing the real test components (router, Ray) into $REAL_VENV"
  "$REAL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REAL_REQ"
  echo "$wanted" > "$stamp"
fi

if is_current "$VENV" "${REQ_FILES[@]}"; then
  echo "[setup_env] $VENV is up to date"
else
  # torch first and only when missing: an unpinned torch pulls a multi-GB CUDA build, and on a GPU image
  # the existing CUDA torch must never be replaced.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup_env] installing $(cat "$ROOT/scripts/torch-cpu.txt") (CPU build, the largest download)"
    pip_install -r "$ROOT/scripts/torch-cpu.txt"
  fi
  echo "[setup_env] installing project, retriever and test requirements (${SECONDS}s so far)"
  pip_install -e "${ROOT}[dev]" -r "$ROOT/local_dense_retriever/requirements.txt"
  echo "[setup_env] installing tests/requirements-nodeps.txt (${SECONDS}s so far)"
  pip_install --no-deps -r "$ROOT/tests/requirements-nodeps.txt"
  echo "$wanted" > "$stamp"
  echo "[setup_env] ready: $VENV (${SECONDS}s)"
fi

if ((MAIN_ONLY)); then
  echo "[setup_env] ready (.venv only)"
  exit 0
fi

# .venv's torch, seen by the SGLang venvs through a .pth file: no second 800 MB copy, and a directory outside
# those venvs, so pip there never uninstalls it. Re-linked on every run (cheap), so a cleaned build/ heals.
torch_site="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
rm -rf "$SHARED_TORCH"
mkdir -p "$SHARED_TORCH"
for entry in "$torch_site"/torch "$torch_site"/functorch "$torch_site"/torchgen "$torch_site"/torch-*.dist-info; do
  if [[ -e "$entry" ]]; then ln -s "$entry" "$SHARED_TORCH/"; fi
done

# The SGLang venvs use .venv's interpreter (the shared torch is built for it). --no-deps: the requirement files
# are full pip freezes; SGLang's declared dependencies would pull a CUDA torch and GPU kernels.
VENV_CREATOR="$VENV/bin/python"
for version in "${SGLANG_VERSIONS[@]}"; do
  sglang_venv="$SGLANG_VENV_DIR/.venv-sglang-$version"
  if is_current "$sglang_venv" "$ROOT/tests/requirements-sglang-$version.txt" "$ROOT/scripts/torch-cpu.txt"; then
    echo "[setup_env] $sglang_venv is up to date"
  else
    echo "[setup_env] installing SGLang $version's serving path (CPU, no model) into $sglang_venv"
    "$sglang_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      -r "$ROOT/tests/requirements-sglang-$version.txt"
    echo "$wanted" > "$stamp"
  fi
  purelib="$("$sglang_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$SHARED_TORCH" > "$purelib/_search_r1_oai_shared_torch.pth"
done
echo "[setup_env] ready"
