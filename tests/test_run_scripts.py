"""The training launcher and the tmux wrapper, run for real (tmux, the real retriever on the toy index)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from search_r1_oai import config
from search_r1_oai.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "run_qwen2.5-3B-it.sh"
WRAPPER = ROOT / "run_qwen2.5-3B-it-with-retrieval.sh"


def settings_free_env(**env: str) -> dict[str, str]:
    """This process's environment without any setting a developer may have exported, plus ``env``."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if k not in config.ENV_NAMES and not k.startswith(("SEARCH_R1_", "EVAL_", "PREFLIGHT_", "SKIP_PREFLIGHT"))
    }
    return {**kept, **env}


def dry_run_lines(*args: str, **env: str) -> dict[str, str]:
    """The --dry-run output as {label: rest of the line}, e.g. {"train command": "env --chdir=... python3 ..."}."""
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run", *args],
        env=settings_free_env(**env),
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


def standin_checkout(root: Path) -> dict[str, str]:
    """Every path the launcher checks, with the stand-in slime (tests/support/slime_standin): nothing is missing."""
    shutil.copytree(
        ROOT / "tests" / "support" / "slime_standin", root / "slime", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("megatron", "hf", "ref", "data"):
        (root / name).mkdir(parents=True)
    (root / "data" / "train.parquet").touch()
    return {
        "SLIME_DIR": str(root / "slime"),
        "MEGATRON_DIR": str(root / "megatron"),
        "HF_CKPT": str(root / "hf"),
        "REF_LOAD": str(root / "ref"),
        "DATA_DIR": str(root / "data"),
    }


def test_train_command_uses_the_oai_hook_and_message_prompts() -> None:
    _, argv = dry_run(DATA_DIR="/data/x")
    assert flag(argv, "--custom-generate-function-path") == "generate_with_search_oai.generate"
    assert flag(argv, "--custom-rm-path") == "generate_with_search_oai.reward_func"
    assert flag(argv, "--prompt-data") == "/data/x/train.parquet"
    assert [flag(argv, key) for key in ("--input-key", "--label-key", "--tool-key", "--metadata-key")] == [
        "prompt",
        "reward_model",
        "tools",
        "metadata",
    ]
    assert "--apply-chat-template" not in argv  # prompts stay OpenAI messages; the chat endpoint renders them
    assert flag(argv, "--sglang-tool-call-parser") == "qwen25"


def test_search_metrics_log_functions_are_passed_and_importable() -> None:
    """slime imports these dotted paths in the job; the module imports without slime."""
    import importlib

    _, argv = dry_run()
    for option, expected in (
        ("--custom-rollout-log-function-path", "generate_with_search_oai.log_rollout_metrics"),
        ("--custom-eval-rollout-log-function-path", "generate_with_search_oai.log_eval_metrics"),
    ):
        path = flag(argv, option)
        assert path == expected
        module, name = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))


# ---- evaluation during training -------------------------------------------------------------------------------

EVAL_COLUMNS = ("prompt", "reward_model", "tools", "metadata")
# slime/utils/data.py, _parse_generalized_path: a dataset path "FILE@[start:end]" reads those rows of FILE.
SLIME_SLICE = re.compile(r"^(?P<real_path>.*)@\[(?P<start>-?\d*):(?P<end>-?\d*)\]$")


