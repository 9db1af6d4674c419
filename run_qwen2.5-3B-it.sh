#!/usr/bin/env bash
# Train Qwen2.5-3B-Instruct as a Search-R1 agent with slime (Ray + Megatron + SGLang) on one or more GPU nodes.
# The rollout calls the policy through SGLang's /v1/chat/completions with a `search` tool and queries the
# retriever at $RETRIEVAL_SERVER_URL (start it first, or use run_qwen2.5-3B-it-with-retrieval.sh).
#
#   bash run_qwen2.5-3B-it.sh [--dry-run] [extra slime flags...]
#
#   --dry-run     (anywhere on the line) check the settings, print the slime config, the Ray commands, the job's
#                 runtime environment and the train command (secrets shown as ***), then exit without touching Ray.
#                 What the live run would stop at for a missing path (SLIME_DIR, and so no model flags;
#                 MEGATRON_DIR, HF_CKPT, REF_LOAD, DATA_DIR/train.parquet) is one warning line each, exit 0; values
#                 that cannot work fail it as they fail the live run (a bad setting; a tensor-parallel or engine
#                 size that does not divide NUM_GPUS; batch sizes that Megatron or slime would reject)
#   -h, --help    this text
#   extra arguments are appended to slime's flags (later flags win)
#
# Run it on the head node, from any folder. It reuses the Ray cluster that answers at MASTER_ADDR:RAY_PORT and
# leaves it running, or starts a Ray head there in its own session and stops exactly that head on exit (never
# `ray stop`, which would stop every Ray cluster on the machine). It submits slime's train.py as a Ray job that runs
# in SLIME_DIR, follows the job's log and exits with the job's outcome: 0 when it succeeded, the driver's exit code
# (or 1) when it failed or was stopped from elsewhere. Ctrl-C, TERM or HUP stop the job first (exit 130/143/129).
#
# Ray authentication: a head started here uses Ray's token authentication (RAY_AUTH_MODE=token, Ray >= 2.52) with
# your token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) or, without one, a new token in a 0600
# file of the run's private folder; every `ray` command here carries it. A reused cluster gets your token; one
# without authentication gets a one-line warning (anyone who reaches it can run code there).
#
# Multi-node: set NUM_NODES and MASTER_ADDR (this node's IP address that the other nodes reach). The script prints
# the one command each worker node runs, with the token named by its file or variable, never printed,
#     RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=FILE ray start --address MASTER_ADDR:RAY_PORT --num-gpus NUM_GPUS
# and submits once the cluster has NUM_NODES x NUM_GPUS GPUs (error after RAY_CLUSTER_TIMEOUT). Paths must be the
# same on every node. Scale search with one retriever per node: RETRIEVAL_SERVER_URL=http://node1:8000,http://node2:8000
#
# Environment (defaults in brackets):
#   SLIME_DIR, MEGATRON_DIR   checkouts [/root/slime, /root/Megatron-LM]
#   HF_CKPT                   Hugging Face checkpoint [/root/Qwen2.5-3B-Instruct]
#   REF_LOAD                  its torch_dist conversion [/root/Qwen2.5-3B-Instruct_torch_dist]
#   SAVE_DIR                  where checkpoints go [/root/Qwen2.5-3B-Instruct_search_r1_oai]
#   SAVE_INTERVAL             save every this many rollouts [100]
#   DATA_DIR                  holds train.parquet from data_preprocess.py [data/search_r1_processed beside this script]
#   EVAL_INTERVAL             evaluate every this many rollouts, and once before training [25; 0 = no evaluation]
#   EVAL_DIR                  the eval sets: every *.parquet in it is one set named by its file name (nq.parquet:
#                             nq), slime-ready like train.parquet (data_preprocess.py --eval_sets) [DATA_DIR/eval]
#   EVAL_MAX_SAMPLES          evaluate on the first this many rows of each set [500; 0 = all]
#   NUM_NODES                 nodes in the Ray cluster [1]
#   NUM_GPUS, TP_SIZE         GPUs per node for training and rollout (colocated), tensor parallel size [4, 2]
#   NUM_ROLLOUT, ROLLOUT_BATCH_SIZE, N_SAMPLES_PER_PROMPT, GLOBAL_BATCH_SIZE   [1000, 64, 8, 512]
#   MAX_TOKENS_PER_TURN       slime's --rollout-max-response-len: the most tokens of one assistant turn [512]
#   MAX_TOKENS_PER_GPU        Megatron dynamic batch size [9216]
#   MASTER_ADDR               address of the Ray head: where it is looked for, its --node-ip-address when started here,
#                             what worker nodes join [127.0.0.1; required when NUM_NODES > 1]
#   RAY_PORT                  Ray head (GCS) port [6379]
#   RAY_DASHBOARD_PORT        dashboard port of a head started here [8265]; jobs always go to the dashboard address
#                             the running cluster reports
#   RAY_START_ARGS            extra flags for `ray start --head`, split on spaces (e.g. other ports, --temp-dir) [none]
#   RAY_CLUSTER_TIMEOUT       seconds to wait for the cluster to answer and have its GPUs [600]
#   RETRIEVAL_SERVER_URL, SEARCH_R1_*   rollout settings, listed below
#   SEARCH_R1_CONFIG          a slime config YAML of your own: rollout settings by key, and keys of your own for your
#                             own slime hooks; not slime's flags (below) [none]
#   RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN   your Ray token (file, or the token itself) [~/.ray/auth_token (in HOME) if
#                             it exists, else a new one for a head started here]
#   WANDB_API_KEY             set to log to wandb (WANDB_PROJECT [search-r1-oai], WANDB_GROUP [qwen2.5-3B-it]); reaches
#                             slime's driver only, as wandb_key in the private slime config (slime logs in with
#                             args.wandb_key, and pickles args to its actors): never a command line, Ray's runtime env
#                             or a log (the job's output is filtered)
#
# Evaluation runs the same generate hook greedily (slime's --eval-temperature 0, one sample per prompt) and logs
# eval/<set>/... to slime's logging (wandb). EVAL_INTERVAL > 0 with no *.parquet in EVAL_DIR is an error, except
# when EVAL_DIR is the default folder and it does not exist: then a warning, and the run trains without evaluation.
# The sets are checked before Ray is touched (parquet with prompt, reward_model, tools and metadata columns).
#
# Rollout settings reach the job as a slime config: the script writes the keys of SEARCH_R1_CONFIG, with each setting
# exported in this shell on top (the variable wins), to a private YAML and passes --custom-config-path FILE (do not
# pass it yourself); slime copies its keys onto `args`, which every Ray worker receives. A key that is one of slime's
# flags (found in SLIME_DIR/slime, sglang_* / router_*, or any flag of the train command) is refused with the flag to
# pass instead: slime applies this file after validating its flags and building the eval datasets from them, so such
# a key would skip slime's checks (rollout_temperature: 0) or never reach the eval sets (eval_temperature). Without
# slime at SLIME_DIR, --dry-run warns which keys it could not check. Bad values stop the script before Ray is touched
# (--dry-run too). Unset settings keep their defaults (variable / config key [default]):
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# config.py imports only the standard library, so any python3 prints the settings table.
usage() {
  bash "$SCRIPT_DIR/scripts/print_usage.sh" "${BASH_SOURCE[0]}"
  python3 "$SCRIPT_DIR/search_r1_oai/config.py" --help-text 2>/dev/null ||
    echo "  (python3 could not print them: see the Settings section of README.md)"
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac
# --dry-run counts wherever it is (`--num-rollout 5 --dry-run` must never be a live run); it is no slime flag.
DRY_RUN=0
slime_flags=()
for arg in "$@"; do
  if [[ "$arg" == --dry-run ]]; then DRY_RUN=1; else slime_flags+=("$arg"); fi
done
set -- "${slime_flags[@]}"

log() { echo "[train] $*" 2>/dev/null || true; }
die() { echo "error: $*" >&2; exit 1; }
# What the live run stops at but a dry run can look past (a path missing on this machine): the live run dies, the
# dry run collects one warning line and prints them all once every check has passed.
WARNINGS=()
warn() { WARNINGS+=("warning: $*"); }
refuse() {
  if ((DRY_RUN)); then warn "a live run stops here: $*"; else die "$*"; fi
}
# The job runs in SLIME_DIR, so relative paths are made absolute against the caller's folder here.
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }

