#!/usr/bin/env bash
# Start the retrieval server (retrieval_server.py) from the folder's own venv, in the foreground.
#
#   bash local_dense_retriever/start_server.sh [--port N] [--host H] [--log FILE] [--check] [-- extra server flags...]
#   bash local_dense_retriever/start_server.sh INDEX CORPUS TOPK NAME MODEL [LOG_FILE [PORT]]   (slime example form)
#
# The server process replaces this script (exec), so the PID of `bash start_server.sh` is the server's PID:
# stop it with `kill PID`. With a log file, output goes to the terminal and is appended to the file (tee).
# The server opens its port at once and loads in the background: poll GET /health until it answers 200.
#
# Options (each also settable by environment variable, shown in brackets):
#   --port N          TCP port [PORT, default 8000]
#   --host H          interface to bind [HOST, default 127.0.0.1]
#   --log FILE        also append all output to FILE [LOG_FILE, default: none]
#   --check           only check what the server needs (index, corpus, python, a valid port nobody listens on,
#                     the encoder: a local folder, in the Hugging Face cache, or (network allowed) on the Hub;
#                     index rows = corpus lines, read from the index header and the corpus' offsets sidecar,
#                     counted when the corpus is under 2 GB), loading nothing; print what to do if something is
#                     missing, and exit: 0 when it can start
#   -- FLAGS...       passed to retrieval_server.py as they are, e.g. -- --max_batch_size 512
#   -h, --help        this text
# Environment:
#   SAVE_PATH         download folder of download.py [default ~/search_r1_data: $HOME, or the passwd home when
#                     HOME is unset (systemd units, env -i), as download.py does]
#   INDEX_PATH        FAISS index [default $SAVE_PATH/e5_Flat.index]
#   CORPUS_PATH       jsonl corpus [default $SAVE_PATH/wiki-18.jsonl]
#   RETRIEVER_MODEL   encoder dir or Hub name [default $SAVE_PATH/e5-base-v2 if present, else intfloat/e5-base-v2]
#   RETRIEVER_NAME    encoder family [default e5]
#   TOPK              passages per query by default [default 3]
#   FAISS_GPU=1       add --faiss_gpu (shard the index over all visible GPUs; needs faiss-gpu-cu12)
#   FP16=1            add --fp16 (encoder in fp16 on CUDA)
#   RETRIEVER_BACKEND add --backend: faiss (the server's default) or torch (exact search in torch over a flat
#                     index, streamed to every visible GPU in fp16, float32 on CPU; prints a memory plan per GPU
#                     at start and refuses before allocating when it does not fit; tune with
#                     -- --torch_memory_gb N --torch_dtype bfloat16 --torch_chunk_rows N)
#   RETRIEVER_ARGS    more retrieval_server.py flags, split on spaces, before those after -- (how the training
#                     wrapper passes them), e.g. RETRIEVER_ARGS="--torch_memory_gb 10" [none]
#   RETRIEVER_PYTHON  python that runs the server [default local_dense_retriever/.venv/bin/python]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Not $HOME: it is unset under systemd units and `env -i`. Bash's ~ falls back to the passwd entry, as Python's
# Path.home() in download.py does; it stays a literal ~ when the user has none.
home=~
if [[ "$home" == "~" ]]; then home=""; fi
SAVE_PATH="${SAVE_PATH:-${home:+$home/search_r1_data}}"
PORT="${PORT:-8000}"
HOST="${HOST:-127.0.0.1}"
LOG_FILE="${LOG_FILE:-}"
TOPK="${TOPK:-3}"
RETRIEVER_NAME="${RETRIEVER_NAME:-e5}"
RETRIEVER_PYTHON="${RETRIEVER_PYTHON:-$SCRIPT_DIR/.venv/bin/python}"
EXTRA=()
CHECK_ONLY=0

usage() { bash "$SCRIPT_DIR/../scripts/print_usage.sh" "${BASH_SOURCE[0]}"; }
die() { echo "[start_server] error: $*" >&2; exit 1; }