def write_eval_set(path: Path, rows: int, columns: tuple[str, ...] = EVAL_COLUMNS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = {
        "prompt": [[{"role": "user", "content": f"question {i}?"}] for i in range(rows)],
        "reward_model": [{"ground_truth": {"target": [f"answer {i}"]}} for i in range(rows)],
        "tools": ["[]"] * rows,
        "metadata": [{"data_source": path.stem, "index": i} for i in range(rows)],
    }
    pq.write_table(pa.table({name: values[name] for name in columns}), path)
    return path


def rows_as_slime_reads(dataset_path: str) -> int:
    """How many rows slime's read_file yields for a dataset path (with its @[start:end] slice)."""
    import pyarrow.parquet as pq

    match = SLIME_SLICE.match(dataset_path)
    path, start, end = (match["real_path"], match["start"], match["end"]) if match else (dataset_path, "", "")
    rows = pq.ParquetFile(path).read().to_pylist()
    return len(rows[int(start) if start else None : int(end) if end else None])


def with_pyarrow(**env: str) -> dict[str, str]:
    """The script runs `python3`: this venv's (which has pyarrow) first on PATH."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}


def run_dry(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(TRAIN), "--dry-run", *args],
        env=settings_free_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    write_eval_set(folder / "nq.parquet", 7)
    write_eval_set(folder / "hotpotqa.parquet", 3)
    (folder / "notes.txt").write_text("not a set")
    return folder


def test_eval_runs_every_interval_on_each_set_capped_and_greedy(eval_dir: Path) -> None:
    lines = dry_run_lines(**with_pyarrow(EVAL_DIR=str(eval_dir), EVAL_INTERVAL="10", EVAL_MAX_SAMPLES="5"))
    argv = shlex.split(lines["train command"])
    assert flag(argv, "--eval-interval") == "10"
    assert flag(argv, "--eval-config") == "PRIVATE_DIR/eval_config.yaml"
    assert "--eval-prompt-data" not in argv  # the sets are in the config file, off the shell-run command line
    assert (flag(argv, "--eval-temperature"), flag(argv, "--n-samples-per-eval-prompt")) == ("0", "1")  # greedy
    keys = [flag(argv, f"--eval-{key}-key") for key in ("input", "label", "tool")]
    assert (
        keys
        == [flag(argv, f"--{key}-key") for key in ("input", "label", "tool")]
        == ["prompt", "reward_model", "tools"]
    )
    assert argv.index("--eval-config") > argv.index("--custom-config-path")  # before the extra flags, after ours

    datasets = yaml.safe_load(lines["eval config"])["eval"]["datasets"]
    assert [d["name"] for d in datasets] == ["hotpotqa", "nq"]
    assert [d["path"] for d in datasets] == [f"{eval_dir}/hotpotqa.parquet@[0:5]", f"{eval_dir}/nq.parquet@[0:5]"]
    assert [rows_as_slime_reads(d["path"]) for d in datasets] == [3, 5]
    assert lines["eval"] == (
        "every 10 rollouts and before training, greedy, on 2 set(s): hotpotqa (all 3 rows), nq (first 5 of 7 rows)"
    )


def test_eval_max_samples_0_evaluates_whole_sets_and_extra_flags_override_sampling(eval_dir: Path) -> None:
    lines = dry_run_lines("--eval-temperature", "0.6", **with_pyarrow(EVAL_DIR=str(eval_dir), EVAL_MAX_SAMPLES="0"))
    argv = shlex.split(lines["train command"])
    datasets = yaml.safe_load(lines["eval config"])["eval"]["datasets"]
    assert [d["path"] for d in datasets] == [f"{eval_dir}/hotpotqa.parquet", f"{eval_dir}/nq.parquet"]
    assert flag(argv, "--eval-interval") == "25"  # the default
    assert argv[-2:] == ["--eval-temperature", "0.6"]  # argparse: the last one wins
    assert lines["eval"].endswith("hotpotqa (all 3 rows), nq (all 7 rows)")


def test_eval_interval_0_passes_no_eval_flags(tmp_path: Path) -> None:
    lines = dry_run_lines(EVAL_INTERVAL="0", EVAL_DIR=str(tmp_path / "nowhere"))
    argv = shlex.split(lines["train command"])
    assert not [a for a in argv if a.startswith("--eval") or a == "--n-samples-per-eval-prompt"]
    assert "eval config" not in lines and lines["eval"] == "off (EVAL_INTERVAL=0)"


def test_a_missing_default_eval_dir_warns_and_trains_without_eval(tmp_path: Path) -> None:
    (tmp_path / "train.parquet").touch()  # every path in place: the eval warning is the only one
    result = run_dry(**{**standin_checkout(tmp_path / "checkout"), "DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"warning: no eval sets at {tmp_path}/eval: training without evaluation")
    assert "--eval_sets" in result.stderr and result.stderr.count("\n") == 1
    assert "--eval-interval" not in result.stdout and f"eval: off (no {tmp_path}/eval)" in result.stdout


def test_eval_sets_in_the_default_folder_are_used(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    write_eval_set(tmp_path / "eval" / "popqa.parquet", 2)
    lines = dry_run_lines(**with_pyarrow(DATA_DIR=str(tmp_path)))
    datasets = yaml.safe_load(lines["eval config"])["eval"]["datasets"]
    assert datasets == [{"name": "popqa", "path": f"{tmp_path}/eval/popqa.parquet@[0:500]"}]  # 500: the default


def test_without_pyarrow_the_dry_run_still_lists_the_sets(eval_dir: Path, tmp_path: Path) -> None:
    """A login node's python3 may lack pyarrow: --dry-run checks the parquet magic and says what it could not."""
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')  # -S: no site-packages
    shim.chmod(0o755)
    lines = dry_run_lines(PATH=f"{shim.parent}:{os.environ['PATH']}", EVAL_DIR=str(eval_dir), EVAL_MAX_SAMPLES="4")
    assert [d["name"] for d in yaml.safe_load(lines["eval config"])["eval"]["datasets"]] == ["hotpotqa", "nq"]
    assert "nq (up to 4 rows; not opened: python3 has no pyarrow)" in lines["eval"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("interval-negative", "EVAL_INTERVAL must be an integer >= 0 (0 = off/all), got '-1'"),
        ("interval-word", "EVAL_INTERVAL must be an integer >= 0 (0 = off/all), got 'ten'"),
        ("max-samples-float", "EVAL_MAX_SAMPLES must be an integer >= 0 (0 = off/all), got '1.5'"),
        ("dir-missing", "is not a folder; make the eval sets with python data_preprocess.py --eval_sets"),
        ("dir-empty", "holds no *.parquet eval set; make them with python data_preprocess.py --eval_sets"),
        ("not-parquet", "nq.parquet is not a parquet file"),
        ("missing-columns", "nq.parquet lacks column(s) tools, metadata (it has prompt, reward_model)"),
        ("no-rows", "nq.parquet has no rows"),
        ("bad-name", "its file name is the set's name in eval/<name>/... metrics"),
    ],
)
def test_bad_eval_settings_fail_the_dry_run_with_one_line(tmp_path: Path, case: str, message: str) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    env = {"EVAL_DIR": str(folder)}
    if case == "interval-negative":
        env["EVAL_INTERVAL"] = "-1"
    elif case == "interval-word":
        env["EVAL_INTERVAL"] = "ten"
    elif case == "max-samples-float":
        env["EVAL_MAX_SAMPLES"] = "1.5"
    elif case == "dir-missing":
        env["EVAL_DIR"] = str(tmp_path / "missing")
    elif case == "not-parquet":
        (folder / "nq.parquet").write_text("question,answer\n")
    elif case == "missing-columns":
        write_eval_set(folder / "nq.parquet", 2, columns=("prompt", "reward_model"))
    elif case == "no-rows":
        write_eval_set(folder / "nq.parquet", 0)
    elif case == "bad-name":
        write_eval_set(folder / "my set.parquet", 2)
    result = run_dry(**with_pyarrow(**env))
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def slime_config(**env: str) -> dict:
    """The slime config the script would pass with --custom-config-path, read as slime reads it."""
    return yaml.safe_load(dry_run_lines(**env)["slime config"])