SLIME_DIR="$(absolute "${SLIME_DIR:-/root/slime}")"
MEGATRON_DIR="$(absolute "${MEGATRON_DIR:-/root/Megatron-LM}")"
HF_CKPT="$(absolute "${HF_CKPT:-/root/Qwen2.5-3B-Instruct}")"
REF_LOAD="$(absolute "${REF_LOAD:-/root/Qwen2.5-3B-Instruct_torch_dist}")"
SAVE_DIR="$(absolute "${SAVE_DIR:-/root/Qwen2.5-3B-Instruct_search_r1_oai}")"
DATA_DIR="$(absolute "${DATA_DIR:-${SCRIPT_DIR}/data/search_r1_processed}")"
NUM_NODES="${NUM_NODES:-1}"
NUM_GPUS="${NUM_GPUS:-4}"
TP_SIZE="${TP_SIZE:-2}"
NUM_ROLLOUT="${NUM_ROLLOUT:-1000}"
ROLLOUT_BATCH_SIZE="${ROLLOUT_BATCH_SIZE:-64}"
N_SAMPLES_PER_PROMPT="${N_SAMPLES_PER_PROMPT:-8}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-512}"
MAX_TOKENS_PER_TURN="${MAX_TOKENS_PER_TURN:-512}"
MAX_TOKENS_PER_GPU="${MAX_TOKENS_PER_GPU:-9216}"
SAVE_INTERVAL="${SAVE_INTERVAL:-100}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_CLUSTER_TIMEOUT="${RAY_CLUSTER_TIMEOUT:-600}"
read -r -a RAY_START_EXTRA <<<"${RAY_START_ARGS:-}"
EVAL_INTERVAL="${EVAL_INTERVAL:-25}"
EVAL_MAX_SAMPLES="${EVAL_MAX_SAMPLES:-500}"
EVAL_DIR_GIVEN="${EVAL_DIR:+1}"
EVAL_DIR="$(absolute "${EVAL_DIR:-${DATA_DIR}/eval}")"
SEARCH_R1_CONFIG="${SEARCH_R1_CONFIG:-}"
if [[ -n "$SEARCH_R1_CONFIG" ]]; then SEARCH_R1_CONFIG="$(absolute "$SEARCH_R1_CONFIG")"; fi

