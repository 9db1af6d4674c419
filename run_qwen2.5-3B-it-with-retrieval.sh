#!/usr/bin/env bash
# One command for a training run: start the retriever in tmux, wait until it is healthy, run the preflight, train in
# a second tmux window, and stop the retriever (and the tmux session this script made) when training ends, when the
# preflight fails, or on Ctrl-C.
#
#   bash run_qwen2.5-3B-it-with-retrieval.sh [--attach] [-- extra slime flags...]
#   bash run_qwen2.5-3B-it-with-retrieval.sh --cleanup
#
#   --attach      show the training window once it starts: `tmux attach` from a terminal (detach with Ctrl-b d:
#                 the run goes on, this script keeps waiting and prints how to reattach), `tmux switch-client`
#                 when run inside tmux
#   --cleanup     stop what a run killed with SIGKILL left running and remove its leftovers, then exit: exactly the
#                 processes, tmux session and run folder its record names (same TMUX_SESSION and LOG_DIR as that
#                 run); a PID is stopped only while it is still the process the record names (same start time)
#   -h, --help    this text
#
# Watch from any terminal: tmux attach -t slime-search-r1   (window 0 retriever, window 1 training; training is
# window 0 when no retriever is started here)
#
# What it needs is checked before the retriever or any tmux session is started, each mistake as one line saying
# what to do: tmux and a python3 >= 3.11 on PATH (which runs search_r1_launch/wrapper*.py, standard library only);
# the retriever's index, corpus, python and a free port; the training script; what
# run_qwen2.5-3B-it.sh reads (SLIME_DIR/train.py, HF_CKPT, REF_LOAD, DATA_DIR/train.parquet; when TRAIN_SCRIPT is
# another script, only HF_CKPT and DATA_DIR, for the preflight); and PREFLIGHT_PYTHON: found, Python >= 3.11, and
# able to import what the preflight imports (pyarrow, numpy, transformers, jinja2, httpx, tenacity; yaml with
# SEARCH_R1_CONFIG). If the training window is killed, everything is stopped and the exit code is 1.
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
#   SLIME_DIR, REF_LOAD      checked up front as run_qwen2.5-3B-it.sh reads them [/root/slime,
#                            /root/Qwen2.5-3B-Instruct_torch_dist]
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

# Settings (the defaults; every one is read from the environment of the same name).
TMUX_SESSION="${TMUX_SESSION:-slime-search-r1}"
LOG_DIR="${LOG_DIR:-$ROOT/logs}"
RETRIEVER_READY_TIMEOUT="${RETRIEVER_READY_TIMEOUT:-600}"
TRAIN_SCRIPT="${TRAIN_SCRIPT:-$ROOT/run_qwen2.5-3B-it.sh}"
SKIP_PREFLIGHT="${SKIP_PREFLIGHT:-0}"
PREFLIGHT_PYTHON="${PREFLIGHT_PYTHON:-python3}"
# What the training script reads, checked before anything starts (run_qwen2.5-3B-it.sh reads the same file).
# shellcheck source=scripts/run_paths.sh
source "$ROOT/scripts/run_paths.sh"
# The retriever started here: its bind address, GPUs and extra variable names (see above).
HOST="${HOST:-}"
RETRIEVER_GPUS="${RETRIEVER_GPUS:-}"
RETRIEVER_ENV="${RETRIEVER_ENV:-}"

# The mechanics (checks, tmux windows, health waits, preflight, the run's record, cleanup) live in
# search_r1_launch/wrapper*.py. exec: the PID a Ctrl-C or --cleanup signals is this script's. The environment goes
# along on fd 3 exactly as it is here: a python3 that is a pyenv shim changes PATH on its way.
command -v python3 >/dev/null || { echo "[with-retrieval] error: python3 (>= 3.11) is needed; put one on PATH" >&2; exit 1; }
exec python3 "$ROOT/search_r1_launch/wrapper.py" \
  --script "${BASH_SOURCE[0]}" --session "$TMUX_SESSION" --log-dir "$LOG_DIR" \
  --ready-timeout "$RETRIEVER_READY_TIMEOUT" --train-script "$TRAIN_SCRIPT" --skip-preflight "$SKIP_PREFLIGHT" \
  --preflight-python "$PREFLIGHT_PYTHON" --slime-dir "$SLIME_DIR" --hf-ckpt "$HF_CKPT" --ref-load "$REF_LOAD" \
  --data-dir "$DATA_DIR" --host "$HOST" --retriever-gpus "$RETRIEVER_GPUS" --retriever-env "$RETRIEVER_ENV" \
  --environ-fd 3 -- "$@" 3< <(env -0)
