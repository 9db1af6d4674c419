"""Mistakes the training launcher catches before any GPU is spent, run for real: the script with --dry-run anywhere
on its line, without HOME, and its live path up to the point where it would touch Ray (a `ray` on PATH that records
being called proves it never was).

- a dry run reports each path a live run would stop at as one warning line, and still prints the command;
- values that cannot work (a format score outside [0, 1), a tensor-parallel size that does not divide the GPUs of a
  node, batch sizes Megatron or slime would refuse) fail the dry run and the live run with one line;
- a key of SEARCH_R1_CONFIG that is one of slime's flags is refused with the flag to pass instead, because slime
  applies its config file after validating its flags and building the eval datasets (modelled by the stand-in
  slime in tests/support/slime_standin, whose order is checked here too).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from search_r1_oai.config import ConfigError, flags_defined_in, load_settings
from tests.test_run_scripts import TRAIN, WRAPPER, settings_free_env, standin_checkout, wrapper_run

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "support" / "slime_standin"
SLIME_WORDS = (
    "on the command line (slime validates its flags and builds the eval datasets from them, then applies this file"
    " unchecked)"
)


def recording_ray(root: Path) -> dict[str, str]:
    """A `ray` command and an importable `ray` module, so a live run passes its tool checks; the command records
    each call in root/ray-calls and fails."""
    bin_dir, modules = root / "fake-bin", root / "fake-modules"
    (modules / "ray").mkdir(parents=True)
    (modules / "ray" / "__init__.py").write_text("")
    bin_dir.mkdir()
    ray = bin_dir / "ray"
    ray.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(root / "ray-calls"))}\nexit 1\n')
    ray.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(modules)}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A launcher environment where everything is in place (no eval sets asked for), and HOME unset."""
    base = settings_free_env(**standin_checkout(tmp_path), **recording_ray(tmp_path), EVAL_INTERVAL="0")
    base.pop("HOME", None)
    return base


def launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=60)


def train_command(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("train command:"))
    return shlex.split(line.removeprefix("train command:"))


