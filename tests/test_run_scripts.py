"""The training launcher and the tmux wrapper, run for real (tmux, the real retriever on the toy index)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "run_qwen2.5-3B-it.sh"
WRAPPER = ROOT / "run_qwen2.5-3B-it-with-retrieval.sh"


def dry_run(*args: str, **env: str) -> tuple[dict, list[str]]:
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    runtime_line, command_line = result.stdout.strip().splitlines()
    runtime_env = json.loads(runtime_line.removeprefix("runtime_env: "))
    return runtime_env, shlex.split(command_line.removeprefix("train command:"))


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_train_command_uses_the_oai_hook_and_message_prompts() -> None:
    _, argv = dry_run(DATA_DIR="/data/x")
    assert flag(argv, "--custom-generate-function-path") == "generate_with_search_oai.generate"
    assert flag(argv, "--custom-rm-path") == "generate_with_search_oai.reward_func"
    assert flag(argv, "--prompt-data") == "/data/x/train.parquet"
    assert (flag(argv, "--input-key"), flag(argv, "--label-key"), flag(argv, "--tool-key")) == (
        "prompt",
        "reward_model",
        "tools",
    )
    assert "--apply-chat-template" not in argv  # prompts stay OpenAI messages; the chat endpoint renders them
    assert flag(argv, "--sglang-tool-call-parser") == "qwen25"


def test_settings_and_extra_flags_reach_the_ray_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    runtime_env, argv = dry_run(
        "--num-rollout", "7", RETRIEVAL_SERVER_URL="http://a:1,http://b:2", SEARCH_R1_MAX_TURNS="3", NUM_GPUS="2"
    )
    env_vars = runtime_env["env_vars"]
    assert env_vars["RETRIEVAL_SERVER_URL"] == "http://a:1,http://b:2"
    assert env_vars["SEARCH_R1_MAX_TURNS"] == "3"
    assert str(ROOT) in env_vars["PYTHONPATH"].split(":")  # slime imports generate_with_search_oai from here
    assert argv[-2:] == ["--num-rollout", "7"]
    assert flag(argv, "--rollout-num-gpus") == "2" and "--use-wandb" not in argv


def test_wandb_key_never_appears_on_the_command_line() -> None:
    runtime_env, argv = dry_run(WANDB_API_KEY="secret-key-123")
    assert "--use-wandb" in argv
    assert "secret-key-123" not in " ".join(argv) + json.dumps(runtime_env)


def test_train_script_explains_missing_prerequisites(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(TRAIN)], env={**os.environ, "SLIME_DIR": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "slime not found" in result.stderr and str(tmp_path) in result.stderr


@pytest.mark.parametrize("script", [TRAIN, WRAPPER], ids=lambda p: p.name)
def test_help_names_every_environment_variable_the_script_reads(script: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(script), "--help"], env={**os.environ, "SLIME_DIR": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("Train" if script == TRAIN else "One command")
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", script.read_text()))
    missing = sorted(name for name in read if name not in result.stdout)
    assert read and not missing, f"--help of {script.name} does not mention {missing}"


# ---- the tmux wrapper --------------------------------------------------------------------------------------------

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