for name in NUM_NODES NUM_GPUS TP_SIZE RAY_PORT RAY_DASHBOARD_PORT RAY_CLUSTER_TIMEOUT NUM_ROLLOUT ROLLOUT_BATCH_SIZE \
  N_SAMPLES_PER_PROMPT GLOBAL_BATCH_SIZE MAX_TOKENS_PER_TURN MAX_TOKENS_PER_GPU SAVE_INTERVAL; do
  [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, got '${!name}'"
done
for name in EVAL_INTERVAL EVAL_MAX_SAMPLES; do
  [[ "${!name}" =~ ^(0|[1-9][0-9]*)$ ]] || die "$name must be an integer >= 0 (0 = off/all), got '${!name}'"
done
if [[ -z "${MASTER_ADDR:-}" ]]; then
  ((NUM_NODES == 1)) || die "NUM_NODES=$NUM_NODES needs MASTER_ADDR: set it to this node's IP address that the" \
    "other nodes reach (hostname -I lists them)"
  MASTER_ADDR=127.0.0.1
fi
for arg in "$@"; do
  [[ "$arg" != --custom-config-path* ]] ||
    die "--custom-config-path is set by this script; name your YAML with SEARCH_R1_CONFIG=FILE instead"
done
TOTAL_GPUS=$((NUM_NODES * NUM_GPUS))
WORKER_CMD=(ray start --address "${MASTER_ADDR}:${RAY_PORT}" --num-gpus "$NUM_GPUS")

SLIME_FOUND=0
if [[ -f "${SLIME_DIR}/train.py" ]]; then
  SLIME_FOUND=1
else
  refuse "slime not found at SLIME_DIR=${SLIME_DIR} (clone THUDM/slime there or set SLIME_DIR): the train command" \
    "has no model flags (slime's scripts/models/qwen2.5-3B.sh)"
fi
[[ -d "$MEGATRON_DIR" ]] || refuse "Megatron-LM not found at MEGATRON_DIR=${MEGATRON_DIR} (slime's image has it; or set MEGATRON_DIR)"
[[ -d "$HF_CKPT" ]] || refuse "HF checkpoint not found at HF_CKPT=${HF_CKPT} (see README: Checkpoints)"
[[ -d "$REF_LOAD" ]] || refuse "torch_dist checkpoint not found at REF_LOAD=${REF_LOAD} (see README: Checkpoints)"
[[ -f "${DATA_DIR}/train.parquet" ]] || refuse "${DATA_DIR}/train.parquet missing: run python data_preprocess.py --local_dir ${DATA_DIR}"
# The tools only the live run uses: a dry run may run on a login node without them.
if [[ "$DRY_RUN" -eq 0 ]]; then
  command -v ray >/dev/null || die "ray is not installed in this environment (use slime's image)"
  python3 -c 'import ray' 2>/dev/null || die "python3 cannot import ray: run in the Python environment that has ray (slime's image)"
  # Token authentication came with Ray 2.52; an older Ray ignores RAY_AUTH_MODE and its head lets anyone in.
  ray_version="$(python3 -c 'import ray; print(getattr(ray, "__version__", ""))' 2>/dev/null || true)"
  if [[ "$ray_version" =~ ^([0-9]+)\.([0-9]+) ]] &&
    ((BASH_REMATCH[1] < 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 52))); then
    log "warning: Ray $ray_version has no token authentication (Ray >= 2.52): anyone who reaches the cluster's" \
      "ports can submit jobs, i.e. run any code as you; upgrade ray"
  fi
  for tool in setsid timeout ps; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y util-linux coreutils procps)"
  done
  env --chdir=/ true 2>/dev/null || die "env --chdir is not supported here (needs GNU coreutils >= 8.28)"
fi

# The eval sets, checked and capped: prints the --eval-config for slime as one line of JSON (YAML), then one line
# per set describing it; or one error line naming the file and what is wrong. Without pyarrow in python3 (only
# --dry-run allows that) a set is checked for the parquet magic alone.
# slime reads `PATH@[start:end]` as those rows of PATH (slime/utils/data.py, read_file), on whichever node its rollout
# manager runs, so the cap needs no copy. The path goes in a config file, not on the job's command line, which Ray
# runs through a shell (where [0:500] would be a glob).
eval_config() {
  python3 - "$EVAL_DIR" "$EVAL_MAX_SAMPLES" "$DRY_RUN" <<'PY'
import json
import re
import sys
from pathlib import Path

folder, cap, dry_run = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
NEEDED = ("prompt", "reward_model", "tools", "metadata")  # --input-key, --label-key, --tool-key, --metadata-key
try:
    import pyarrow.parquet as pq
except ImportError:
    if not dry_run:
        sys.exit("error: python3 cannot import pyarrow to check the eval sets: run in slime's image")
    pq = None
datasets, described = [], []
for path in sorted(folder.glob("*.parquet")):
    where = f"eval set {path}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", path.stem):
        sys.exit(f"error: {where}: its file name is the set's name in eval/<name>/... metrics; use letters, digits, _.+-")
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            tail = f.read(4)
    except OSError as error:
        sys.exit(f"error: {where} cannot be read: {error.strerror or error}")
    if head != b"PAR1" or tail != b"PAR1":
        sys.exit(f"error: {where} is not a parquet file: rebuild it with data_preprocess.py --eval_sets")
    if pq is None:
        described.append(f"{path.stem} ({f'up to {cap} rows' if cap else 'all rows'}; not opened: python3 has no pyarrow)")
    else:
        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # ArrowInvalid and kin: the message says what is wrong
            sys.exit(f"error: {where} cannot be read as parquet: {error}")
        names = parquet.schema_arrow.names
        missing = [name for name in NEEDED if name not in names]
        if missing:
            sys.exit(f"error: {where} lacks column(s) {', '.join(missing)} (it has {', '.join(names)}): make it with"
                     " data_preprocess.py --eval_sets, which writes slime-ready sets")
        rows = parquet.metadata.num_rows
        if rows == 0:
            sys.exit(f"error: {where} has no rows")
        described.append(f"{path.stem} ({f'first {cap} of {rows}' if 0 < cap < rows else f'all {rows}'} rows)")
    datasets.append({"name": path.stem, "path": f"{path}@[0:{cap}]" if cap else str(path)})