def refused_before_ray(env: dict[str, str], args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """The dry run and the live run both stop with one line saying ``message``; Ray is never called."""
    for argv in ((*args, "--dry-run"), args):
        result = launch(env, *argv)
        assert result.returncode == 1 and result.stdout == "", (argv, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (argv, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
    assert not (tmp_path / "ray-calls").exists()


# ---- --dry-run anywhere, without HOME -------------------------------------------------------------------------


def test_dry_run_last_on_the_line_is_a_dry_run_and_needs_no_home(env: dict[str, str], tmp_path: Path) -> None:
    assert "HOME" not in env
    result = launch(env, "--num-rollout", "5", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # every path is there: nothing to warn about
    argv = train_command(result.stdout)
    assert argv[-2:] == ["--num-rollout", "5"] and "--dry-run" not in argv  # not passed on to slime
    assert not (tmp_path / "ray-calls").exists()

    # Nothing in place either (the defaults under /root): still a dry run, HOME still unset.
    bare = {k: v for k, v in settings_free_env().items() if k != "HOME"}
    result = launch(bare, "--num-rollout", "5", "--dry-run")
    assert result.returncode == 0 and "train command:" in result.stdout, result.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.e2e
def test_the_wrapper_runs_without_home(tmp_path: Path) -> None:
    result = wrapper_run(tmp_path, unset=("HOME",))
    assert result.returncode == 0, result.stdout + result.stderr
    started = json.loads((tmp_path / "record" / "retriever.json").read_text())
    assert "HOME" not in started["env"]


def test_the_wrapper_has_no_dry_run_and_says_where_it_is() -> None:
    for argv in (["--dry-run"], ["--", "--num-rollout", "5", "--dry-run"]):
        result = subprocess.run(
            ["bash", str(WRAPPER), *argv], env=settings_free_env(), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "bash run_qwen2.5-3B-it.sh --dry-run" in result.stderr


# ---- what a live run would stop at: one warning each ----------------------------------------------------------


def test_the_dry_run_warns_once_for_each_path_a_live_run_stops_at(env: dict[str, str], tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    env = {
        **env,
        "SLIME_DIR": str(gone / "slime"),
        "MEGATRON_DIR": str(gone / "megatron"),
        "HF_CKPT": str(gone / "hf"),
        "REF_LOAD": str(gone / "ref"),
        "DATA_DIR": str(gone / "data"),
    }
    result = launch(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert all(line.startswith("warning: a live run stops here: ") for line in warnings), warnings
    expected = [
        f"slime not found at SLIME_DIR={gone}/slime",
        f"Megatron-LM not found at MEGATRON_DIR={gone}/megatron",
        f"HF checkpoint not found at HF_CKPT={gone}/hf",
        f"torch_dist checkpoint not found at REF_LOAD={gone}/ref",
        f"{gone}/data/train.parquet missing",
    ]
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings, strict=True)), warnings
    assert "the train command has no model flags" in warnings[0]
    argv = train_command(result.stdout)
    assert "--standin-model-args" not in argv and flag_value(argv, "--hf-checkpoint") == f"{gone}/hf"

    # The live run stops at the first of them, before Ray.
    result = launch(env)
    assert (
        result.returncode == 1
        and result.stderr
        == f"error: {expected[0]} (clone THUDM/slime there or set"
        " SLIME_DIR): the train command has no model flags (slime's scripts/models/qwen2.5-3B.sh)\n"
    )
    assert not (tmp_path / "ray-calls").exists()


def test_a_slime_checkout_without_the_model_file_is_a_warning_naming_it(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "slime" / "scripts" / "models" / "qwen2.5-3B.sh").unlink()
    result = launch(env, "--dry-run")
    assert result.returncode == 0
    assert result.stderr == (
        f"warning: a live run stops here: {tmp_path}/slime/scripts/models/qwen2.5-3B.sh not found: the train command"
        " has no model flags\n"
    )


def flag_value(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---- values that cannot work ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "args", "message"),
    [
        (
            {"SEARCH_R1_FORMAT_SCORE": "1"},
            (),
            "SEARCH_R1_FORMAT_SCORE='1' in the environment: expected a finite number >= 0.0 and < 1.0",
        ),
        ({"SEARCH_R1_FORMAT_SCORE": "2"}, (), "SEARCH_R1_FORMAT_SCORE='2' in the environment"),
        (
            {"TP_SIZE": "3"},
            (),
            "the tensor-parallel size 3 (TP_SIZE or --tensor-model-parallel-size) does not divide"
            " NUM_GPUS=4 (GPUs per node)",
        ),
        ({}, ("--tensor-model-parallel-size", "3"), "the tensor-parallel size 3"),
        (
            {},
            ("--rollout-num-gpus-per-engine=3",),
            "the SGLang engine size 3 (TP_SIZE or --rollout-num-gpus-per-engine) does not divide NUM_GPUS=4",
        ),
        (
            {"NUM_GPUS": "6", "TP_SIZE": "3"},
            ("--pipeline-model-parallel-size", "4"),
            "NUM_NODES x NUM_GPUS = 6 GPUs is not a multiple of tensor x pipeline x context parallel = 3 x 4 x 1",
        ),
        (
            {"NUM_NODES": "2", "MASTER_ADDR": "10.0.0.1", "GLOBAL_BATCH_SIZE": "510"},
            (),
            "GLOBAL_BATCH_SIZE=510 is not a"
            " multiple of micro-batch size x data-parallel size = 1 x 4 (8 GPUs / TP 2 / PP 1 / CP 1)",
        ),
        (
            {},
            ("--micro-batch-size", "3"),
            "GLOBAL_BATCH_SIZE=512 is not a multiple of micro-batch size x data-parallel size = 3 x 2",
        ),
        (
            {"ROLLOUT_BATCH_SIZE": "16", "N_SAMPLES_PER_PROMPT": "5"},
            (),
            "a rollout makes ROLLOUT_BATCH_SIZE x"
            " N_SAMPLES_PER_PROMPT = 16 x 5 = 80 samples, fewer than GLOBAL_BATCH_SIZE=512",
        ),
        ({}, ("--global-batch-size", "1024"), "= 512 samples, fewer than GLOBAL_BATCH_SIZE=1024"),
        (
            {},
            ("--num-steps-per-rollout", "2"),
            "--num-steps-per-rollout 2 needs GLOBAL_BATCH_SIZE = 512 / 2 = 256, got 512",
        ),
        ({"GLOBAL_BATCH_SIZE": "0"}, (), "GLOBAL_BATCH_SIZE must be a positive integer, got '0'"),
        ({"N_SAMPLES_PER_PROMPT": "eight"}, (), "N_SAMPLES_PER_PROMPT must be a positive integer, got 'eight'"),
    ],
    ids=[
        "format-score-1",
        "format-score-2",
        "tp-size",
        "tp-flag",
        "engine-flag",
        "model-parallel-world",
        "global-batch-vs-dp",
        "micro-batch",
        "rollout-smaller-than-global-batch",
        "global-batch-flag",
        "steps-per-rollout",
        "zero-batch",
        "word",
    ],
)
def test_values_that_cannot_work_fail_the_dry_run_and_the_live_run_before_ray(
    env: dict[str, str], tmp_path: Path, variables: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    refused_before_ray({**env, **variables}, args, message, tmp_path)


def test_a_format_score_of_1_in_the_users_config_names_the_file(env: dict[str, str], tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("search_r1_format_score: 1.0\n")
    message = f"search_r1_format_score=1.0 in SEARCH_R1_CONFIG={user}: expected a finite number >= 0.0 and < 1.0"
    refused_before_ray({**env, "SEARCH_R1_CONFIG": str(user)}, (), message, tmp_path)
    with pytest.raises(ConfigError, match=r"and < 1\.0"):  # a worker reading the key from args refuses it too
        load_settings(Namespace(search_r1_format_score=1), {})
    assert load_settings(Namespace(search_r1_format_score=0.99), {}).format_score == 0.99


def test_sizes_that_work_pass_and_a_rollout_of_partial_batches_is_a_warning(env: dict[str, str]) -> None:
    result = launch({**env, "NUM_NODES": "2", "MASTER_ADDR": "10.0.0.1", "NUM_GPUS": "8", "TP_SIZE": "4"}, "--dry-run")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = launch({**env, "ROLLOUT_BATCH_SIZE": "40", "GLOBAL_BATCH_SIZE": "256"}, "--dry-run")
    assert result.returncode == 0
    assert result.stderr == (
        "warning: 64 of each rollout's 320 samples (ROLLOUT_BATCH_SIZE x N_SAMPLES_PER_PROMPT) are not trained on:"
        " slime trains whole steps of GLOBAL_BATCH_SIZE=256\n"
    )


# ---- slime's flags in SEARCH_R1_CONFIG ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "slime_found", "instead"),
    [
        ("rollout_temperature: 0", True, "pass --rollout-temperature 0"),  # slime refuses 0 as a flag
        ("eval_temperature: 0.6", True, "pass --eval-temperature 0.6"),  # never reaches the eval datasets
        ("n_samples_per_eval_prompt: 4", True, "pass --n-samples-per-eval-prompt 4"),
        ("global_batch_size: 256", False, "pass --global-batch-size 256"),  # on the train command
        ("use_kl_loss: false", False, "leave --use-kl-loss out"),
        ("sglang_mem_fraction_static: 0.5", False, "pass --sglang-mem-fraction-static 0.5"),  # slime's SGLang flags
    ],
)
def test_a_slime_flag_in_the_users_config_is_refused_naming_the_flag_to_pass(
    env: dict[str, str], tmp_path: Path, key: str, slime_found: bool, instead: str
) -> None:
    user = tmp_path / "my.yaml"
    user.write_text(f"search_r1_topk: 5\n{key}\n")
    if not slime_found:
        env = {**env, "SLIME_DIR": str(tmp_path / "no-slime")}
    name = key.split(":")[0]
    message = f"error: {name} in SEARCH_R1_CONFIG={user} is slime's own flag: {instead} {SLIME_WORDS}"
    if slime_found:
        refused_before_ray({**env, "SEARCH_R1_CONFIG": str(user)}, (), message, tmp_path)
    else:  # the dry run's warning about SLIME_DIR comes only after every check passed
        result = launch({**env, "SEARCH_R1_CONFIG": str(user)}, "--dry-run")
        assert result.returncode == 1 and result.stderr == message + "\n", result.stderr


def test_keys_of_the_users_own_pass_through_and_are_checked_against_slimes_flags(
    env: dict[str, str], tmp_path: Path
) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("my_hook_weight: 2\nsearch_r1_topk: 5\n")
    env = {**env, "SEARCH_R1_CONFIG": str(user)}
    result = launch(env, "--dry-run")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    config = next(line for line in result.stdout.splitlines() if line.startswith("slime config"))
    assert yaml.safe_load(config.split(": ", 1)[1]) == {"my_hook_weight": 2, "search_r1_topk": 5}

    # Without slime here, the dry run cannot tell: it says which keys it could not check.
    result = launch({**env, "SLIME_DIR": str(tmp_path / "no-slime")}, "--dry-run")
    assert result.returncode == 0
    assert result.stderr.splitlines()[0] == (
        f"warning: my_hook_weight in SEARCH_R1_CONFIG={user}: not checked against slime's flags (no"
        f" {tmp_path}/no-slime/slime); slime's own flags belong on the command line"
    )


def test_slimes_flags_are_read_from_its_arguments_files() -> None:
    flags = flags_defined_in(STANDIN / "slime")
    assert {"rollout_temperature", "eval_temperature", "n_samples_per_eval_prompt", "custom_config_path"} <= flags
    assert "standin_report" not in flags  # a key of the test's own, like a user's hook setting


# ---- the stand-in slime applies things in slime's order ------------------------------------------------------


def run_standin(tmp_path: Path, argv: list[str], config: dict) -> subprocess.CompletedProcess[str]:
    slime = tmp_path / "standin"
    if not slime.exists():
        shutil.copytree(STANDIN, slime, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "custom.yaml"
    path.write_text(json.dumps({"standin_report": str(tmp_path / "report.json"), **config}))
    return subprocess.run(
        [sys.executable, str(slime / "train.py"), *argv, "--custom-config-path", str(path)],
        cwd=slime,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_standin_validates_flags_and_builds_eval_datasets_before_applying_its_config(tmp_path: Path) -> None:
    result = run_standin(tmp_path, ["--rollout-temperature", "0"], {})
    assert result.returncode != 0 and "--rollout-temperature must be > 0" in result.stderr

    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(json.dumps({"eval": {"datasets": [{"name": "nq", "path": "/data/nq.parquet"}]}}))
    argv = ["--eval-config", str(eval_config), "--eval-temperature", "0"]
    result = run_standin(tmp_path, argv, {"rollout_temperature": 0, "eval_temperature": 0.6})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rollout_temperature"] == 0  # unchecked: what the launcher refuses to write
    assert report["eval_datasets"] == [
        {"name": "nq", "path": "/data/nq.parquet", "n_samples_per_eval_prompt": 1, "temperature": 0.0}
    ]  # the config's eval_temperature never reached the set


# ---- Ray without token authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "warned"), [("2.47.1", True), ("2.60.0", False)])
def test_a_ray_without_token_authentication_is_a_warning_saying_what_it_allows(
    env: dict[str, str], tmp_path: Path, version: str, warned: bool
) -> None:
    """slime's image does not pin Ray (its requirements say ray[default]): one older than 2.52 ignores
    RAY_AUTH_MODE, and its head lets anyone who reaches it run code."""
    (Path(env["PYTHONPATH"]) / "ray" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    result = launch(env)  # live: the fake `ray start` fails at once, after the warning
    assert result.returncode == 1
    line = f"[train] warning: Ray {version} has no token authentication (Ray >= 2.52): anyone who reaches"
    assert (line in result.stdout) is warned, result.stdout
    (head,) = [call for call in (tmp_path / "ray-calls").read_text().splitlines() if call.startswith("start --head")]
    assert "--dashboard-host 127.0.0.1" in head


# ---- DYNAMIC_SAMPLING: slime's over-sampling and its filter of groups without signal ---------------------------

FILTER = "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"


def dynamic_flags(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("dynamic sampling:"))


def test_dynamic_sampling_is_off_by_default(env: dict[str, str]) -> None:
    result = launch(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    argv = train_command(result.stdout)
    assert "--over-sampling-batch-size" not in argv and "--dynamic-sampling-filter-path" not in argv
    assert dynamic_flags(result.stdout) == "dynamic sampling: off (DYNAMIC_SAMPLING=0)"


def test_dynamic_sampling_adds_slimes_flags_which_the_standin_parses(env: dict[str, str], tmp_path: Path) -> None:
    result = launch(
        {**env, "DYNAMIC_SAMPLING": "1", "ROLLOUT_BATCH_SIZE": "32", "GLOBAL_BATCH_SIZE": "256"}, "--dry-run"
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    argv = train_command(result.stdout)
    # twice the rollout batch size, from the value the job will see
    assert (flag_value(argv, "--over-sampling-batch-size"), flag_value(argv, "--dynamic-sampling-filter-path")) == (
        "64",
        FILTER,
    )
    assert dynamic_flags(result.stdout).startswith(
        f"dynamic sampling: --over-sampling-batch-size 64 --dynamic-sampling-filter-path {FILTER}"
    )

    # slime's parser (the stand-in's model of it) takes them, and the filter's path resolves to a function there.
    parsed = run_standin(tmp_path, argv[4:], {})
    assert parsed.returncode == 0, parsed.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["over_sampling_batch_size"] == 64 and report["dynamic_sampling_filter"] == FILTER

    # The caller's --rollout-batch-size counts, and a key of SEARCH_R1_CONFIG turns it on like the variable.
    user = tmp_path / "my.yaml"
    user.write_text("dynamic_sampling: true\n")
    result = launch({**env, "SEARCH_R1_CONFIG": str(user)}, "--rollout-batch-size", "128", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert flag_value(train_command(result.stdout), "--over-sampling-batch-size") == "256"


def test_an_over_sampling_batch_below_the_rollout_batch_is_refused_as_slime_would(
    env: dict[str, str], tmp_path: Path
) -> None:
    message = "--over-sampling-batch-size 32 must be an integer >= the rollout batch size 64 (slime refuses it)"
    refused_before_ray({**env, "DYNAMIC_SAMPLING": "1"}, ("--over-sampling-batch-size", "32"), message, tmp_path)
    parsed = run_standin(tmp_path, ["--rollout-batch-size", "64", "--over-sampling-batch-size", "32"], {})
    assert parsed.returncode != 0 and "should be greater than or equal to rollout_batch_size 64" in parsed.stderr


def test_a_slime_without_the_filter_is_a_live_run_stop(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "slime" / "slime" / "rollout" / "filter_hub" / "dynamic_sampling_filters.py").unlink()
    env = {**env, "DYNAMIC_SAMPLING": "yes"}
    result = launch(env, "--dry-run")
    assert result.returncode == 0
    assert result.stderr.startswith(f"warning: a live run stops here: DYNAMIC_SAMPLING=1 needs {FILTER}")
    result = launch(env)
    assert result.returncode == 1 and "update slime, or unset DYNAMIC_SAMPLING" in result.stderr
    assert not (tmp_path / "ray-calls").exists()


def test_a_bad_dynamic_sampling_value_is_one_line(env: dict[str, str]) -> None:
    result = launch({**env, "DYNAMIC_SAMPLING": "maybe"}, "--dry-run")
    assert result.returncode == 1 and result.stdout == ""
    assert (
        result.stderr
        == "error: DYNAMIC_SAMPLING='maybe' in the environment: expected a boolean (true/false, 1/0, yes/no, on/off)\n"
    )
