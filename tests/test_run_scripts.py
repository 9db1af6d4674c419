"""The training launcher and the tmux wrapper, run for real (tmux, the real retriever on the toy index)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "run_qwen2.5-3B-it.sh"
WRAPPER = ROOT / "run_qwen2.5-3B-it-with-retrieval.sh"


def dry_run_lines(*args: str, **env: str) -> dict[str, str]:
    """The --dry-run output as {label: rest of the line}, e.g. {"train command": "env --chdir=... python3 ..."}."""
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = (line.split(": ", 1) for line in result.stdout.strip().splitlines())
    return {label.split(" (")[0]: rest.strip() for label, rest in lines}


def dry_run(*args: str, **env: str) -> tuple[dict, list[str]]:
    lines = dry_run_lines(*args, **env)
    return json.loads(lines["runtime_env"]), shlex.split(lines["train command"])


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
    assert runtime_env["env_vars"]["WANDB_API_KEY"] == "***"  # shown as forwarded, masked


def test_the_job_runs_train_py_by_absolute_path_in_slime_dir(tmp_path: Path) -> None:
    """Ray runs a job where the cluster's head was started: the command itself must say where slime is."""
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run"],
        env={**os.environ, "SLIME_DIR": "checkouts/slime", "DATA_DIR": "data"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    command = next(line for line in result.stdout.splitlines() if line.startswith("train command:"))
    argv = shlex.split(command.removeprefix("train command:"))
    slime = tmp_path / "checkouts" / "slime"
    assert argv[:3] == ["env", f"--chdir={slime}", "python3"] and argv[3] == f"{slime}/train.py"
    assert flag(argv, "--prompt-data") == f"{tmp_path}/data/train.parquet"  # relative paths made absolute here


def test_multi_node_dry_run_shows_the_head_the_worker_command_and_the_gpu_counts() -> None:
    lines = dry_run_lines(
        NUM_NODES="2", NUM_GPUS="8", MASTER_ADDR="10.0.0.5", RAY_PORT="6380", RAY_START_ARGS="--temp-dir=/x/ray --foo"
    )
    argv = shlex.split(lines["train command"])
    assert (flag(argv, "--actor-num-nodes"), flag(argv, "--actor-num-gpus-per-node")) == ("2", "8")
    assert flag(argv, "--rollout-num-gpus") == "16"
    assert shlex.split(lines["each worker node"]) == ["ray", "start", "--address", "10.0.0.5:6380", "--num-gpus", "8"]
    head = shlex.split(lines["ray head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert (flag(head, "--node-ip-address"), flag(head, "--port"), flag(head, "--num-gpus")) == (
        "10.0.0.5",
        "6380",
        "8",
    )
    assert head[-2:] == ["--temp-dir=/x/ray", "--foo"]  # RAY_START_ARGS go last
    assert (
        "16 GPUs" in lines["submit"]
        and "--runtime-env " in lines["submit"]
        and "--runtime-env-json" not in lines["submit"]
    )


def test_single_node_dry_run_has_no_worker_command() -> None:
    lines = dry_run_lines(NUM_NODES="1", NUM_GPUS="4")
    assert "each worker node" not in lines
    assert flag(shlex.split(lines["train command"]), "--actor-num-nodes") == "1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NUM_NODES": "2", "MASTER_ADDR": ""}, "NUM_NODES=2 needs MASTER_ADDR"),
        ({"NUM_GPUS": "four"}, "NUM_GPUS must be a positive integer"),
        ({"RAY_PORT": "0"}, "RAY_PORT must be a positive integer"),
    ],
    ids=["multi-node-without-master-addr", "bad-gpu-count", "bad-port"],
)
def test_bad_settings_fail_with_one_line_before_anything_starts(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


def test_train_script_says_when_ray_is_missing(tmp_path: Path) -> None:
    """Every path exists, but no `ray` on PATH: one line saying so, and nothing started."""
    shutil.copytree(ROOT / "tests" / "support" / "slime_standin", tmp_path / "slime")
    for name in ("megatron", "hf", "ref", "data"):
        (tmp_path / name).mkdir()
    (tmp_path / "data" / "train.parquet").touch()
    env = {
        "PATH": "/usr/bin:/bin",
        "SLIME_DIR": str(tmp_path / "slime"),
        "MEGATRON_DIR": str(tmp_path / "megatron"),
        "HF_CKPT": str(tmp_path / "hf"),
        "REF_LOAD": str(tmp_path / "ref"),
        "DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(["bash", str(TRAIN)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "error: ray is not installed in this environment (use slime's image)\n"


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
    if script == TRAIN:  # the one command a worker node runs
        assert "ray start --address MASTER_ADDR:RAY_PORT --num-gpus NUM_GPUS" in result.stdout
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", script.read_text()))
    missing = sorted(name for name in read if name not in result.stdout)
    assert read and not missing, f"--help of {script.name} does not mention {missing}"
