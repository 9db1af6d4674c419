#!/usr/bin/env bash
# One command for a training run: start the retriever in tmux, wait until it is healthy, run the preflight, train in
# a second tmux window, and stop the retriever (and the tmux session this script made) when training ends, when the
# preflight fails, or on Ctrl-C.
#
#   bash run_qwen2.5-3B-it-with-retrieval.sh [--attach] [-- extra slime flags...]
#   bash run_qwen2.5-3B-it-with-retrieval.sh --cleanup
#
#   --attach      show the training window once it starts: `tmux attach` from a terminal (detach with Ctrl-b d:
#                 the run goes on and this script keeps waiting), `tmux switch-client` when run inside tmux
#   --cleanup     stop what a run killed with SIGKILL left running and remove its leftovers, then exit: exactly the
#                 processes, tmux session and run folder its record names (same TMUX_SESSION and LOG_DIR as that
#                 run); a PID is stopped only while it is still the process the record names (same start time)
#   -h, --help    this text
#
# Watch from any terminal: tmux attach -t slime-search-r1   (window 0 retriever, window 1 training; training is
# window 0 when no retriever is started here)
#
# What it needs (index, corpus, the retriever's python, a free port, the training script) is checked before any
# tmux session is made. If the training window is killed, everything is stopped and the exit code is 1.
#
# The preflight (python -m search_r1_oai.preflight) runs once every replica answers /health and before training
# starts: it reads the training data as slime will (DATA_DIR/train.parquet), renders the chat template of HF_CKPT
# with the search tool, and searches through the rollout's own client at RETRIEVAL_SERVER_URL. Its report (one
# ok/FAIL line per check, with what to do) is printed and kept as LOG_DIR/preflight-*.log; a FAIL stops the run
# (retriever and tmux session included) with exit code 1 before any GPU work. The policy is not checked here: slime
# starts SGLang inside training. SKIP_PREFLIGHT=1 skips it.
#
# The training window runs with exactly the environment this script was started with, whether or not a tmux server
# is already running: every variable below and those of the scripts it starts (SEARCH_R1_*, WANDB_API_KEY, HF_CKPT,
# CUDA_VISIBLE_DEVICES, PATH...); only TERM is tmux's. The retriever's window gets only what the retriever reads:
# PATH, HOME, USER, locale, TMPDIR, start_server.sh's variables, RETRIEVER_*, CUDA_*, NVIDIA_*, LD_LIBRARY_PATH,
# HF_* (not HF_CKPT), HUGGINGFACE_*, TRANSFORMERS_*, TORCH_*, PYTORCH_*, OMP_*, MKL_*, PYTHONPATH, VIRTUAL_ENV,
# proxies and CA bundles, plus the names in RETRIEVER_ENV; never WANDB_API_KEY or SEARCH_R1_*. Each window's
# variables travel in a private file (mode 0600 in a 0700 folder) that the window deletes as soon as it has read
# it (the wrapper waits for that, up to 60 s), never through a command line or tmux's own environment. The exit
# code is training's.
#
# A retriever started here on an address beyond loopback (HOST, or a URL naming this machine's hostname) requires
# a bearer token on /retrieve: RETRIEVER_API_KEY, the caller's if set, else one generated for this run, reaches
# the retriever's window and the training window (and the preflight) through their environment, never argv.
#
# What a run starts (its PID and start time, the retriever's and training's pane PIDs, the tmux session, the port,
# the run folder) is recorded in LOG_DIR/.with-retrieval-<TMUX_SESSION>.run (mode 0600) until it has cleaned up.
# A run killed with SIGKILL leaves that record: the next start names what of it still runs and refuses (or, when
# nothing does, removes its leftovers and goes on); --cleanup stops exactly that and removes the leftovers.
#
# Environment (defaults in brackets):
#   RETRIEVAL_SERVER_URL     retriever address the rollout uses [http://127.0.0.1:8000]; comma-separated for
#                            replicas. The first one is started here, on the URL's port, when its host is this
#                            machine (localhost, 127.x.x.x, ::1, 0.0.0.0, this machine's hostname or addresses);
#                            any other host is only health-checked. Every replica must answer GET /health first
#   SEARCH_R1_TOPK           the rollout's passages per query [3]; the retriever started here gets it as --topk
#                            (the default for requests that name none), so TOPK, if set, must equal it
#   SEARCH_R1_CONFIG         the training script's settings YAML; its retrieval_server_url and search_r1_topk count
#                            here too, below the variables (as in the training script)
#   TMUX_SESSION             tmux session name [slime-search-r1]
#   LOG_DIR                  where retriever-*.log and training-*.log go [logs/ next to this file]
#   RETRIEVER_READY_TIMEOUT  seconds to wait for GET /health of every replica [600]
#   RETRIEVER_GPUS           CUDA_VISIBLE_DEVICES for the retriever [unset: the caller's]
#   HOST                     address the started retriever binds [the URL's address: 127.0.0.1 for localhost,
#                            0.0.0.0 for a hostname that resolves to a non-loopback address]
#   TRAIN_SCRIPT             training script [run_qwen2.5-3B-it.sh next to this file]
#   DATA_DIR, HF_CKPT        what the preflight checks, as the training script reads them (relative paths from this
#                            file's folder): DATA_DIR/train.parquet [data/search_r1_processed next to this file] and
#                            the checkpoint's tokenizer [/root/Qwen2.5-3B-Instruct]
#   PREFLIGHT_PYTHON         the python that runs the preflight, with this folder on PYTHONPATH [python3]
#   SKIP_PREFLIGHT           1: start training without the preflight [0]
#   RETRIEVER_ENV            more variable names for the retriever's window, space-separated [none]
#   RETRIEVER_API_KEY        bearer token the retriever requires on /retrieve and the rollout sends [generated when
#                            the retriever started here binds beyond loopback; else none]
#   TMPDIR                   where the run's private folder (environment file, exit status) is made [/tmp]
#   plus every variable of local_dense_retriever/start_server.sh (SAVE_PATH, INDEX_PATH, CORPUS_PATH,
#   RETRIEVER_MODEL, TOPK, FAISS_GPU, FP16, RETRIEVER_BACKEND, RETRIEVER_ARGS, RETRIEVER_PYTHON) and of the
#   training script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
START_SERVER="$ROOT/local_dense_retriever/start_server.sh"
TMUX_SESSION="${TMUX_SESSION:-slime-search-r1}"
LOG_DIR="${LOG_DIR:-$ROOT/logs}"
RETRIEVER_READY_TIMEOUT="${RETRIEVER_READY_TIMEOUT:-600}"
TRAIN_SCRIPT="${TRAIN_SCRIPT:-$ROOT/run_qwen2.5-3B-it.sh}"
SKIP_PREFLIGHT="${SKIP_PREFLIGHT:-0}"
PREFLIGHT_PYTHON="${PREFLIGHT_PYTHON:-python3}"
SEARCH_R1_CONFIG="${SEARCH_R1_CONFIG:-}"

