#!/usr/bin/env bash
# One command for a training run: start the retriever in tmux, wait until it is healthy, train in a second
# tmux window, and stop the retriever (and the tmux session this script made) when training ends or on Ctrl-C.
#
#   bash run_qwen2.5-3B-it-with-retrieval.sh [--attach] [-- extra slime flags...]
#
#   --attach      attach to the training window once it starts; detaching (Ctrl-b d) leaves the run going and
#                 this script keeps waiting for it to finish
#   -h, --help    this text
#
# Watch from any terminal: tmux attach -t slime-search-r1   (window 0 retriever, window 1 training)
#
# Environment (defaults in brackets):
#   RETRIEVAL_SERVER_URL     retriever address the rollout uses [http://127.0.0.1:8000]; its port is the server's port
#   TMUX_SESSION             tmux session name [slime-search-r1]
#   LOG_DIR                  where retriever-*.log and training-*.log go [./logs]
#   RETRIEVER_READY_TIMEOUT  seconds to wait for GET /health [600]
#   RETRIEVER_GPUS           CUDA_VISIBLE_DEVICES for the retriever [unset: all visible]
#   TRAIN_SCRIPT             training script [run_qwen2.5-3B-it.sh next to this file]
#   plus every variable of local_dense_retriever/start_server.sh (SAVE_PATH, INDEX_PATH, CORPUS_PATH,
#   RETRIEVER_MODEL, TOPK, FAISS_GPU, FP16, RETRIEVER_PYTHON) and of the training script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMUX_SESSION="${TMUX_SESSION:-slime-search-r1}"
LOG_DIR="${LOG_DIR:-$ROOT/logs}"
RETRIEVER_READY_TIMEOUT="${RETRIEVER_READY_TIMEOUT:-600}"
TRAIN_SCRIPT="${TRAIN_SCRIPT:-$ROOT/run_qwen2.5-3B-it.sh}"
export RETRIEVAL_SERVER_URL="${RETRIEVAL_SERVER_URL:-http://127.0.0.1:8000}"

usage() { bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; }
log() { echo "[with-retrieval] $*"; }
die() { echo "[with-retrieval] error: $*" >&2; exit 1; }

ATTACH=0
while (($#)); do
  case "$1" in
    --attach) ATTACH=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument: $1 (slime flags go after --; see --help)" ;;
  esac
done
TRAIN_ARGS=("$@")

# The first replica in a comma-separated list is the one this script starts.
first_url="${RETRIEVAL_SERVER_URL%%,*}"
RETRIEVER_PORT="$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).port or 80)' "$first_url")"

command -v tmux >/dev/null || die "tmux is not installed (apt-get install -y tmux)"
command -v curl >/dev/null || die "curl is not installed (apt-get install -y curl)"
[[ -f "$TRAIN_SCRIPT" ]] || die "training script not found: $TRAIN_SCRIPT"
if tmux has-session -t "=$TMUX_SESSION" 2>/dev/null; then
  die "tmux session '$TMUX_SESSION' already exists (an earlier run?). Attach with: tmux attach -t $TMUX_SESSION;" \
    "end it with: tmux kill-session -t $TMUX_SESSION; or set TMUX_SESSION to another name"
fi
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:${RETRIEVER_PORT}/"; then
  die "port $RETRIEVER_PORT is already in use; stop what listens there or change RETRIEVAL_SERVER_URL"
fi

mkdir -p "$LOG_DIR"
stamp="$(date +%Y%m%d_%H%M%S)"
RETRIEVER_LOG="$LOG_DIR/retriever-$stamp.log"
TRAINING_LOG="$LOG_DIR/training-$stamp.log"
STATUS_FILE="$LOG_DIR/.training-$stamp.status"
retriever_pid=""

# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$retriever_pid" ]] && kill -0 "$retriever_pid" 2>/dev/null; then
    log "stopping retriever (pid $retriever_pid)"
    kill -TERM "$retriever_pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$retriever_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$retriever_pid" 2>/dev/null || true
  fi
  tmux kill-session -t "=$TMUX_SESSION" 2>/dev/null || true
  rm -f "$STATUS_FILE"
  log "cleaned up; logs: $RETRIEVER_LOG $TRAINING_LOG"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Window 0: the retriever. start_server.sh execs the server, so the pane's PID is the server's PID.
retriever_cmd="$(printf '%q ' bash "$ROOT/local_dense_retriever/start_server.sh" --port "$RETRIEVER_PORT" --log "$RETRIEVER_LOG")"
if [[ -n "${RETRIEVER_GPUS:-}" ]]; then
  retriever_cmd="CUDA_VISIBLE_DEVICES=$(printf '%q' "$RETRIEVER_GPUS") $retriever_cmd"
fi
log "starting retriever on port $RETRIEVER_PORT (log: $RETRIEVER_LOG)"
tmux new-session -d -s "$TMUX_SESSION" -n retriever -x 200 -y 50
tmux set-option -w -t "=$TMUX_SESSION:0" remain-on-exit on
tmux respawn-pane -k -t "=$TMUX_SESSION:0" "$retriever_cmd"
retriever_pid="$(tmux display-message -p -t "=$TMUX_SESSION:0" '#{pane_pid}')"

log "waiting up to ${RETRIEVER_READY_TIMEOUT}s for http://127.0.0.1:${RETRIEVER_PORT}/health"
start=$SECONDS
until curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:${RETRIEVER_PORT}/health"; do
  if ! kill -0 "$retriever_pid" 2>/dev/null || [[ "$(tmux display-message -p -t "=$TMUX_SESSION:0" '#{pane_dead}')" == 1 ]]; then
    echo "----- retriever output -----" >&2
    tmux capture-pane -p -t "=$TMUX_SESSION:0" -S -40 >&2 || true
    die "the retriever exited before it became ready (full log: $RETRIEVER_LOG)"
  fi
  if ((SECONDS - start >= RETRIEVER_READY_TIMEOUT)); then
    tail -n 40 "$RETRIEVER_LOG" >&2 || true
    die "the retriever was not ready after ${RETRIEVER_READY_TIMEOUT}s (log: $RETRIEVER_LOG; tmux attach -t $TMUX_SESSION)"
  fi
  sleep 1
done
log "retriever ready after $((SECONDS - start))s"

# Window 1: training. The status file tells this script when training ended and how.
train_cmd="cd $(printf '%q' "$ROOT") && $(printf '%q ' bash "$TRAIN_SCRIPT" "${TRAIN_ARGS[@]}") 2>&1 | tee $(printf '%q' "$TRAINING_LOG"); \
echo \"\${PIPESTATUS[0]}\" > $(printf '%q' "$STATUS_FILE")"
tmux new-window -t "=$TMUX_SESSION:1" -n training -e "RETRIEVAL_SERVER_URL=$RETRIEVAL_SERVER_URL" "bash -c $(printf '%q' "$train_cmd")"
log "training started (log: $TRAINING_LOG)"
log "watch it: tmux attach -t $TMUX_SESSION   (Ctrl-b 0 retriever, Ctrl-b 1 training, Ctrl-b d detach)"

if [[ "$ATTACH" -eq 1 && -t 0 && -t 1 ]]; then
  tmux attach -t "=$TMUX_SESSION:1" || true
fi
until [[ -s "$STATUS_FILE" ]]; do
  tmux has-session -t "=$TMUX_SESSION" 2>/dev/null || die "tmux session '$TMUX_SESSION' disappeared before training ended"
  sleep 2
done
train_rc="$(cat "$STATUS_FILE")"
log "training finished with exit code $train_rc"
exit "$train_rc"
