#!/usr/bin/env bash
# Create or update the retrieval server's own environment, local_dense_retriever/.venv (idempotent).
#
#   bash local_dense_retriever/setup_venv.sh [--dry-run] [--cpu | --gpu]
#
# GPU node (nvidia-smi lists a GPU, or RETRIEVER_DEVICE=gpu / --gpu):
#   the venv sees the system site-packages when the system python already has a CUDA torch (the image's torch
#   is reused, never replaced), and faiss-gpu-cu12 is installed instead of faiss-cpu (enables --faiss_gpu).
# CPU (otherwise): torch from scripts/torch-cpu.txt is installed first (only when the venv has no torch),
#   then local_dense_retriever/requirements.txt.
# A second run with unchanged requirement files and device only checks a stamp.
#
# Options:
#   --dry-run   print what would be run (and why), create and install nothing
#   --cpu/--gpu force the device instead of detecting it
#   -h, --help  this text
# Environment:
#   PYTHON            python that creates the venv (default: python3)
#   RETRIEVER_VENV    where the venv goes (default: local_dense_retriever/.venv)
#   RETRIEVER_DEVICE  auto | cpu | gpu (default: auto)
#   FAISS_GPU_PACKAGE pip requirement used on GPU (default: faiss-gpu-cu12==1.14.1.post1)
#   TORCH_INDEX_URL   CPU only: pip index for torch, e.g. https://download.pytorch.org/whl/cpu for the small
#                     CPU build (PyPI's Linux torch wheel is the CUDA build)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${RETRIEVER_VENV:-$SCRIPT_DIR/.venv}"
PYTHON="${PYTHON:-python3}"
DEVICE="${RETRIEVER_DEVICE:-auto}"
FAISS_GPU_PACKAGE="${FAISS_GPU_PACKAGE:-faiss-gpu-cu12==1.14.1.post1}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
REQUIREMENTS="$SCRIPT_DIR/requirements.txt"
TORCH_PIN="$ROOT/scripts/torch-cpu.txt"
DRY_RUN=0

usage() { bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; }
say() { echo "[setup_venv] $*"; }
die() { echo "[setup_venv] error: $*" >&2; exit 1; }
run() {
  if [[ "$DRY_RUN" -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --cpu) DEVICE=cpu ;;
    --gpu) DEVICE=gpu ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

if [[ "$DEVICE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    DEVICE=gpu
  else
    DEVICE=cpu
  fi
fi
[[ "$DEVICE" == cpu || "$DEVICE" == gpu ]] || die "RETRIEVER_DEVICE must be auto, cpu or gpu (got '$DEVICE')"
[[ -f "$REQUIREMENTS" && -f "$TORCH_PIN" ]] || die "missing $REQUIREMENTS or $TORCH_PIN"
command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: PYTHON=$PYTHON"
say "device: $DEVICE, venv: $VENV"

torch_version() { "$1" -c 'import torch; print(torch.__version__)' 2>/dev/null; }

# On a GPU node the image's CUDA torch is reused through the system site-packages.
SYSTEM_SITE=0
if [[ "$DEVICE" == gpu ]]; then
  if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; then
    SYSTEM_SITE=1
    say "reusing the system CUDA torch $(torch_version "$PYTHON") (venv with --system-site-packages)"
  else
    say "note: $PYTHON has no CUDA torch, so the venv does not use the system site-packages"
  fi
fi

stamp="$VENV/.retriever-requirements.sha256"
wanted="$({ cat "$REQUIREMENTS" "$TORCH_PIN"; echo "$DEVICE $SYSTEM_SITE $FAISS_GPU_PACKAGE"; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  say "$VENV is up to date"
  exit 0
fi

VENV_PY="$VENV/bin/python"
if [[ -x "$VENV_PY" ]]; then
  has_system_site="$(grep -Eiq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" && echo 1 || echo 0)"
  if [[ "$has_system_site" != "$SYSTEM_SITE" ]]; then
    say "warning: $VENV exists with include-system-site-packages=$has_system_site, wanted $SYSTEM_SITE;" \
      "keeping it (delete it and rerun to recreate)"
  fi
else
  venv_args=()
  if [[ "$SYSTEM_SITE" -eq 1 ]]; then venv_args+=(--system-site-packages); fi
  run "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
fi
pip_install() { run "$VENV_PY" -m pip install --disable-pip-version-check "$@"; }

# torch first, and only when the venv cannot import one: an existing torch is never replaced.
torch_before=""
if [[ -x "$VENV_PY" ]]; then torch_before="$(torch_version "$VENV_PY" || true)"; fi
if [[ -z "$torch_before" && "$SYSTEM_SITE" -eq 1 ]]; then
  torch_before="$(torch_version "$PYTHON" || true)"
fi
if [[ -n "$torch_before" ]]; then
  say "keeping the existing torch $torch_before"
  if [[ "$DEVICE" == gpu && "$torch_before" == *+cpu ]]; then
    say "warning: torch $torch_before is a CPU build: the encoder will run on CPU (FAISS still uses the GPU)"
  fi
elif [[ "$DEVICE" == cpu && -n "$TORCH_INDEX_URL" ]]; then
  pip_install --index-url "$TORCH_INDEX_URL" -r "$TORCH_PIN"
else
  # On Linux x86_64 PyPI's torch wheel is the CUDA build: what a GPU node without a system torch needs.
  pip_install -r "$TORCH_PIN"
fi

pip_failed() { die "pip install failed; check that $PYTHON ($("$PYTHON" -V 2>&1)) satisfies the pins in $REQUIREMENTS"; }
if [[ "$DEVICE" == gpu ]]; then
  reqs=()
  mapfile -t reqs < <(grep -Ev '^[[:space:]]*(#|$)' "$REQUIREMENTS" | grep -Ev '^faiss-cpu([^A-Za-z0-9_.-]|$)')
  pip_install "${reqs[@]}" "$FAISS_GPU_PACKAGE" || pip_failed
else
  pip_install -r "$REQUIREMENTS" || pip_failed
fi

if [[ "$DRY_RUN" -eq 1 ]]; then
  say "dry run: nothing was created or installed"
  exit 0
fi
torch_after="$(torch_version "$VENV_PY" || true)"
if [[ -n "$torch_before" && "$torch_after" != "$torch_before" ]]; then
  die "torch changed from $torch_before to $torch_after during install; restore it and check the requirements"
fi
"$VENV_PY" -c 'import faiss, fastapi, transformers, torch' || die "the venv cannot import its packages"
echo "$wanted" >"$stamp"
say "ready: $VENV (torch $torch_after, $([[ "$DEVICE" == gpu ]] && echo "$FAISS_GPU_PACKAGE" || echo faiss-cpu))"