usage() { bash "$ROOT/scripts/print_usage.sh" "${BASH_SOURCE[0]}"; }
log() { echo "[with-retrieval] $*"; }
die() { echo "[with-retrieval] error: $*" >&2; exit 1; }

ATTACH=0
CLEANUP=0
while (($#)); do
  case "$1" in
    --attach) ATTACH=1; shift ;;
    --cleanup) CLEANUP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    --dry-run) die "this script has no dry run (it starts a retriever); check the training with: bash run_qwen2.5-3B-it.sh --dry-run" ;;
    *) die "unknown argument: $1 (slime flags go after --; see --help)" ;;
  esac
done
TRAIN_ARGS=("$@")
if ((CLEANUP)) && ((ATTACH || ${#TRAIN_ARGS[@]})); then die "--cleanup takes no other argument"; fi
[[ "$TMUX_SESSION" =~ ^[^[:cntrl:]:.]+$ ]] ||
  die "TMUX_SESSION must be a non-empty name without control characters, ':' or '.' (got '$TMUX_SESSION')"
# The training script's --dry-run counts anywhere among its flags: here it would start the retriever for nothing.
for arg in "${TRAIN_ARGS[@]}"; do
  [[ "$arg" != --dry-run ]] ||
    die "--dry-run after -- would start the retriever for nothing: run bash run_qwen2.5-3B-it.sh --dry-run [flags]"
done

# ---------------------------------------------------------------------------------------------------------------
# The run's record: what it started, so that a run killed with SIGKILL can be found and cleaned up by the next one.
TMUX_BIN="$(command -v tmux || true)"
ENV_BIN="$(command -v env)"
RM_BIN="$(command -v rm)"
# tmux runs with a minimal environment: a server it starts must not hold the caller's secrets (tmux
# show-environment -g would print them). The windows get the caller's environment from a file instead.
tm() {
  local keep=() name
  for name in HOME PATH USER LOGNAME SHELL TERM LANG LC_ALL LC_CTYPE TMPDIR TMUX TMUX_PANE TMUX_TMPDIR; do
    if [[ -n "${!name:-}" ]]; then keep+=("$name=${!name}"); fi
  done
  "$ENV_BIN" -i "${keep[@]}" "$TMUX_BIN" "$@"
}

running() { # $1: pid, or -pgid for a process group. A zombie has ended: its parent just has not reaped it yet.
  kill -0 -- "$1" 2>/dev/null || return 1
  command -v ps >/dev/null || return 0
  if [[ "$1" == -* ]]; then
    ps -e -o pgid=,stat= | awk -v group="${1#-}" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
  else
    [[ "$(ps -o stat= -p "$1")" != Z* ]]
  fi
}

stop_pid() { # $1: pid (negative: a process group), $2: what, $3: seconds to wait after TERM before KILL
  local pid="$1" _
  running "$pid" || return 0
  log "stopping $2 (pid ${pid#-})"
  kill -TERM -- "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(($3 * 2))); do running "$pid" || return 0; sleep 0.5; done
  kill -KILL -- "$pid" 2>/dev/null || true
}

proc_start() { # $1: pid; prints its start time (/proc/PID/stat field 22); fails for no such process or a zombie
  local stat fields
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || return 1
  { stat="$(<"/proc/$1/stat")"; } 2>/dev/null || return 1
  read -r -a fields <<<"${stat##*") "}"
  [[ "${fields[0]}" != Z ]] || return 1
  printf '%s' "${fields[19]}"
}

ours() { # $1: pid, $2: its recorded start time; true while that very process runs (a reused PID has another)
  local now
  [[ -n "$2" ]] && now="$(proc_start "$1")" && [[ "$now" == "$2" ]]
}

# The record lives next to the logs, one per session name: the next run with the same LOG_DIR and TMUX_SESSION
# finds it whatever TMPDIR it has.
record_file() { printf '%s/.with-retrieval-%s.run' "$1" "${TMUX_SESSION//[^A-Za-z0-9_-]/_}"; }

RECORD=""
rec_session_created=""
rec_socket=""
rec_retriever=""
rec_training=""
record_write() { # the record as it stands now, complete or not at all (temp file in its folder, then mv)
  local tmp
  tmp="$(mktemp "$RECORD.XXXXXX")" # mode 0600
  {
    printf 'wrapper=%s %s\n' "$$" "$(proc_start "$$")"
    printf 'started=%s\n' "$RUN_STARTED"
    printf 'session=%s\n' "$TMUX_SESSION"
    printf 'session_created=%s\n' "$rec_session_created"
    printf 'socket=%s\n' "$rec_socket"
    printf 'run_dir=%s\n' "$RUN_DIR"
    printf 'host=%s\n' "$RETRIEVER_HOST"
    printf 'port=%s\n' "$RETRIEVER_PORT"
    printf 'retriever=%s\n' "$rec_retriever"
    printf 'training=%s\n' "$rec_training"
  } >"$tmp"
  mv -f -- "$tmp" "$RECORD"
}

record_read() { # sets r_* from $RECORD; a value that is not of its expected form is ignored
  local key value pid start
  r_wrapper_pid="" r_wrapper_start="" r_retriever_pid="" r_retriever_start="" r_training_pid="" r_training_start=""
  r_started=0 r_session="" r_session_created="" r_socket="" r_run_dir="" r_host="" r_port=""
  while IFS='=' read -r key value; do
    case "$key" in
      wrapper | retriever | training)
        read -r pid start _ <<<"$value"
        if [[ "$pid" =~ ^[1-9][0-9]*$ && "$start" =~ ^[0-9]+$ ]]; then
          printf -v "r_${key}_pid" '%s' "$pid"
          printf -v "r_${key}_start" '%s' "$start"
        fi
        ;;
      started | session_created | port) if [[ "$value" =~ ^[0-9]+$ ]]; then printf -v "r_$key" '%s' "$value"; fi ;;
      session) if [[ "$value" =~ ^[^[:cntrl:]:.]+$ ]]; then r_session="$value"; fi ;;
      socket | run_dir) if [[ "$value" == /* ]]; then printf -v "r_$key" '%s' "$value"; fi ;;
      host) if [[ "$value" =~ ^[][0-9A-Za-z.:-]+$ ]]; then r_host="$value"; fi ;;
    esac
  done <"$RECORD"
}

rtm() { # tmux on the server the recorded run used
  if [[ -n "$r_socket" && -S "$r_socket" ]]; then tm -S "$r_socket" "$@"; else tm "$@"; fi
}

record_session_ours() { # the recorded tmux session exists and is the one that run made (same creation time)
  local created
  [[ -n "$r_session" && -n "$TMUX_BIN" ]] || return 1
  created="$(rtm display-message -p -t "=$r_session:" '#{session_created}' 2>/dev/null)" || return 1
  if [[ -n "$r_session_created" ]]; then [[ "$created" == "$r_session_created" ]]; else ((created >= r_started)); fi
}

port_held() { # $1: host, $2: port; something listens there (a wildcard is probed on loopback)
  local probe="${1#\[}"
  probe="${probe%\]}"
  case "$probe" in "" | 0.0.0.0) probe=127.0.0.1 ;; ::) probe=::1 ;; esac
  # shellcheck disable=SC2016  # $1 and $2 belong to the inner bash
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$probe" "$2" 2>/dev/null
}

record_alive() { # sets ALIVE: what of the recorded run still runs, one description each
  ALIVE=()
  if ours "$r_wrapper_pid" "$r_wrapper_start"; then ALIVE+=("its wrapper (pid $r_wrapper_pid)"); fi
  if ours "$r_retriever_pid" "$r_retriever_start"; then ALIVE+=("retriever pid $r_retriever_pid"); fi
  if ours "$r_training_pid" "$r_training_start"; then ALIVE+=("training pid $r_training_pid"); fi
  if record_session_ours; then ALIVE+=("tmux session '$r_session'"); fi
}

alive_list() { # ALIVE, comma-separated
  local list
  list="$(printf '%s, ' "${ALIVE[@]}")"
  printf '%s' "${list%, }"
}

port_note() { # what the recorded port looks like now
  [[ -n "$r_port" ]] || return 0
  if port_held "$r_host" "$r_port"; then
    printf '; port %s on %s is held' "$r_port" "${r_host:-127.0.0.1}"
  else
    printf '; port %s on %s is free' "$r_port" "${r_host:-127.0.0.1}"
  fi
}

remove_leftovers() { # the recorded run folder (only one this script makes: search-r1-run.*, ours) and the record
  if [[ -n "$r_run_dir" && "${r_run_dir##*/}" == search-r1-run.* && -d "$r_run_dir" && ! -L "$r_run_dir" &&
    -O "$r_run_dir" ]]; then
    rm -rf -- "$r_run_dir"
    log "removed its run folder $r_run_dir (environment file included)"
  fi
  rm -f -- "$RECORD"
}