if datasets:
    print(json.dumps({"eval": {"datasets": datasets}}))
    print("\n".join(described))
PY
}

# Evaluation runs the training hook (slime passes evaluation=True) with the training keys; the sets come from the
# --eval-config file, sampling from these flags (a later --eval-temperature etc. among the extra flags wins).
EVAL_ARGS=()
EVAL_CONFIG_TEXT=""
EVAL_SUMMARY="off (EVAL_INTERVAL=0)"
if ((EVAL_INTERVAL > 0)); then
  if [[ -z "$EVAL_DIR_GIVEN" && ! -e "$EVAL_DIR" ]]; then
    warn "no eval sets at ${EVAL_DIR}: training without evaluation (make them with python" \
      "data_preprocess.py --eval_sets nq,hotpotqa,..., or set EVAL_DIR; EVAL_INTERVAL=0 silences this)"
    EVAL_SUMMARY="off (no ${EVAL_DIR})"
  else
    [[ -d "$EVAL_DIR" ]] || die "EVAL_DIR=${EVAL_DIR} is not a folder; make the eval sets with python" \
      "data_preprocess.py --eval_sets nq,hotpotqa,... (one SET.parquet each) or set EVAL_INTERVAL=0"
    eval_out="$(eval_config)" || exit 1
    [[ -n "$eval_out" ]] || die "EVAL_INTERVAL=${EVAL_INTERVAL} but EVAL_DIR=${EVAL_DIR} holds no *.parquet eval set;" \
      "make them with python data_preprocess.py --eval_sets nq,hotpotqa,... (one SET.parquet each) or set EVAL_INTERVAL=0"
    EVAL_CONFIG_TEXT="${eval_out%%$'\n'*}"
    mapfile -t described <<<"${eval_out#*$'\n'}"
    EVAL_SUMMARY="every ${EVAL_INTERVAL} rollouts and before training, greedy, on ${#described[@]} set(s):"
    EVAL_SUMMARY+="$(printf ' %s,' "${described[@]}")"
    EVAL_SUMMARY="${EVAL_SUMMARY%,}"
    EVAL_ARGS=(
      --eval-interval "$EVAL_INTERVAL"
      --eval-input-key prompt
      --eval-label-key reward_model
      --eval-tool-key tools
      --n-samples-per-eval-prompt 1
      --eval-temperature 0
    )
  fi
fi

MODEL_ARGS=()
if [[ -f "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh" ]]; then
  # shellcheck source=/dev/null
  source "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh"  # defines MODEL_ARGS
elif ((SLIME_FOUND)); then  # else the warning about SLIME_DIR says it
  refuse "${SLIME_DIR}/scripts/models/qwen2.5-3B.sh not found: the train command has no model flags"
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
  --input-key prompt
  --label-key reward_model
  --tool-key tools
  --metadata-key metadata
  --rollout-shuffle
  --num-rollout "$NUM_ROLLOUT"
  --rollout-batch-size "$ROLLOUT_BATCH_SIZE"
  --n-samples-per-prompt "$N_SAMPLES_PER_PROMPT"
  --rollout-max-response-len "$MAX_TOKENS_PER_TURN"
  --rollout-temperature 1.0
  --global-batch-size "$GLOBAL_BATCH_SIZE"
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

# The key itself goes into the private slime config as wandb_key (search_r1_oai/config.py --output), never here.
WANDB_ARGS=()
if [[ -n "${WANDB_API_KEY:-}" ]]; then
  WANDB_ARGS=(--use-wandb --wandb-project "${WANDB_PROJECT:-search-r1-oai}" --wandb-group "${WANDB_GROUP:-qwen2.5-3B-it}")
fi

# A Ray job runs where the cluster's head was started, not where it was submitted: `env --chdir` pins the job to
# SLIME_DIR (slime resolves some paths against it), and train.py is named by its absolute path. The train command
# gets --custom-config-path and the extra flags last (train_cmd).
TRAIN_BASE=(
  env "--chdir=${SLIME_DIR}" python3 "${SLIME_DIR}/train.py"
  --actor-num-nodes "$NUM_NODES"
  --actor-num-gpus-per-node "$NUM_GPUS"
  --rollout-num-gpus "$TOTAL_GPUS"
  --colocate
  "${MODEL_ARGS[@]}"
  "${CKPT_ARGS[@]}"
  "${ROLLOUT_ARGS[@]}"
  "${EVAL_ARGS[@]}"
  "${OPTIMIZER_ARGS[@]}"
  "${GRPO_ARGS[@]}"
  "${WANDB_ARGS[@]}"
  "${PERF_ARGS[@]}"
  "${SGLANG_ARGS[@]}"
  "${MISC_ARGS[@]}"
  "${CUSTOM_ARGS[@]}"
)

