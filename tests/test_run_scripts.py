"""The training launcher and the tmux wrapper, run for real (tmux, the real retriever on the toy index)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

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
