# shellcheck shell=bash
# The paths a training run reads, with their defaults, in one place: sourced by run_qwen2.5-3B-it.sh (which trains
# with them) and by run_qwen2.5-3B-it-with-retrieval.sh (which checks them before anything starts), so the two
# never disagree. A variable already set (and not empty) keeps its value.
SLIME_DIR="${SLIME_DIR:-/root/slime}"
HF_CKPT="${HF_CKPT:-/root/Qwen2.5-3B-Instruct}"
REF_LOAD="${REF_LOAD:-/root/Qwen2.5-3B-Instruct_torch_dist}"
SAVE_DIR="${SAVE_DIR:-/root/Qwen2.5-3B-Instruct_search_r1_oai}"
DATA_DIR="${DATA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/data/search_r1_processed}"
