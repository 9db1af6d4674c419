#!/usr/bin/env bash
# Train Qwen2.5-3B-Instruct as a Search-R1 agent with slime (Ray + Megatron + SGLang) on one or more GPU nodes.
# The rollout calls the policy through SGLang's /v1/chat/completions with a `search` tool and queries the
# retriever at $RETRIEVAL_SERVER_URL (start it first, or use run_qwen2.5-3B-it-with-retrieval.sh).
#
#   bash run_qwen2.5-3B-it.sh [--dry-run] [extra slime flags...]
#
#   --dry-run     (anywhere on the line) check everything, print the slime config, the Ray commands, the job's
#                 runtime environment and the train command (secrets as ***), then exit without touching Ray. A
#                 path only the live run needs (SLIME_DIR, MEGATRON_DIR, HF_CKPT, REF_LOAD, DATA_DIR/train.parquet)
#                 is one warning line each; values that cannot work (a bad setting, a parallel size that does not
#                 divide NUM_GPUS, batch sizes Megatron or slime would refuse) fail it as they fail the live run
#   -h, --help    this text
#   extra arguments are appended to slime's flags (later flags win); --custom-config-path is the script's own
#
# Run it on the head node, from any folder. It reuses the Ray cluster that answers at MASTER_ADDR:RAY_PORT and
# leaves it running, or starts a Ray head there (token authentication, dashboard on loopback) and stops exactly that
# head on exit, never `ray stop`. It submits slime's train.py as a Ray job in SLIME_DIR, follows its log and exits
# with the job's outcome; Ctrl-C, TERM or HUP stop the job first (exit 130/143/129). The mechanics, and what each
# check guards against, are in search_r1_launch/ (train.py, plan.py, ray_job.py).
#
# Ray's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (in HOME); without one, a head started here
# gets a new token in a 0600 file of the run's private folder. A reused cluster without authentication is a warning.
# Multi-node: set NUM_NODES and MASTER_ADDR (this node's IP address that the other nodes reach); each worker runs
#     RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=FILE ray start --address MASTER_ADDR:RAY_PORT --num-gpus NUM_GPUS
# (printed with the token's file, never the token) and the job is submitted once the cluster has NUM_NODES x
# NUM_GPUS GPUs (error after RAY_CLUSTER_TIMEOUT). One retriever per node: RETRIEVAL_SERVER_URL=http://n1:8000,...
#
# Environment (defaults in brackets). The slime flags below use:
#   SLIME_DIR [/root/slime]  HF_CKPT [/root/Qwen2.5-3B-Instruct]  REF_LOAD [/root/Qwen2.5-3B-Instruct_torch_dist]
#   SAVE_DIR [/root/Qwen2.5-3B-Instruct_search_r1_oai]  SAVE_INTERVAL [100: rollouts between checkpoints]
#   DATA_DIR                  holds train.parquet from data_preprocess.py [data/search_r1_processed beside this script]
#   NUM_NODES, NUM_GPUS, TP_SIZE   nodes, GPUs per node (training and rollout colocated), tensor parallel [1, 4, 2]
#   NUM_ROLLOUT, ROLLOUT_BATCH_SIZE, N_SAMPLES_PER_PROMPT, GLOBAL_BATCH_SIZE   [1000, 64, 8, 512]
#   MAX_TOKENS_PER_TURN       slime's --rollout-max-response-len: the most tokens of one assistant turn [512]
#   MAX_TOKENS_PER_GPU        Megatron dynamic batch size [9216]
#   EVAL_INTERVAL             evaluate every this many rollouts, and once before training [25; 0 = no evaluation]
#   WANDB_API_KEY             set to log to wandb (WANDB_PROJECT [search-r1-oai], WANDB_GROUP [qwen2.5-3B-it]); it
#                             reaches slime's driver only, as wandb_key in the private slime config: never a command
#                             line, Ray's runtime env or a log (the job's output is filtered)
# The launcher's own (search_r1_launch/plan.py):
#   MEGATRON_DIR [/root/Megatron-LM]; MASTER_ADDR [127.0.0.1; required when NUM_NODES > 1]; RAY_PORT [6379];
#   RAY_DASHBOARD_PORT [8265, of a head started here]; RAY_START_ARGS [extra `ray start --head` flags, split on
#   spaces]; RAY_CLUSTER_TIMEOUT [600 seconds for the cluster to answer and have its GPUs]
#   EVAL_DIR                  every *.parquet in it is one eval set named by its file (nq.parquet: nq), slime-ready
#                             (data_preprocess.py --eval_sets), checked before Ray is touched [DATA_DIR/eval; when
#                             this default is missing, a warning and no evaluation]
#   EVAL_MAX_SAMPLES          evaluate on the first this many rows of each set [500; 0 = all]
#   SEARCH_R1_CONFIG          a slime config YAML of your own: rollout settings by key and keys for your own hooks,
#                             not slime's flags (refused, naming the flag to pass) [none]
#
# Rollout settings reach the job in a private slime config (--custom-config-path): SEARCH_R1_CONFIG's keys with each
# setting exported here on top. Evaluation runs the same hook greedily and logs eval/<set>/... Settings (variable /
# config key [default]):
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  -h | --help)  # config.py imports only the standard library: any python3 prints the settings table
    bash "$SCRIPT_DIR/scripts/print_usage.sh" "${BASH_SOURCE[0]}"
    python3 "$SCRIPT_DIR/search_r1_oai/config.py" --help-text 2>/dev/null ||
      echo "  (python3 could not print them: see the Settings section of README.md)"
    exit 0
    ;;
