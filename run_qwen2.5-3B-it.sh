#!/usr/bin/env bash
# Train Qwen2.5-3B-Instruct as a Search-R1 agent with slime (Ray + Megatron + SGLang) on one 4-GPU node.
# The rollout calls the policy through SGLang's /v1/chat/completions with a `search` tool and queries the
# retriever at $RETRIEVAL_SERVER_URL (start it first, or use run_qwen2.5-3B-it-with-retrieval.sh).
#
#   bash run_qwen2.5-3B-it.sh [--dry-run] [extra slime flags...]
#
#   --dry-run     print the Ray runtime environment and the full train command, then exit without touching Ray
#   -h, --help    this text
#   extra arguments are appended to slime's flags (later flags win)
#
# Environment (defaults in brackets):
#   SLIME_DIR, MEGATRON_DIR   checkouts [/root/slime, /root/Megatron-LM]
#   HF_CKPT                   Hugging Face checkpoint [/root/Qwen2.5-3B-Instruct]
#   REF_LOAD                  its torch_dist conversion [/root/Qwen2.5-3B-Instruct_torch_dist]
#   SAVE_DIR                  where checkpoints go [/root/Qwen2.5-3B-Instruct_search_r1_oai]
#   SAVE_INTERVAL             save every this many rollouts [100]
#   DATA_DIR                  holds train.parquet from data_preprocess.py [data/search_r1_processed beside this script]
#   NUM_GPUS, TP_SIZE         GPUs for training and rollout (colocated), tensor parallel size [4, 2]
#   NUM_ROLLOUT, ROLLOUT_BATCH_SIZE, N_SAMPLES_PER_PROMPT, GLOBAL_BATCH_SIZE   [1000, 64, 8, 512]
#   MAX_TOKENS_PER_TURN       slime's --rollout-max-response-len: the most tokens of one assistant turn [512]
#   MAX_TOKENS_PER_GPU        Megatron dynamic batch size [9216]
#   MASTER_ADDR, RAY_DASHBOARD_PORT   Ray head address and dashboard port [127.0.0.1, 8265]
#   RETRIEVAL_SERVER_URL      retriever, comma-separated for replicas [http://127.0.0.1:8000]
#   SEARCH_R1_*               rollout settings (README, Settings); forwarded to the Ray job with RETRIEVAL_SERVER_URL
#   WANDB_API_KEY             set to log to wandb (WANDB_PROJECT [search-r1-oai], WANDB_GROUP [qwen2.5-3B-it])
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { bash "$SCRIPT_DIR/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; }
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1; shift ;;
  -h | --help) usage; exit 0 ;;
esac

SLIME_DIR="${SLIME_DIR:-/root/slime}"
MEGATRON_DIR="${MEGATRON_DIR:-/root/Megatron-LM}"
HF_CKPT="${HF_CKPT:-/root/Qwen2.5-3B-Instruct}"
REF_LOAD="${REF_LOAD:-/root/Qwen2.5-3B-Instruct_torch_dist}"
SAVE_DIR="${SAVE_DIR:-/root/Qwen2.5-3B-Instruct_search_r1_oai}"
DATA_DIR="${DATA_DIR:-${SCRIPT_DIR}/data/search_r1_processed}"
NUM_GPUS="${NUM_GPUS:-4}"
TP_SIZE="${TP_SIZE:-2}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
export RETRIEVAL_SERVER_URL="${RETRIEVAL_SERVER_URL:-http://127.0.0.1:8000}"

die() { echo "error: $*" >&2; exit 1; }

if [[ "$DRY_RUN" -eq 0 ]]; then
  [[ -f "${SLIME_DIR}/train.py" ]] || die "slime not found at SLIME_DIR=${SLIME_DIR} (clone THUDM/slime there or set SLIME_DIR)"
  [[ -d "$HF_CKPT" ]] || die "HF checkpoint not found at HF_CKPT=${HF_CKPT} (see README: Checkpoints)"
  [[ -d "$REF_LOAD" ]] || die "torch_dist checkpoint not found at REF_LOAD=${REF_LOAD} (see README: Checkpoints)"
  [[ -f "${DATA_DIR}/train.parquet" ]] || die "${DATA_DIR}/train.parquet missing: run python data_preprocess.py --local_dir ${DATA_DIR}"
  command -v ray >/dev/null || die "ray is not installed in this environment (use slime's image)"
fi

MODEL_ARGS=()
if [[ -f "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh" ]]; then
  # shellcheck source=/dev/null
  source "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh"  # defines MODEL_ARGS
elif [[ "$DRY_RUN" -eq 0 ]]; then
  die "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh not found"
fi

CKPT_ARGS=(
  --hf-checkpoint "$HF_CKPT"
  --ref-load "$REF_LOAD"
  --load "$SAVE_DIR"
  --save "$SAVE_DIR"
  --save-interval "${SAVE_INTERVAL:-100}"
)