# ---- values that cannot work: refused here, in a dry run too, instead of after the GPUs are allocated ----
# The last value of a flag on the train command (argparse: the last one wins), or $2 when it is not there.
flag_value() {
  local name="$1" value="$2" i
  local argv=("${TRAIN_BASE[@]}" "$@")
  for ((i = 0; i < ${#argv[@]}; i++)); do
    case "${argv[i]}" in
      "$name") value="${argv[i + 1]:-}" ;;
      "$name="*) value="${argv[i]#*=}" ;;
    esac
  done
  printf '%s' "$value"
}
# A sizing value as the job will see it: the script's (from its variable), or the last one among the extra flags.
sizing() {  # $1 flag, $2 default; prints the value after checking it is a positive integer
  local value
  value="$(flag_value "$1" "$2" "${EXTRA_FLAGS[@]}")"
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$value'"
  printf '%s' "$value"
}
EXTRA_FLAGS=("$@")
tp="$(sizing --tensor-model-parallel-size "$TP_SIZE")"
pp="$(sizing --pipeline-model-parallel-size 1)"
cp="$(sizing --context-parallel-size 1)"
engine="$(sizing --rollout-num-gpus-per-engine "$TP_SIZE")"
micro="$(sizing --micro-batch-size 1)"  # slime's default
prompts="$(sizing --rollout-batch-size "$ROLLOUT_BATCH_SIZE")"
n_samples="$(sizing --n-samples-per-prompt "$N_SAMPLES_PER_PROMPT")"
global="$(sizing --global-batch-size "$GLOBAL_BATCH_SIZE")"
per_rollout=$((prompts * n_samples))
# Megatron splits each node's GPUs into tensor-parallel groups, and SGLang runs engines of $engine GPUs on one node.
((NUM_GPUS % tp == 0)) || die "the tensor-parallel size $tp (TP_SIZE or --tensor-model-parallel-size) does not" \
  "divide NUM_GPUS=$NUM_GPUS (GPUs per node): Megatron cannot split the node's GPUs into groups of $tp"
((NUM_GPUS % engine == 0)) || die "the SGLang engine size $engine (TP_SIZE or --rollout-num-gpus-per-engine) does" \
  "not divide NUM_GPUS=$NUM_GPUS (GPUs per node): slime cannot place its engines"
# Megatron (validate_args): the world size is a multiple of TP x PP x CP; the rest is data parallel.
((TOTAL_GPUS % (tp * pp * cp) == 0)) || die "NUM_NODES x NUM_GPUS = $TOTAL_GPUS GPUs is not a multiple of" \
  "tensor x pipeline x context parallel = $tp x $pp x $cp (Megatron refuses it)"
dp=$((TOTAL_GPUS / (tp * pp * cp)))
# Megatron's micro-batch calculator (initialized by slime at start): the global batch is whole micro-batches per
# data-parallel rank.
((global % (micro * dp) == 0)) || die "GLOBAL_BATCH_SIZE=$global is not a multiple of micro-batch size x" \
  "data-parallel size = $micro x $dp (${TOTAL_GPUS} GPUs / TP $tp / PP $pp / CP $cp): Megatron refuses it"
# slime (utils/dp_schedule.py) trains in steps of GLOBAL_BATCH_SIZE samples out of each rollout's
# ROLLOUT_BATCH_SIZE x N_SAMPLES_PER_PROMPT, and asserts at the first training step that there is one.
((per_rollout >= global)) || die "a rollout makes ROLLOUT_BATCH_SIZE x N_SAMPLES_PER_PROMPT = $prompts x $n_samples" \
  "= $per_rollout samples, fewer than GLOBAL_BATCH_SIZE=$global: slime fails its first training step"
steps="$(flag_value --num-steps-per-rollout "" "${EXTRA_FLAGS[@]}")"
if [[ -n "$steps" ]]; then
  [[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--num-steps-per-rollout must be a positive integer, got '$steps'"
  ((global == per_rollout / steps)) || die "--num-steps-per-rollout $steps needs GLOBAL_BATCH_SIZE =" \
    "$per_rollout / $steps = $((per_rollout / steps)), got $global (slime refuses it)"
fi
if ((per_rollout % global != 0)); then
  warn "$((per_rollout % global)) of each rollout's $per_rollout samples (ROLLOUT_BATCH_SIZE x" \
    "N_SAMPLES_PER_PROMPT) are not trained on: slime trains whole steps of GLOBAL_BATCH_SIZE=$global"
fi

# The same code the rollout workers run reads the settings now, so a bad value is one line here, not a failed job.
# A key of SEARCH_R1_CONFIG that is one of slime's flags (its own, found in SLIME_DIR/slime, or one on the train
# command) is refused: slime applies the file after validating its flags and building the eval datasets.
# Output: the slime config as one line of YAML.
config_args=(--slime-config --slime-dir "$SLIME_DIR")
if [[ -n "$SEARCH_R1_CONFIG" ]]; then config_args+=(--base "$SEARCH_R1_CONFIG"); fi
SLIME_CONFIG_TEXT="$(python3 "$SCRIPT_DIR/search_r1_oai/config.py" "${config_args[@]}" -- "${TRAIN_BASE[@]:4}" "$@")" ||
  exit 1
if ((${#WARNINGS[@]})); then printf '%s\n' "${WARNINGS[@]}" >&2; fi

# The dashboard (job submission) answers on this node's loopback only; the other ports are bound by Ray where it
# chooses (no flag moves them) and are guarded by the token (README: Security).
HEAD_CMD=(
  ray start --head --block --node-ip-address "$MASTER_ADDR" --port "$RAY_PORT" --dashboard-host 127.0.0.1
  --dashboard-port "$RAY_DASHBOARD_PORT" --num-gpus "$NUM_GPUS" --disable-usage-stats "${RAY_START_EXTRA[@]}"
)
JOB_ID="search-r1-oai-$(date +%Y%m%d-%H%M%S)-$$"

# Ray workers do not inherit this shell's variables: what they need travels in the job's runtime environment (no
# secret: Ray's dashboard lists it and its agent logs it) and the settings and keys in the private slime config.
# `masked` prints it, for --dry-run; `file` writes it to a 0600 file (argument 2).
runtime_env() {
  PYTHONPATH_VALUE="${MEGATRON_DIR}:${SCRIPT_DIR}" python3 - "$@" <<'PY'
import json
import os
import sys

env = {"PYTHONPATH": os.environ["PYTHONPATH_VALUE"], "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
masked = sys.argv[1] == "masked"
text = json.dumps({"env_vars": env})
if masked:
    print(text)
else:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
PY
}

if [[ "$DRY_RUN" -eq 1 ]]; then
  TRAIN_CMD=("${TRAIN_BASE[@]}" --custom-config-path PRIVATE_DIR/slime_config.yaml)
  if [[ -n "$EVAL_CONFIG_TEXT" ]]; then TRAIN_CMD+=(--eval-config PRIVATE_DIR/eval_config.yaml); fi
  TRAIN_CMD+=("$@")
  echo "slime config (--custom-config-path PRIVATE_DIR/slime_config.yaml): $SLIME_CONFIG_TEXT"
  if [[ -n "$EVAL_CONFIG_TEXT" ]]; then echo "eval config (--eval-config PRIVATE_DIR/eval_config.yaml): $EVAL_CONFIG_TEXT"; fi
  echo "runtime_env: $(runtime_env masked)"
  echo "eval: $EVAL_SUMMARY"
  printf 'ray head (unless a cluster answers at %s):' "${MASTER_ADDR}:${RAY_PORT}"
  printf ' %q' "${HEAD_CMD[@]}"
  printf '\n'
  if ((NUM_NODES > 1)); then
    printf 'each worker node:'
    printf ' %q' "${WORKER_CMD[@]}"
    printf '\n'
  fi
  echo "submit: ray job submit --address DASHBOARD_URL_OF_THE_CLUSTER --submission-id ${JOB_ID}" \
    "--runtime-env PRIVATE_RUNTIME_ENV_FILE --no-wait -- python3 -m search_r1_oai.redact_output" \
    "PRIVATE_DIR/slime_config.yaml -- TRAIN_COMMAND (once the cluster has ${TOTAL_GPUS} GPUs; the filter masks the" \
    "config's secrets in the job's output)"
  printf 'train command:'
  printf ' %q' "${TRAIN_CMD[@]}"
  printf '\n'
  exit 0
fi

# ---- live run: everything started below is stopped by cleanup, by PID ----
PRIVATE_DIR="$(mktemp -d -t search-r1-oai-launch.XXXXXX)"  # mode 0700
RUNTIME_ENV_FILE="$PRIVATE_DIR/runtime_env.json"
# slime's driver reads it at start (it runs on this, the head, node), then pickles `args` to every worker.
SLIME_CONFIG_FILE="$PRIVATE_DIR/slime_config.yaml"
EVAL_CONFIG_FILE="$PRIVATE_DIR/eval_config.yaml"  # read by the driver too (slime's parse_args)
TRAIN_CMD=("${TRAIN_BASE[@]}" --custom-config-path "$SLIME_CONFIG_FILE")
if [[ -n "$EVAL_CONFIG_TEXT" ]]; then TRAIN_CMD+=(--eval-config "$EVAL_CONFIG_FILE"); fi
TRAIN_CMD+=("$@")
# slime and Megatron print the config's values (the W&B key among them): the job's output is filtered on its way to
# Ray's log files and `ray job logs`.
JOB_CMD=(python3 -m search_r1_oai.redact_output "$SLIME_CONFIG_FILE" -- "${TRAIN_CMD[@]}")
head_pid=""      # `ray start --head --block` when this script started the head; its session holds the cluster
bg_pid=""        # the helper or log follower being waited for
DASHBOARD_URL=""
job_submitted=0
job_done=0

# shellcheck disable=SC2329  # called from cleanup (the EXIT trap)
alive() {  # a zombie (exited, not yet reaped child) counts as gone
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ "$stat" != Z* ]]
}

# shellcheck disable=SC2329  # called from cleanup (the EXIT trap)
stop_pid() {  # TERM, then KILL after $2 seconds
  local pid="$1" grace="$2" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do alive "$pid" || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2329  # called from cleanup (the EXIT trap)
session_members() { ps -e -o pid=,sid= | awk -v sid="$1" '$2 == sid { print $1 }'; }

# The head runs `ray start --block` in a session of its own (setsid): TERM makes it drain and stop the Ray processes
# it started; whatever of that session outlives it (workers of a dying raylet) is killed by PID. Other Ray clusters
# on this machine, a developer's or another run's, are in other sessions and untouched.
# shellcheck disable=SC2329  # called from cleanup (the EXIT trap)
stop_head() {
  local i leftover
  log "stopping the Ray head this script started (pid $head_pid)"
  stop_pid "$head_pid" 60
  for ((i = 0; i < 50; i++)); do
    leftover="$(session_members "$head_pid")"
    [[ -n "$leftover" ]] || return 0
    # shellcheck disable=SC2086  # one PID per word
    kill -KILL $leftover 2>/dev/null || true
    sleep 0.2
  done
  log "warning: Ray processes of session $head_pid are still there: $leftover"
}

# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM HUP PIPE  # a second Ctrl-C must not cut the cleanup short (it is bounded in time)
  [[ -z "$bg_pid" ]] || stop_pid "$bg_pid" 5
  if ((job_submitted && !job_done)); then
    log "stopping Ray job $JOB_ID"
    if timeout 60 ray job stop --address "$DASHBOARD_URL" "$JOB_ID" >"$PRIVATE_DIR/stop.log" 2>&1; then
      log "job $JOB_ID stopped"
    else
      log "warning: could not confirm that job $JOB_ID stopped: ray job stop --address $DASHBOARD_URL $JOB_ID"
    fi
  fi
  [[ -z "$head_pid" ]] || stop_head
  rm -rf "$PRIVATE_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Waits for a background child so that INT/TERM/HUP are handled at once (bash defers traps during a foreground
# command); returns the child's exit code.
wait_bg() {
  local rc=0
  bg_pid=$!
  wait "$bg_pid" || rc=$?
  bg_pid=""
  return "$rc"
}

answers() {  # something accepts TCP connections at host $1, port $2
  python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()' \
    "$1" "$2" 2>/dev/null
}

runtime_env file "$RUNTIME_ENV_FILE"
# The real config, secrets included (wandb_key from WANDB_API_KEY, retriever_api_key), straight into a 0600 file.
python3 "$SCRIPT_DIR/search_r1_oai/config.py" "${config_args[@]}" --output "$SLIME_CONFIG_FILE" -- \
  "${TRAIN_BASE[@]:4}" "$@" >/dev/null || exit 1
# From here on no process this script starts (Ray's head, `ray` commands) gets the keys in its environment.
unset WANDB_API_KEY RETRIEVER_API_KEY

# Ray token authentication (Ray >= 2.52): the caller's token if there is one, else a new one for a head started
# here, in a 0600 file of the private folder. Worker nodes and `ray` commands find it through RAY_AUTH_TOKEN_PATH
# (or the caller's RAY_AUTH_TOKEN); it is never printed.
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
  RAY_TOKEN_FROM="variable"
elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  [[ -s "$RAY_AUTH_TOKEN_PATH" && -r "$RAY_AUTH_TOKEN_PATH" ]] ||
    die "RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH} is not a readable, non-empty token file"
  RAY_TOKEN_FROM="file"
elif [[ -s "${HOME:-/nonexistent}/.ray/auth_token" ]]; then
  export RAY_AUTH_TOKEN_PATH="${HOME}/.ray/auth_token"
  RAY_TOKEN_FROM="file"
else
  RAY_TOKEN_FROM=""  # none: a head started here gets a new one; a reused cluster is joined without
fi
if [[ -n "$RAY_TOKEN_FROM" ]]; then export RAY_AUTH_MODE=token; fi
if [[ -n "$EVAL_CONFIG_TEXT" ]]; then (umask 077 && printf '%s\n' "$EVAL_CONFIG_TEXT" >"$EVAL_CONFIG_FILE"); fi

if answers "$MASTER_ADDR" "$RAY_PORT"; then
  log "reusing the Ray cluster at ${MASTER_ADDR}:${RAY_PORT} (it keeps running after this script)"
else
  # A head whose dashboard port is taken starts without a dashboard, and a job cannot be submitted to it.
  if answers 127.0.0.1 "$RAY_DASHBOARD_PORT"; then
    die "port ${RAY_DASHBOARD_PORT} is in use (another Ray cluster's dashboard?): set RAY_DASHBOARD_PORT to a free port," \
      "or RAY_PORT to that cluster's port to reuse it"
  fi
  if [[ -z "$RAY_TOKEN_FROM" ]]; then
    export RAY_AUTH_TOKEN_PATH="$PRIVATE_DIR/ray_auth_token"
    python3 -c 'import os, secrets, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, secrets.token_hex(32).encode())
os.close(fd)' "$RAY_AUTH_TOKEN_PATH"
    RAY_TOKEN_FROM="file"
    export RAY_AUTH_MODE=token
  fi
  log "starting a Ray head at ${MASTER_ADDR}:${RAY_PORT} with token authentication (stopped when this script exits)"
  setsid "${HEAD_CMD[@]}" </dev/null >"$PRIVATE_DIR/ray-head.log" 2>&1 &
  head_pid=$!
fi
# The worker command names where the token is, never the token.
WORKER_NOTE=""
case "$RAY_TOKEN_FROM" in
  file)
    WORKER_CMD=(RAY_AUTH_MODE=token "RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH}" "${WORKER_CMD[@]}")
    WORKER_NOTE="(first copy ${RAY_AUTH_TOKEN_PATH} from this node to the same path there, mode 0600)"
    ;;
  variable)
    WORKER_CMD=(RAY_AUTH_MODE=token "${WORKER_CMD[@]}")
    WORKER_NOTE="(with RAY_AUTH_TOKEN set to this node's token)"
    ;;
esac
if ((NUM_NODES > 1)); then
  log "on each of the other $((NUM_NODES - 1)) node(s) run:  ${WORKER_CMD[*]} ${WORKER_NOTE}"
fi

# Connect to the cluster (a driver for a moment), read the dashboard address it reports (where `ray job submit`
# must go; a preset MASTER_ADDR is not it when the dashboard listens on 127.0.0.1) and wait for the GPUs.
# Exit 3: the head started here exited.
timeout --kill-after=10 $((RAY_CLUSTER_TIMEOUT + 60)) python3 - "${MASTER_ADDR}:${RAY_PORT}" "$TOTAL_GPUS" \
  "$RAY_CLUSTER_TIMEOUT" "${head_pid:-0}" "$PRIVATE_DIR/dashboard_url" "${WORKER_CMD[*]}" "$NUM_NODES" <<'PY' &
import os
import signal
import socket
import sys
import time

address, need, timeout_s, head_pid, url_file, worker_cmd, num_nodes = sys.argv[1:8]
need, timeout_s, head_pid, num_nodes = int(need), int(timeout_s), int(head_pid), int(num_nodes)
started = time.monotonic()
deadline = started + timeout_s


def head_exited() -> bool:
    if not head_pid:
        return False
    try:
        with open(f"/proc/{head_pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def check(what: str) -> None:
    if head_exited():
        sys.exit(3)
    if time.monotonic() > deadline:
        waited = time.monotonic() - started
        print(f"error: {what} (waited {waited:.0f}s; RAY_CLUSTER_TIMEOUT={timeout_s})", file=sys.stderr)
        sys.exit(1)


host, port = address.rsplit(":", 1)
while True:
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        break
    except OSError:
        check(f"no Ray head answers at {address}")
        time.sleep(0.5)

import ray  # only once the head answers: ray.init blocks while nothing listens

no_dashboard_since = None
while True:
    try:  # a head that is still starting may answer before it accepts drivers or has registered its dashboard
        context = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        # When the launcher is interrupted it TERMs this helper: leave quietly, without Ray's crash report.
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
        if context.dashboard_url:
            break
        problem = "reports no dashboard (job submission needs one; was it started with --include-dashboard=false?)"
        # The dashboard registers within seconds of a head accepting drivers: do not wait the whole timeout for it.
        if no_dashboard_since is None:
            no_dashboard_since = time.monotonic()
            deadline = min(deadline, no_dashboard_since + 60)
    except Exception as error:  # retried until the deadline, then reported
        problem = f"does not accept a driver: {error}"
        if not os.environ.get("RAY_AUTH_MODE"):
            problem += (" (if it uses token authentication, give its token: RAY_AUTH_TOKEN_PATH=FILE or"
                        " ~/.ray/auth_token)")
    ray.shutdown()
    check(f"the Ray cluster at {address} {problem}")
    time.sleep(1)

seen = None
while True:
    gpus = ray.cluster_resources().get("GPU", 0)
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if gpus >= need:
        break
    if (gpus, nodes) != seen:
        print(f"[train] waiting for GPUs: {gpus:g} of {need} on {nodes} node(s)", flush=True)
        seen = (gpus, nodes)
    hint = f"on each worker node run: {worker_cmd}" if num_nodes > 1 else "lower NUM_GPUS or add a node"
    check(f"the Ray cluster at {address} has {gpus:g} GPU(s) on {nodes} node(s), the run needs {need}"
          f" (NUM_NODES={num_nodes} x NUM_GPUS={need // num_nodes}); {hint}")
    time.sleep(2)

url = context.dashboard_url
url = url if "://" in url else f"http://{url}"
if not head_pid:  # a reused cluster: does it let in anyone?
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=10).close()
        open_to_all = True
    except (urllib.error.URLError, OSError):  # 401: it wants a token
        open_to_all = False
    if open_to_all:
        print(f"[train] warning: the Ray cluster at {address} has no authentication: anyone who reaches its ports can"
              " submit jobs (run any code as its user) and read every job's environment and logs; start it with"
              " RAY_AUTH_MODE=token (README: Security)", flush=True)
with open(url_file, "w") as f:
    f.write(url)
PY
wait_bg || {
  rc=$?
  if ((rc == 3)); then
    tail -n 30 "$PRIVATE_DIR/ray-head.log" >&2
    die "the Ray head exited while starting (its output is above; if a port it needs is taken, move it with RAY_START_ARGS)"
  fi
  ((rc != 124 && rc != 137)) || die "no answer from the Ray cluster at ${MASTER_ADDR}:${RAY_PORT} within $((RAY_CLUSTER_TIMEOUT + 60))s"
  exit "$rc"
}
DASHBOARD_URL="$(cat "$PRIVATE_DIR/dashboard_url")"
log "Ray dashboard: $DASHBOARD_URL"

# The job belongs to this script: its own submission id, stopped by cleanup unless it has ended. The submit runs in
# the foreground, so an interrupt is handled only after it returns and the stop cannot miss the job.
job_submitted=1
if ! ray job submit --address "$DASHBOARD_URL" --submission-id "$JOB_ID" --runtime-env "$RUNTIME_ENV_FILE" \
  --no-wait -- "${JOB_CMD[@]}" >"$PRIVATE_DIR/submit.log" 2>&1; then
  cat "$PRIVATE_DIR/submit.log" >&2
  die "ray job submit failed (output above)"
fi
elsewhere="ray job logs|status|stop --address $DASHBOARD_URL $JOB_ID"
if [[ -n "$RAY_TOKEN_FROM" ]]; then elsewhere="RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=TOKEN_FILE $elsewhere"; fi
log "job $JOB_ID submitted; from elsewhere: $elsewhere"

export PYTHONUNBUFFERED=1
ray job logs --address "$DASHBOARD_URL" --follow "$JOB_ID" &
wait_bg || true

# The job's final state decides the exit code. If the log stream broke while the job runs, keep waiting for it.
while :; do
  outcome="$(python3 - "$DASHBOARD_URL" "$JOB_ID" <<'PY'
import sys

from ray.job_submission import JobSubmissionClient

info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])
code = getattr(info, "driver_exit_code", None)
print(info.status.value if hasattr(info.status, "value") else info.status, "" if code is None else code)
PY
)" || die "lost contact with the Ray cluster ($DASHBOARD_URL) while job $JOB_ID ran"
  read -r status code <<<"$outcome"
  case "$status" in
    SUCCEEDED | FAILED | STOPPED) break ;;
  esac
  log "the log stream ended while job $JOB_ID is $status; waiting for it (ray job logs --address $DASHBOARD_URL $JOB_ID)"
  sleep 10 &
  wait_bg
done
job_done=1
case "$status" in
  SUCCEEDED)
    log "job $JOB_ID succeeded"
    exit 0
    ;;
  FAILED)
    [[ "${code:-}" =~ ^[1-9][0-9]*$ && "$code" -le 255 ]] || code=1
    log "job $JOB_ID failed (exit code $code)"
    exit "$code"
    ;;
  *)
    log "job $JOB_ID was stopped from outside this script"
    exit 1
    ;;
esac