esac
# The job runs in SLIME_DIR: a relative path means one under the caller's folder.
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }

# ---- settings (the launcher checks each value before anything starts) ----
# shellcheck source=scripts/run_paths.sh
source "$SCRIPT_DIR/scripts/run_paths.sh"  # SLIME_DIR HF_CKPT REF_LOAD SAVE_DIR DATA_DIR, shared with the wrapper
SLIME_DIR="$(absolute "$SLIME_DIR")"
HF_CKPT="$(absolute "$HF_CKPT")"
REF_LOAD="$(absolute "$REF_LOAD")"
SAVE_DIR="$(absolute "$SAVE_DIR")"
DATA_DIR="$(absolute "$DATA_DIR")"
SAVE_INTERVAL="${SAVE_INTERVAL:-100}"
NUM_NODES="${NUM_NODES:-1}"
NUM_GPUS="${NUM_GPUS:-4}"
TP_SIZE="${TP_SIZE:-2}"
NUM_ROLLOUT="${NUM_ROLLOUT:-1000}"
ROLLOUT_BATCH_SIZE="${ROLLOUT_BATCH_SIZE:-64}"
N_SAMPLES_PER_PROMPT="${N_SAMPLES_PER_PROMPT:-8}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-512}"
MAX_TOKENS_PER_TURN="${MAX_TOKENS_PER_TURN:-512}"
MAX_TOKENS_PER_GPU="${MAX_TOKENS_PER_GPU:-9216}"
EVAL_INTERVAL="${EVAL_INTERVAL:-25}"
export SLIME_DIR HF_CKPT REF_LOAD SAVE_DIR DATA_DIR SAVE_INTERVAL NUM_NODES NUM_GPUS TP_SIZE NUM_ROLLOUT \
  ROLLOUT_BATCH_SIZE N_SAMPLES_PER_PROMPT GLOBAL_BATCH_SIZE MAX_TOKENS_PER_TURN MAX_TOKENS_PER_GPU EVAL_INTERVAL

# ---- slime's flags ----
# The launcher puts in front: env --chdir=SLIME_DIR python3 SLIME_DIR/train.py --actor-num-nodes NUM_NODES
# --actor-num-gpus-per-node NUM_GPUS --rollout-num-gpus NUM_NODES x NUM_GPUS --colocate, and the key flags
# (--input-key prompt --label-key reward_model --tool-key tools --metadata-key metadata, from
# search_r1_oai/columns.py); behind: --custom-config-path, --eval-config, then the extra flags.
MODEL_ARGS=()
if [[ -f "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh" ]]; then
  # shellcheck source=/dev/null
  source "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh"  # defines MODEL_ARGS
fi

CKPT_ARGS=(
  --hf-checkpoint "$HF_CKPT"
  --ref-load "$REF_LOAD"
  --load "$SAVE_DIR"
  --save "$SAVE_DIR"
  --save-interval "$SAVE_INTERVAL"
)

# Prompts are OpenAI message lists with a `tools` JSON string: no --apply-chat-template, the chat endpoint renders.
ROLLOUT_ARGS=(
  --prompt-data "${DATA_DIR}/train.parquet"
  --rollout-shuffle
  --num-rollout "$NUM_ROLLOUT"
  --rollout-batch-size "$ROLLOUT_BATCH_SIZE"
  --n-samples-per-prompt "$N_SAMPLES_PER_PROMPT"
  --rollout-max-response-len "$MAX_TOKENS_PER_TURN"
  --rollout-temperature 1.0
  --global-batch-size "$GLOBAL_BATCH_SIZE"
  --balance-data
)
# With DYNAMIC_SAMPLING=1 (settings table) slime drops each group whose rewards are all equal (no GRPO signal) and
# over-samples to make up for it: the launcher adds --over-sampling-batch-size 2 x ROLLOUT_BATCH_SIZE before these.
DYNAMIC_SAMPLING_ARGS=(
  --dynamic-sampling-filter-path slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std
)

# Evaluation (when EVAL_INTERVAL > 0 and there are eval sets): the training hook, greedy; the sets come in an
# --eval-config file, the --eval-*-key flags from columns.py.
EVAL_ARGS=(
  --eval-interval "$EVAL_INTERVAL"
  --n-samples-per-eval-prompt 1
  --eval-temperature 0
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
  --max-tokens-per-gpu "$MAX_TOKENS_PER_GPU"
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

# The key itself goes into the private slime config as wandb_key, never here.
WANDB_ARGS=()
if [[ -n "${WANDB_API_KEY:-}" ]]; then
  WANDB_ARGS=(--use-wandb --wandb-project "${WANDB_PROJECT:-search-r1-oai}" --wandb-group "${WANDB_GROUP:-qwen2.5-3B-it}")
fi

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
  --custom-rollout-log-function-path generate_with_search_oai.log_rollout_metrics
  --custom-eval-rollout-log-function-path generate_with_search_oai.log_eval_metrics
)

# ---- checks, then the Ray cluster and job (search_r1_launch/train.py; --dry-run stops after the checks) ----
exec python3 "$SCRIPT_DIR/search_r1_launch/train.py" \
  "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${GRPO_ARGS[@]}" \
  "${WANDB_ARGS[@]}" "${PERF_ARGS[@]}" "${SGLANG_ARGS[@]}" "${MISC_ARGS[@]}" "${CUSTOM_ARGS[@]}" \
  ::eval "${EVAL_ARGS[@]}" ::dynamic-sampling "${DYNAMIC_SAMPLING_ARGS[@]}" ::extra "$@"