def test_settings_reach_the_job_in_the_slime_config_and_extra_flags_go_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    lines = dry_run_lines(
        "--num-rollout", "7", RETRIEVAL_SERVER_URL="http://a:1,http://b:2", SEARCH_R1_MAX_TURNS="3", NUM_GPUS="2"
    )
    runtime_env, argv = json.loads(lines["runtime_env"]), shlex.split(lines["train command"])
    assert yaml.safe_load(lines["slime config"]) == {
        "retrieval_server_url": ["http://a:1", "http://b:2"],
        "search_r1_max_turns": 3,
    }
    assert flag(argv, "--custom-config-path") == "PRIVATE_DIR/slime_config.yaml"
    env_vars = runtime_env["env_vars"]
    # no settings in the runtime environment: the config is their one channel
    assert not [k for k in env_vars if k.startswith("SEARCH_R1_") or k == "RETRIEVAL_SERVER_URL"]
    assert str(ROOT) in env_vars["PYTHONPATH"].split(":")  # slime imports generate_with_search_oai from here
    assert argv[-2:] == ["--num-rollout", "7"]
    assert flag(argv, "--rollout-num-gpus") == "2" and "--use-wandb" not in argv


def test_the_slime_config_reads_back_as_the_settings_the_environment_gave() -> None:
    env = {
        "RETRIEVAL_SERVER_URL": "http://a:1/, http://b:2",
        "SEARCH_R1_TOPK": "5",
        "SEARCH_R1_CONTEXT_BUDGET": "8192",
        "SEARCH_R1_POLICY_MODEL": "qwen: 3B # not a comment",
        "SEARCH_R1_POLICY_TIMEOUT_S": "12.5",
        "SEARCH_R1_RETRY_INITIAL_WAIT_S": "1e-5",
        "SEARCH_R1_LOG_EVERY": "0",
        "SEARCH_R1_ALLOW_REENCODE_FALLBACK": "yes",
        "SEARCH_R1_FORMAT_SCORE": "0",
        "SEARCH_R1_TOOL_CALL_START": "<call 'x'>",
    }
    written = slime_config(**env)
    assert load_settings(Namespace(**written), {}) == load_settings(None, env)
    assert written["search_r1_topk"] == 5 and written["search_r1_allow_reencode_fallback"] is True  # native types
    assert slime_config() == {}  # nothing set: nothing written, defaults (and slime's context fallback) apply