if (($#)) && [[ "$1" != -* ]]; then
  (($# >= 5 && $# <= 7)) || die "positional form: INDEX CORPUS TOPK NAME MODEL [LOG_FILE [PORT]] (got $# arguments)"
  INDEX_PATH="$1" CORPUS_PATH="$2" TOPK="$3" RETRIEVER_NAME="$4" RETRIEVER_MODEL="$5"
  LOG_FILE="${6:-$LOG_FILE}" PORT="${7:-$PORT}"
  set --
fi
while (($#)); do
  case "$1" in
    --port) (($# >= 2)) || die "--port needs a value"; PORT="$2"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --host) (($# >= 2)) || die "--host needs a value"; HOST="$2"; shift 2 ;;
    --host=*) HOST="${1#*=}"; shift ;;
    --log) (($# >= 2)) || die "--log needs a file"; LOG_FILE="$2"; shift 2 ;;
    --log=*) LOG_FILE="${1#*=}"; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument: $1 (server flags go after --; see --help)" ;;
  esac
done

if [[ -z "$SAVE_PATH" && (-z "${INDEX_PATH:-}" || -z "${CORPUS_PATH:-}") ]]; then
  die "HOME is unset and user $(id -u) has no home directory: set SAVE_PATH (or INDEX_PATH and CORPUS_PATH)"
fi
INDEX_PATH="${INDEX_PATH:-$SAVE_PATH/e5_Flat.index}"
CORPUS_PATH="${CORPUS_PATH:-$SAVE_PATH/wiki-18.jsonl}"
if [[ -z "${RETRIEVER_MODEL:-}" ]]; then
  RETRIEVER_MODEL="intfloat/e5-base-v2"
  if [[ -n "$SAVE_PATH" && -f "$SAVE_PATH/e5-base-v2/config.json" ]]; then RETRIEVER_MODEL="$SAVE_PATH/e5-base-v2"; fi
fi

if ! [[ "$PORT" =~ ^[0-9]{1,5}$ ]] || ((10#$PORT < 1 || 10#$PORT > 65535)); then
  die "port must be a number in 1..65535 (got '$PORT')"
fi
download_hint="run: python local_dense_retriever/download.py --save_path $SAVE_PATH  (or set INDEX_PATH/CORPUS_PATH)"
[[ -f "$INDEX_PATH" ]] || die "index not found: INDEX_PATH=$INDEX_PATH; $download_hint"
[[ -f "$CORPUS_PATH" ]] || die "corpus not found: CORPUS_PATH=$CORPUS_PATH; $download_hint"
[[ -x "$RETRIEVER_PYTHON" ]] ||
  die "no python at $RETRIEVER_PYTHON: run bash local_dense_retriever/setup_venv.sh (or set RETRIEVER_PYTHON)"

if ((CHECK_ONLY)); then
  # Any TCP listener counts, HTTP or not: connect to the address the server would bind (a wildcard: loopback).
  probe="${HOST#\[}"
  probe="${probe%\]}"
  case "$probe" in "" | 0.0.0.0) probe=127.0.0.1 ;; ::) probe=::1 ;; esac
  # shellcheck disable=SC2016  # $1 and $2 belong to the inner bash
  if timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$probe" "$PORT" 2>/dev/null; then
    die "port $PORT on $probe is already in use (something listens there): stop it or choose another port"
  fi
  # Encoder and row counts, without loading either (retriever/startup_check.py says how).
  if ! report="$(PYTHONPATH="$SCRIPT_DIR${PYTHONPATH:+:$PYTHONPATH}" "$RETRIEVER_PYTHON" -m retriever.startup_check \
    --index "$INDEX_PATH" --corpus "$CORPUS_PATH" --model "$RETRIEVER_MODEL" 2>&1)"; then
    # Only what failed, so the training wrapper can quote it as one line.
    { grep -v '^ok: ' <<<"$report" || true; } | sed 's/^/[start_server] /' >&2
    exit 1
  fi
  while IFS= read -r line; do echo "[start_server] $line"; done <<<"$report"
  echo "[start_server] ok: index, corpus and $RETRIEVER_PYTHON found; port $PORT on $probe is free"
  exit 0
fi

cmd=("$RETRIEVER_PYTHON" "$SCRIPT_DIR/retrieval_server.py"
  --index_path "$INDEX_PATH" --corpus_path "$CORPUS_PATH" --topk "$TOPK"
  --retriever_name "$RETRIEVER_NAME" --retriever_model "$RETRIEVER_MODEL" --host "$HOST" --port "$PORT")
if [[ "${FAISS_GPU:-0}" == 1 ]]; then cmd+=(--faiss_gpu); fi
if [[ "${FP16:-0}" == 1 ]]; then cmd+=(--fp16); fi
if [[ -n "${RETRIEVER_BACKEND:-}" ]]; then
  [[ "$RETRIEVER_BACKEND" == faiss || "$RETRIEVER_BACKEND" == torch ]] ||
    die "RETRIEVER_BACKEND must be faiss or torch (got '$RETRIEVER_BACKEND')"
  cmd+=(--backend "$RETRIEVER_BACKEND")
fi
read -r -a env_args <<<"${RETRIEVER_ARGS:-}"
cmd+=("${env_args[@]}" "${EXTRA[@]}")

if [[ -n "$LOG_FILE" ]]; then
  mkdir -p "$(dirname "$LOG_FILE")"
  # tee is a child of this shell; it keeps running after exec and ends when the server closes its output.
  exec > >(tee -a "$LOG_FILE") 2>&1
fi
echo "[start_server] $(date '+%F %T') pid $$: $(printf '%q ' "${cmd[@]}")"
export PYTHONUNBUFFERED=1
exec "${cmd[@]}"