# Prompts are OpenAI message lists with a `tools` JSON string: no --apply-chat-template, the chat endpoint renders.
ROLLOUT_ARGS=(
  --prompt-data "${DATA_DIR}/train.parquet"
  --input-key prompt
  --label-key reward_model
  --tool-key tools
  --rollout-shuffle
  --num-rollout "${NUM_ROLLOUT:-1000}"
  --rollout-batch-size "${ROLLOUT_BATCH_SIZE:-64}"
  --n-samples-per-prompt "${N_SAMPLES_PER_PROMPT:-8}"
  --rollout-max-response-len "${MAX_TOKENS_PER_TURN:-512}"
  --rollout-temperature 1.0
  --global-batch-size "${GLOBAL_BATCH_SIZE:-512}"
  --balance-data
)

PERF_ARGS=(
  --tensor-model-parallel-size "$TP_SIZE"
  --sequence-parallel
  --pipeline-model-parallel-size 1
  --context-parallel-size 1
  --recompute-granularity full
  --recompute-method uniform
  --recompute-num-layers 1
  --use-dynamic-batch-size
  --max-tokens-per-gpu "${MAX_TOKENS_PER_GPU:-9216}"
)

GRPO_ARGS=(
  --advantage-estimator grpo
  --use-kl-loss
  --kl-loss-coef 0.001
  --kl-loss-type low_var_kl
  --entropy-coef 0.00
  --eps-clip 0.2
  --eps-clip-high 0.28
)

OPTIMIZER_ARGS=(
  --optimizer adam
  --lr 1e-6
  --lr-decay-style constant
  --weight-decay 0.1
  --adam-beta1 0.9
  --adam-beta2 0.98
)

SGLANG_ARGS=(
  --rollout-num-gpus-per-engine "$TP_SIZE"
  --sglang-mem-fraction-static 0.7
  --sglang-tool-call-parser qwen25
)

MISC_ARGS=(
  --attention-dropout 0.0
  --hidden-dropout 0.0
  --accumulate-allreduce-grads-in-fp32
  --attention-softmax-in-fp32
  --attention-backend flash
)

CUSTOM_ARGS=(
  --custom-generate-function-path generate_with_search_oai.generate
  --custom-rm-path generate_with_search_oai.reward_func
)

# wandb reads WANDB_API_KEY from the environment that Ray workers inherit; the key never goes on a command line.
WANDB_ARGS=()
if [[ -n "${WANDB_API_KEY:-}" ]]; then
  WANDB_ARGS=(--use-wandb --wandb-project "${WANDB_PROJECT:-search-r1-oai}" --wandb-group "${WANDB_GROUP:-qwen2.5-3B-it}")
fi

# Ray workers do not inherit this shell's variables: pass the project's settings (RETRIEVAL_SERVER_URL and every
# SEARCH_R1_* variable read by search_r1_oai/config.py) through the job's runtime environment.
RUNTIME_ENV_JSON="$(
  PYTHONPATH_VALUE="${MEGATRON_DIR}:${SCRIPT_DIR}" python3 - <<'PY'
import json, os
env = {"PYTHONPATH": os.environ["PYTHONPATH_VALUE"], "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
env.update({k: v for k, v in os.environ.items() if k == "RETRIEVAL_SERVER_URL" or k.startswith("SEARCH_R1_")})
print(json.dumps({"env_vars": env}))
PY
)"

TRAIN_CMD=(
  python3 train.py
  --actor-num-nodes 1
  --actor-num-gpus-per-node "$NUM_GPUS"
  --rollout-num-gpus "$NUM_GPUS"
  --colocate
  "${MODEL_ARGS[@]}"
  "${CKPT_ARGS[@]}"
  "${ROLLOUT_ARGS[@]}"
  "${OPTIMIZER_ARGS[@]}"
  "${GRPO_ARGS[@]}"
  "${WANDB_ARGS[@]}"
  "${PERF_ARGS[@]}"
  "${SGLANG_ARGS[@]}"
  "${MISC_ARGS[@]}"
  "${CUSTOM_ARGS[@]}"
  "$@"
)

if [[ "$DRY_RUN" -eq 1 ]]; then
  echo "runtime_env: ${RUNTIME_ENV_JSON}"
  printf 'train command:'
  printf ' %q' "${TRAIN_CMD[@]}"
  printf '\n'
  exit 0
fi

# Reuse a running Ray cluster; stop on exit only the one this script started.
if ! ray status --address "${MASTER_ADDR}:6379" >/dev/null 2>&1; then
  ray start --head --node-ip-address "$MASTER_ADDR" --num-gpus "$NUM_GPUS" --disable-usage-stats \
    --dashboard-port "$RAY_DASHBOARD_PORT"
  trap 'ray stop' EXIT
fi

export PYTHONUNBUFFERED=1
cd "$SLIME_DIR"
ray job submit --address="http://${MASTER_ADDR}:${RAY_DASHBOARD_PORT}" \
  --runtime-env-json="$RUNTIME_ENV_JSON" \
  -- "${TRAIN_CMD[@]}"