def test_a_users_config_file_is_merged_under_the_environment(tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    # A key of the user's own (for a hook of theirs) passes through; slime's own flags (lr) are refused: see
    # test_launch_checks.py.
    user.write_text(
        "my_hook_lr: 1.0e-6\nsearch_r1_topk: 5\nsearch_r1_max_turns: 2\nretrieval_server_url: [http://a:1]\n"
    )
    written = slime_config(SEARCH_R1_CONFIG=str(user), SEARCH_R1_MAX_TURNS="6")
    assert written == {
        "my_hook_lr": 1e-6,
        "search_r1_topk": 5,
        "search_r1_max_turns": 6,
        "retrieval_server_url": ["http://a:1"],
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEARCH_R1_TOPK": "three"}, "SEARCH_R1_TOPK='three' in the environment: expected an integer >= 1"),
        ({"RETRIEVAL_SERVER_URL": "host:8000"}, "'host:8000' must start with http:// or https://"),
        ({"SEARCH_R1_TOP_K": "3"}, "SEARCH_R1_TOP_K in the environment is not a setting; did you mean SEARCH_R1_TOPK?"),
        ({"SEARCH_R1_CONFIG": "/nonexistent.yaml"}, "SEARCH_R1_CONFIG=/nonexistent.yaml cannot be read"),
    ],
    ids=["bad-int", "bad-url", "misspelt", "missing-config-file"],
)
def test_bad_rollout_settings_fail_the_dry_run_with_one_line(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run"], env=settings_free_env(**env), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


def test_bad_values_in_the_users_config_file_name_the_file(tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("search_r1_max_turns: 0\n")
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run"],
        env=settings_free_env(SEARCH_R1_CONFIG=str(user)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert f"search_r1_max_turns=0 in SEARCH_R1_CONFIG={user}: expected an integer >= 1" in result.stderr


def test_the_script_owns_custom_config_path() -> None:
    result = subprocess.run(
        ["bash", str(TRAIN), "--dry-run", "--custom-config-path", "x.yaml"],
        env=settings_free_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "name your YAML with SEARCH_R1_CONFIG=FILE" in result.stderr


def test_help_lists_every_setting_from_the_table() -> None:
    """Printed from config.py by the python3 on PATH, which may lack every project dependency."""
    out = subprocess.run(["bash", str(TRAIN), "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert config.render_help_text() in out
    missing = [knob.env for knob in config.SETTINGS if f"{knob.env} / {knob.key} [" not in out]
    assert not missing, missing


def test_config_py_runs_as_a_script_without_project_dependencies(tmp_path: Path) -> None:
    """The scripts run search_r1_oai/config.py by path: it must import only the standard library, and no module
    beside it may shadow one of the standard library's (its folder comes first on sys.path)."""
    shadowing = [p.stem for p in (ROOT / "search_r1_oai").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []
    script = ROOT / "search_r1_oai" / "config.py"  # -S: no site-packages, so only the standard library imports
    result = subprocess.run(
        [sys.executable, "-S", str(script), "--help-text"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "SEARCH_R1_TOPK / search_r1_topk [3]" in result.stdout


def test_wandb_key_never_appears_on_the_command_line() -> None:
    """The keys go to slime's driver in the private slime config (slime logs in with args.wandb_key), never in Ray's
    runtime env, which Ray's dashboard lists and its agent logs; the dry run shows them masked."""
    lines = dry_run_lines(WANDB_API_KEY="secret-key-123", RETRIEVER_API_KEY="retriever-key-456")
    runtime_env, argv = json.loads(lines["runtime_env"]), shlex.split(lines["train command"])
    assert "--use-wandb" in argv
    assert "secret-key-123" not in " ".join(lines.values()) and "retriever-key-456" not in " ".join(lines.values())
    assert set(runtime_env["env_vars"]) == {"PYTHONPATH", "CUDA_DEVICE_MAX_CONNECTIONS"}
    config = yaml.safe_load(lines["slime config"])
    assert (config["wandb_key"], config["retriever_api_key"]) == ("***", "***")


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


def wrapper_run(
    tmp_path: Path, timeout: float = 60, unset: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """The tmux wrapper, for real, on a tmux server of its own, a fake retriever that records how it was started
    (it answers /health) and a training script that exits at once; ``unset`` names variables it runs without."""
    from tests.support import wrapper_fakes
    from tests.support.live_server import free_port

    tmux_dir = Path(tempfile.mkdtemp(prefix="wrs-", dir="/tmp"))  # tmux socket paths are limited to ~100 bytes
    train = tmp_path / "train.sh"
    train.write_text("#!/usr/bin/env bash\nexit 0\n")
    for name in ("data.index", "corpus.jsonl"):
        (tmp_path / name).touch()
    base = {k: v for k, v in settings_free_env().items() if k not in {"TMUX", "TMUX_PANE", "TOPK", "HOST"}}
    base = {k: v for k, v in base.items() if "proxy" not in k.lower() and k not in unset}
    try:
        return subprocess.run(
            ["bash", str(WRAPPER)],
            env={
                **base,
                "TMUX_TMPDIR": str(tmux_dir),
                "TMUX_SESSION": "topk-test",
                "LOG_DIR": str(tmp_path / "logs"),
                "RETRIEVAL_SERVER_URL": f"http://127.0.0.1:{free_port()}",
                "RETRIEVER_PYTHON": str(wrapper_fakes.retriever_python(tmp_path / "python", tmp_path / "record")),
                "INDEX_PATH": str(tmp_path / "data.index"),
                "CORPUS_PATH": str(tmp_path / "corpus.jsonl"),
                "RETRIEVER_READY_TIMEOUT": "30",
                "TRAIN_SCRIPT": str(train),
                "SKIP_PREFLIGHT": "1",  # these tests are about the top-k; test_wrapper.py covers the preflight
                **env,
            },
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        subprocess.run(["tmux", "kill-server"], env={**base, "TMUX_TMPDIR": str(tmux_dir)}, capture_output=True)
        shutil.rmtree(tmux_dir, ignore_errors=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.e2e
def test_the_wrappers_retriever_serves_the_rollouts_top_k(tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("search_r1_topk: 7\n")
    result = wrapper_run(tmp_path, SEARCH_R1_CONFIG=str(user))
    assert result.returncode == 0, result.stdout + result.stderr
    started = json.loads((tmp_path / "record" / "retriever.json").read_text())
    assert flag(started["argv"], "--topk") == "7" and started["env"]["TOPK"] == "7"

    result = wrapper_run(tmp_path, SEARCH_R1_TOPK="4", TOPK="4")  # the same value twice is fine
    assert result.returncode == 0, result.stdout + result.stderr
    assert flag(json.loads((tmp_path / "record" / "retriever.json").read_text())["argv"], "--topk") == "4"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOPK": "5"}, "TOPK=5 differs from the rollout's top-k 3"),
        ({"SEARCH_R1_TOPK": "0"}, "SEARCH_R1_TOPK='0' in the environment: expected an integer >= 1"),
    ],
    ids=["server-topk-differs", "bad-rollout-topk"],
)
def test_the_wrapper_refuses_two_top_ks_before_starting_anything(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = wrapper_run(tmp_path, timeout=30, **env)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "record").exists()
