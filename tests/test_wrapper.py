"""The tmux wrapper run for real: real tmux, the real retriever on the toy index, a fake training script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "run_qwen2.5-3B-it-with-retrieval.sh"

FAKE_TRAINING = """#!/usr/bin/env bash
set -euo pipefail
echo "args: $*"
echo "url: $RETRIEVAL_SERVER_URL"
curl -sf -X POST "$RETRIEVAL_SERVER_URL/retrieve" -H 'content-type: application/json' \\
  -d '{"queries": ["QUESTION"], "topk": 3}' > "OUT"
sleep "${FAKE_TRAIN_SECONDS:-0}"
exit "${FAKE_TRAIN_EXIT:-0}"
"""


def session_exists(name: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", f"={name}"], capture_output=True).returncode == 0


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        return True
    except httpx.TransportError:
        return False


@pytest.fixture
def wrapper_env(tmp_path: Path, toy_index, toy_facts, minilm_dir: Path, port: int):
    index, corpus = toy_index
    session = f"test-search-r1-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "retrieved.json"
    train = tmp_path / "fake_train.sh"
    train.write_text(FAKE_TRAINING.replace("QUESTION", toy_facts[0].question).replace("OUT", str(out)))
    env = {
        **os.environ,
        "TMUX_SESSION": session,
        "LOG_DIR": str(tmp_path / "logs"),
        "RETRIEVAL_SERVER_URL": f"http://127.0.0.1:{port}",
        "RETRIEVER_PYTHON": sys.executable,
        "INDEX_PATH": str(index),
        "CORPUS_PATH": str(corpus),
        "RETRIEVER_MODEL": str(minilm_dir),
        "RETRIEVER_READY_TIMEOUT": "120",
        "TRAIN_SCRIPT": str(train),
    }
    yield env, out
    subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)


def test_wrapper_runs_training_against_a_healthy_retriever_then_cleans_up(wrapper_env, toy_facts, port: int) -> None:
    env, out = wrapper_env
    result = subprocess.run(
        ["bash", str(WRAPPER), "--", "--num-rollout", "2"],
        env={**env, "FAKE_TRAIN_EXIT": "3"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 3, result.stdout + result.stderr  # training's exit code is the wrapper's
    assert "retriever ready" in result.stdout
    documents = json.loads(out.read_text())["result"][0]
    assert toy_facts[0].passage_id in [doc["id"] for doc in documents]
    logs = Path(env["LOG_DIR"])
    training_log = next(logs.glob("training-*.log")).read_text()
    assert "args: --num-rollout 2" in training_log and f"url: http://127.0.0.1:{port}" in training_log
    assert next(logs.glob("retriever-*.log")).stat().st_size > 0
    assert not session_exists(env["TMUX_SESSION"])
    assert not port_open(port)


def test_wrapper_stops_everything_on_ctrl_c(wrapper_env, port: int) -> None:
    env, out = wrapper_env
    wrapper = subprocess.Popen(
        ["bash", str(WRAPPER)],
        env={**env, "FAKE_TRAIN_SECONDS": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not out.exists():
            assert wrapper.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        assert session_exists(env["TMUX_SESSION"]) and port_open(port)
        wrapper.send_signal(signal.SIGINT)
        output, _ = wrapper.communicate(timeout=60)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 130, output
    assert "stopping retriever" in output
    assert not session_exists(env["TMUX_SESSION"])
    assert not port_open(port)


def test_wrapper_reports_a_retriever_that_cannot_start(wrapper_env, tmp_path: Path) -> None:
    env, _ = wrapper_env
    env = {**env, "INDEX_PATH": str(tmp_path / "missing.index")}
    result = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "exited before it became ready" in result.stderr
    assert "index not found" in result.stderr  # the retriever's own message is shown, not hidden in a log
    assert not session_exists(env["TMUX_SESSION"])


def test_wrapper_refuses_to_reuse_an_existing_session(wrapper_env) -> None:
    env, _ = wrapper_env
    subprocess.run(["tmux", "new-session", "-d", "-s", env["TMUX_SESSION"]], check=True)
    result = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert session_exists(env["TMUX_SESSION"])  # somebody else's session is left alone