if ((CLEANUP)); then
  [[ -d "$LOG_DIR" ]] || { log "nothing to clean up: LOG_DIR=$LOG_DIR does not exist"; exit 0; }
  RECORD="$(record_file "$(cd "$LOG_DIR" && pwd)")"
  [[ -f "$RECORD" ]] || { log "nothing to clean up: no record of a run of session '$TMUX_SESSION' in $LOG_DIR"; exit 0; }
  record_read
  record_alive
  if ((${#ALIVE[@]})); then running_now="$(alive_list)"; else running_now="nothing"; fi
  log "record $RECORD: $running_now still running$(port_note)"
  if ours "$r_wrapper_pid" "$r_wrapper_start"; then
    # Still running: its own exit trap stops what it started (training gets up to 150 s to stop).
    log "stopping its wrapper (pid $r_wrapper_pid); it stops what it started"
    kill -TERM "$r_wrapper_pid" 2>/dev/null || true
    for _ in $(seq 1 400); do ours "$r_wrapper_pid" "$r_wrapper_start" || break; sleep 0.5; done
  fi
  if ours "$r_retriever_pid" "$r_retriever_start"; then stop_pid "$r_retriever_pid" retriever 10; fi
  # The training pane leads its process group (training script, tee, what they started), as in cleanup below.
  if ours "$r_training_pid" "$r_training_start"; then stop_pid "-$r_training_pid" training 150; fi
  if record_session_ours; then
    rtm kill-session -t "=$r_session" 2>/dev/null || true
    log "removed tmux session '$r_session'"
  fi
  remove_leftovers
  record_alive
  ((${#ALIVE[@]} == 0)) || die "still running after cleanup: $(alive_list)"
  log "cleaned up the run of session '$r_session'$(port_note)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# Checks: nothing is started until every one of them passes.
[[ -n "$TMUX_BIN" ]] || die "tmux is not installed (apt-get install -y tmux)"
command -v curl >/dev/null || die "curl is not installed (apt-get install -y curl)"
command -v python3 >/dev/null || die "python3 is needed to read RETRIEVAL_SERVER_URL; put one on PATH"
[[ "$RETRIEVER_READY_TIMEOUT" =~ ^[0-9]+$ ]] ||
  die "RETRIEVER_READY_TIMEOUT must be a whole number of seconds (got '$RETRIEVER_READY_TIMEOUT')"
# The training window starts in $ROOT: a relative SEARCH_R1_CONFIG is made absolute for it.
if [[ -n "$SEARCH_R1_CONFIG" ]]; then
  [[ "$SEARCH_R1_CONFIG" == /* ]] || export SEARCH_R1_CONFIG="$PWD/$SEARCH_R1_CONFIG"
fi
# A setting as the rollout will see it (variable, else SEARCH_R1_CONFIG's key, else the default), read by the same
# table the training script uses.
setting() {
  local args=(--value "$1") out
  if [[ -n "$SEARCH_R1_CONFIG" ]]; then args+=(--base "$SEARCH_R1_CONFIG"); fi
  out="$(python3 "$ROOT/search_r1_oai/config.py" "${args[@]}" 2>&1)" || die "${out#error: }"
  printf '%s' "$out"
}
RETRIEVAL_URLS="$(setting RETRIEVAL_SERVER_URL)"
# One top-k: the retriever started here serves the rollout's as its default.
ROLLOUT_TOPK="$(setting SEARCH_R1_TOPK)"
if [[ -n "${TOPK:-}" && "$TOPK" != "$ROLLOUT_TOPK" ]]; then
  die "TOPK=$TOPK differs from the rollout's top-k $ROLLOUT_TOPK: the retriever started here uses the rollout's;" \
    "set SEARCH_R1_TOPK (or search_r1_topk in SEARCH_R1_CONFIG) instead of TOPK"
fi
[[ -f "$TRAIN_SCRIPT" ]] || die "training script not found: TRAIN_SCRIPT=$TRAIN_SCRIPT"
[[ "$SKIP_PREFLIGHT" == 0 || "$SKIP_PREFLIGHT" == 1 ]] || die "SKIP_PREFLIGHT must be 0 or 1 (got '$SKIP_PREFLIGHT')"
if ((!SKIP_PREFLIGHT)); then
  command -v "$PREFLIGHT_PYTHON" >/dev/null ||
    die "PREFLIGHT_PYTHON=$PREFLIGHT_PYTHON not found: name the python that has this project's dependencies, or SKIP_PREFLIGHT=1"
fi
# The training window runs the training script from $ROOT, so its relative paths are relative to $ROOT.
from_root() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$ROOT" "$1"; fi; }
PREFLIGHT_DATA="$(from_root "${DATA_DIR:-$ROOT/data/search_r1_processed}")/train.parquet"
PREFLIGHT_TOKENIZER="$(from_root "${HF_CKPT:-/root/Qwen2.5-3B-Instruct}")"
train_script="$(cd "$(dirname "$TRAIN_SCRIPT")" && pwd)/$(basename "$TRAIN_SCRIPT")"
mkdir -p "$LOG_DIR" || die "cannot create LOG_DIR=$LOG_DIR"
log_dir="$(cd "$LOG_DIR" && pwd)"

# An earlier run of this session killed before it cleaned up: refuse while any of it runs, else tidy up after it.
RECORD="$(record_file "$log_dir")"
if [[ -f "$RECORD" ]]; then
  record_read
  record_alive
  if ours "$r_wrapper_pid" "$r_wrapper_start"; then
    die "a run of session '$r_session' is still going (its wrapper is pid $r_wrapper_pid; record: $RECORD): watch it" \
      "with: tmux attach -t $r_session; stop it with: bash ${BASH_SOURCE[0]} --cleanup; or set TMUX_SESSION and" \
      "RETRIEVAL_SERVER_URL (port) for a second run"
  fi
  if ((${#ALIVE[@]})); then
    die "an earlier run of session '$r_session' was killed before it cleaned up (record: $RECORD); still running:" \
      "$(alive_list)$(port_note); stop exactly these and remove its leftovers with:" \
      "bash ${BASH_SOURCE[0]} --cleanup (same TMUX_SESSION and LOG_DIR)"
  fi
  log "an earlier run of session '$r_session' was killed before it cleaned up; nothing of it still runs"
  remove_leftovers
fi

if tm has-session -t "=$TMUX_SESSION" 2>/dev/null; then
  die "tmux session '$TMUX_SESSION' already exists (an earlier run?). Attach with: tmux attach -t $TMUX_SESSION;" \
    "end it with: tmux kill-session -t $TMUX_SESSION; or set TMUX_SESSION to another name"
fi

# One line per replica: local|remote, port, address to bind, URL. A host is local when it is a loopback or
# wildcard address, localhost, this machine's hostname, or resolves to an address this machine can bind.
replicas="$(python3 - "$RETRIEVAL_URLS" <<'PY'
import ipaddress
import socket
import sys
from urllib.parse import urlsplit


def addresses(host):
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def owned(address):
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(address), 0))  # only an address of this machine can be bound
        except OSError:
            return False
    return True


for url in (part.strip().rstrip("/") for part in sys.argv[1].split(",")):
    if not url:
        continue
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"bad\t0\t-\t{url}")
        continue
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        print(f"local\t{port}\t127.0.0.1\t{url}")
        continue
    found = addresses(host)
    if not (host == socket.gethostname().lower() or any(owned(address) for address in found)):
        print(f"remote\t{port}\t-\t{url}")
        continue
    if len(found) == 1 and str(found[0]) == host:  # an address literal: bind that very address
        bind = host
    elif found and all(address.is_loopback for address in found):
        bind = "127.0.0.1" if ipaddress.ip_address("127.0.0.1") in found else str(found[0])
    else:
        bind = "0.0.0.0"
    print(f"local\t{port}\t{bind}\t{url}")
PY
)" || die "could not read RETRIEVAL_SERVER_URL=$RETRIEVAL_URLS"
URLS=()
RETRIEVER_PORT=""
RETRIEVER_HOST=""
LOCAL_URLS=() # reached without a proxy
START_LOCAL=0
while IFS=$'\t' read -r kind port bind url; do
  [[ "$kind" != bad ]] ||
    die "RETRIEVAL_SERVER_URL entry '$url' is not an http(s) URL with a host and a valid port; fix RETRIEVAL_SERVER_URL"
  if [[ "$kind" == local ]]; then
    if ((${#URLS[@]} == 0)); then START_LOCAL=1 RETRIEVER_PORT="$port" RETRIEVER_HOST="${HOST:-$bind}"; fi
    LOCAL_URLS+=("$url")
  fi
  URLS+=("$url")
done <<<"$replicas"
((${#URLS[@]})) || die "RETRIEVAL_SERVER_URL names no URL (got '$RETRIEVAL_URLS')"

if ((START_LOCAL)); then
  # start_server.sh's own checks: index, corpus, its python, and a port nobody listens on (HTTP or not).
  check="$("$BASH" "$START_SERVER" --check --port "$RETRIEVER_PORT" --host "$RETRIEVER_HOST" 2>&1)" ||
    die "the retriever for ${URLS[0]} cannot start: ${check#\[start_server\] error: }"
else
  log "${URLS[0]} is not on this machine: no retriever is started here, it is only health-checked"
fi
# Beyond loopback anyone on the network reaches /retrieve: it requires a bearer token, the caller's or a fresh one.
# It travels in the windows' environment files (and this script's environment, for the preflight), never on argv.
if ((START_LOCAL)) && [[ -z "${RETRIEVER_API_KEY:-}" ]]; then
  case "$RETRIEVER_HOST" in
    127.* | ::1 | "[::1]" | localhost) ;;
    *)
      RETRIEVER_API_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" ||
        die "could not generate RETRIEVER_API_KEY with python3's secrets module; set RETRIEVER_API_KEY yourself"
      export RETRIEVER_API_KEY
      log "the retriever binds $RETRIEVER_HOST, beyond loopback: /retrieve requires a bearer token generated for" \
        "this run (RETRIEVER_API_KEY in the retriever's and training's environment)"
      ;;
  esac
fi

# ---------------------------------------------------------------------------------------------------------------
stamp="$(date +%Y%m%d_%H%M%S)"
RETRIEVER_LOG="$log_dir/retriever-$stamp.log"
TRAINING_LOG="$log_dir/training-$stamp.log"
PREFLIGHT_LOG="$log_dir/preflight-$stamp.log"
RUN_STARTED="$(date +%s)"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/search-r1-run.XXXXXX")" # mode 0700: the environment files and the status
record_write
ENV_FILE="$RUN_DIR/environment"
RETRIEVER_ENV_FILE="$RUN_DIR/retriever.environment"
STATUS_FILE="$RUN_DIR/training.status"
SESSION_MADE=0
retriever_pid=""
train_pid=""

existing_logs() {
  local file found=()
  for file in "$RETRIEVER_LOG" "$PREFLIGHT_LOG" "$TRAINING_LOG"; do
    if [[ -f "$file" ]]; then found+=("$file"); fi
  done
  if ((${#found[@]})); then echo "logs: ${found[*]}"; else echo "no log was written"; fi
}

# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$retriever_pid" ]]; then stop_pid "$retriever_pid" retriever 10; fi
  # Training that did not finish (Ctrl-C, its window killed): its pane leads a process group holding the
  # training script, tee and what they started; TERM lets the launcher run its exit trap (ray job stop, then
  # the Ray head it started, up to 60 s each), so it gets that long before KILL.
  if [[ -n "$train_pid" ]]; then stop_pid "-$train_pid" training 150; fi
  if ((SESSION_MADE)); then tm kill-session -t "=$TMUX_SESSION" 2>/dev/null || true; fi
  rm -rf "$RUN_DIR"
  rm -f "$RECORD"
  log "cleaned up; $(existing_logs)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What the retriever's window gets of the caller's environment: what start_server.sh, the server and its
# libraries read (see the header), never the training's settings or secrets.
retriever_reads() {
  case "$1" in
    HF_CKPT) return 1 ;;
    PATH | HOME | USER | LOGNAME | SHELL | LANG | LANGUAGE | LC_* | TZ | TMPDIR | SAVE_PATH | INDEX_PATH | CORPUS_PATH | \
      TOPK | FAISS_GPU | FP16 | RETRIEVER_* | CUDA_* | NVIDIA_* | LD_LIBRARY_PATH | HF_* | HUGGINGFACE_* | \
      TRANSFORMERS_* | SENTENCE_TRANSFORMERS_HOME | TOKENIZERS_PARALLELISM | TORCH_* | PYTORCH_* | OMP_* | MKL_* | \
      KMP_* | OPENBLAS_* | XDG_CACHE_HOME | PYTHONPATH | PYTHONHOME | VIRTUAL_ENV | CONDA_PREFIX | http_proxy | \
      https_proxy | no_proxy | all_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY | ALL_PROXY | SSL_CERT_FILE | \
      SSL_CERT_DIR | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE) return 0 ;;
  esac
  [[ " ${RETRIEVER_ENV:-} " == *" $1 "* ]]
}

# write_env FILE all|retriever: the caller's exported environment (all of it, or what the retriever reads), one
# `export NAME=value` per variable (%q-quoted), in a file created 0600. Left out: names that are not identifiers,
# read-only shell variables, and what belongs to the terminal the caller runs in (TMUX, TMUX_PANE, TERM: a pane is
# a tmux terminal).
write_env() {
  local name
  (umask 077 && : >"$1")
  for name in $(compgen -e); do
    case "$name" in TMUX | TMUX_PANE | TERM | _) continue ;; esac
    if [[ "$2" == retriever ]] && ! retriever_reads "$name"; then continue; fi
    if [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -v "$name" && "${!name@a}" != *r* ]]; then
      printf 'export %s=%q\n' "$name" "${!name}"
    fi
  done >"$1"
}

# A runner's first line: read the environment file, then delete it, so that it exists only until its window
# has read it (even when this script was killed meanwhile).
source_once() { printf '. %q; %q -f -- %q\n' "$1" "$RM_BIN" "$1"; }

# wait_read FILE WINDOW WHAT: until WINDOW's runner has read and deleted FILE. A pane that ended first is
# reported by the caller's own checks; one that never reads it stops the run.
ENV_READ_TIMEOUT=60
wait_read() {
  local deadline=$((SECONDS + ENV_READ_TIMEOUT))
  while [[ -e "$1" ]]; do
    if pane_gone "$2"; then rm -f -- "$1"; return 0; fi
    if ((SECONDS >= deadline)); then
      rm -f -- "$1"
      die "the $3 window did not read its environment file within ${ENV_READ_TIMEOUT}s (is tmux or its shell stuck?)"
    fi
    sleep 0.1
  done
}

# open_window INDEX NAME RUNNER: window INDEX runs RUNNER under `env -i`, so it sees exactly the variables of
# the environment file RUNNER reads (and TERM, tmux's terminal type). It starts on a placeholder until remain-on-exit is on: a command
# that fails at once stays readable. Sets PANE_PID.
open_window() {
  local placeholder=("$BASH" --noprofile --norc -c 'read -r _') term
  if (($1 == 0)); then
    SESSION_MADE=1
    tm new-session -d -s "$TMUX_SESSION" -n "$2" -x 200 -y 50 -c "$PWD" "${placeholder[@]}"
    rec_session_created="$(tm display-message -p -t "=$TMUX_SESSION:" '#{session_created}')"
    rec_socket="$(tm display-message -p -t "=$TMUX_SESSION:" '#{socket_path}')"
    record_write
  else
    tm new-window -d -t "=$TMUX_SESSION:$1" -n "$2" -c "$PWD" "${placeholder[@]}"
  fi
  tm set-option -w -t "=$TMUX_SESSION:$1" remain-on-exit on
  term="$(tm show-options -gv default-terminal)"
  tm respawn-pane -k -t "=$TMUX_SESSION:$1" -c "$PWD" "$ENV_BIN" -i "TERM=$term" "$BASH" --noprofile --norc "$3"
  PANE_PID="$(tm display-message -p -t "=$TMUX_SESSION:$1" '#{pane_pid}')"
}

pane_gone() { # $1: window; true when its process has ended (or the session is gone)
  local dead
  dead="$(tm display-message -p -t "=$TMUX_SESSION:$1" '#{pane_dead}' 2>/dev/null)" || return 0
  [[ "$dead" == 1 ]]
}

training_window=0
if ((START_LOCAL)); then
  # Window 0: the retriever. start_server.sh execs the server, so the pane's PID is the server's PID.
  write_env "$RETRIEVER_ENV_FILE" retriever
  {
    source_once "$RETRIEVER_ENV_FILE"
    if [[ -n "${RETRIEVER_GPUS:-}" ]]; then printf 'export CUDA_VISIBLE_DEVICES=%q\n' "$RETRIEVER_GPUS"; fi
    printf 'export TOPK=%q\n' "$ROLLOUT_TOPK"
    printf 'exec %s\n' "$(printf '%q ' "$BASH" "$START_SERVER" --port "$RETRIEVER_PORT" --host "$RETRIEVER_HOST" \
      --log "$RETRIEVER_LOG")"
  } >"$RUN_DIR/retriever.sh"
  log "starting the retriever on $RETRIEVER_HOST:$RETRIEVER_PORT"
  open_window 0 retriever "$RUN_DIR/retriever.sh"
  retriever_pid="$PANE_PID"
  rec_retriever="$retriever_pid $(proc_start "$retriever_pid" || true)"
  record_write
  wait_read "$RETRIEVER_ENV_FILE" 0 retriever
  training_window=1
fi

log "waiting up to ${RETRIEVER_READY_TIMEOUT}s for GET /health of: ${URLS[*]}"
start=$SECONDS
pending=("${URLS[@]}")
while ((${#pending[@]})); do
  still=()
  for url in "${pending[@]}"; do
    proxy=()
    if [[ " ${LOCAL_URLS[*]} " == *" $url "* ]]; then proxy=(--noproxy '*'); fi
    curl -sf -o /dev/null --max-time 5 "${proxy[@]}" "$url/health" || still+=("$url")
  done
  pending=("${still[@]}")
  ((${#pending[@]})) || break
  if ((START_LOCAL)) && { ! running "$retriever_pid" || pane_gone 0; }; then
    echo "----- retriever output -----" >&2
    tm capture-pane -p -t "=$TMUX_SESSION:0" -S -40 >&2 || true
    die "the retriever exited before it became ready ($(existing_logs))"
  fi
  if ((SECONDS - start >= RETRIEVER_READY_TIMEOUT)); then
    if ((START_LOCAL)) && [[ " ${pending[*]} " == *" ${URLS[0]} "* && -f "$RETRIEVER_LOG" ]]; then
      tail -n 40 "$RETRIEVER_LOG" >&2 || true
    fi
    die "no answer to GET /health after ${RETRIEVER_READY_TIMEOUT}s from: ${pending[*]}" \
      "(start it, fix RETRIEVAL_SERVER_URL or raise RETRIEVER_READY_TIMEOUT; $(existing_logs))"
  fi
  sleep 1
done
log "retriever ready after $((SECONDS - start))s${retriever_pid:+ (log: $RETRIEVER_LOG)}"

# The preflight, against the retriever that is up now. It runs in $ROOT (its package is there) with the caller's
# environment; a failure leaves through cleanup (retriever stopped, session killed).
if ((SKIP_PREFLIGHT)); then
  log "preflight skipped (SKIP_PREFLIGHT=1)"
else
  preflight=("$PREFLIGHT_PYTHON" -m search_r1_oai.preflight --data "$PREFLIGHT_DATA" --tokenizer "$PREFLIGHT_TOKENIZER"
    --retrieval-url "$(IFS=,; printf '%s' "${URLS[*]}")")
  log "preflight:$(printf ' %q' "${preflight[@]}")"
  preflight_rc=0
  (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "${preflight[@]}") </dev/null >"$PREFLIGHT_LOG" 2>&1 ||
    preflight_rc=$?
  if ((preflight_rc != 0)); then
    cat "$PREFLIGHT_LOG" >&2
    die "preflight failed (exit code $preflight_rc; its report is above and in $PREFLIGHT_LOG): fix what it marks" \
      "FAIL, or set SKIP_PREFLIGHT=1 to train anyway"
  fi
  cat "$PREFLIGHT_LOG"
  log "preflight passed"
fi

# The training window: its runner writes training's exit code to the status file when training ends.
write_env "$ENV_FILE" all
{
  source_once "$ENV_FILE"
  printf 'cd %q\n' "$ROOT"
  printf '%s2>&1 | tee %q\n' "$(printf '%q ' "$BASH" "$train_script" "${TRAIN_ARGS[@]}")" "$TRAINING_LOG"
  # shellcheck disable=SC2016  # expanded by the runner
  printf 'echo "${PIPESTATUS[0]}" >%q\n' "$STATUS_FILE"
} >"$RUN_DIR/training.sh"
: >"$TRAINING_LOG" # exists from now on, so the path printed below is one that exists
open_window "$training_window" training "$RUN_DIR/training.sh"
train_pid="$PANE_PID"
rec_training="$train_pid $(proc_start "$train_pid" || true)"
record_write
wait_read "$ENV_FILE" "$training_window" training
log "training started (log: $TRAINING_LOG)"
windows="Ctrl-b $training_window training, Ctrl-b d detach"
if ((START_LOCAL)); then windows="Ctrl-b 0 retriever, $windows"; fi
log "watch it: tmux attach -t $TMUX_SESSION   ($windows)"

if ((ATTACH)); then
  if [[ -n "${TMUX:-}" ]]; then
    # Inside tmux, attaching would nest; switch this client instead, and back when the session ends.
    tm set-option -t "=$TMUX_SESSION:" detach-on-destroy off || true
    if tm switch-client -t "=$TMUX_SESSION:$training_window" 2>/dev/null; then
      log "switched this tmux client to $TMUX_SESSION (this script goes on waiting in the window it was started in)"
    else
      log "could not switch the tmux client; run: tmux switch-client -t $TMUX_SESSION"
    fi
  elif [[ -t 0 && -t 1 ]]; then
    tm attach -t "=$TMUX_SESSION:$training_window" || true
    if tm has-session -t "=$TMUX_SESSION" 2>/dev/null; then log "reattach with: tmux attach -t $TMUX_SESSION"; fi
  else
    log "--attach needs a terminal; watch with: tmux attach -t $TMUX_SESSION"
  fi
fi

# Training ends when its runner writes the status file. A pane whose process ended without writing it was killed.
until [[ -s "$STATUS_FILE" ]]; do
  if ! running "$train_pid" || pane_gone "$training_window"; then
    [[ -s "$STATUS_FILE" ]] && break
    if [[ -f "$TRAINING_LOG" ]]; then where="see its log: $TRAINING_LOG"; else where="it wrote no log"; fi
    die "training ended without reporting an exit code (its window was killed or closed); $where"
  fi
  sleep 1
done
train_rc="$(<"$STATUS_FILE")"
train_pid="" # it finished: what it left running is its own business, as without this script
log "training finished with exit code $train_rc"
exit "$train_rc"
