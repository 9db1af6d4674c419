"""search_r1_launch's pieces on their own: the sections the run script passes, the settings and sizes it checks, the
eval sets, Ray's token and the child processes the runner starts and stops. The run script itself is run for real in
test_run_scripts.py, test_launch_checks.py and (with Ray) test_launcher_ray.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_r1_launch import plan, ray_job, ray_probe
from search_r1_launch.eval_sets import EvalSetError, find_eval_sets
from search_r1_oai.columns import SLIME_KEY_FLAGS
from tests.test_run_scripts import write_eval_set

FLAG_SETTINGS = {
    "SLIME_DIR": "/s",
    "HF_CKPT": "/h",
    "REF_LOAD": "/r",
    "SAVE_DIR": "/v",
    "DATA_DIR": "/d",
    "SAVE_INTERVAL": "100",
    "NUM_NODES": "1",
    "NUM_GPUS": "4",
    "TP_SIZE": "2",
    "NUM_ROLLOUT": "10",
    "ROLLOUT_BATCH_SIZE": "64",
    "N_SAMPLES_PER_PROMPT": "8",
    "GLOBAL_BATCH_SIZE": "512",
    "MAX_TOKENS_PER_TURN": "512",
    "MAX_TOKENS_PER_GPU": "9216",
    "EVAL_INTERVAL": "25",
}


def settings(tmp_path: Path, **env: str) -> plan.Settings:
    return plan.Settings.read({**FLAG_SETTINGS, **env}, tmp_path)


# ---- the sections ---------------------------------------------------------------------------------------------


def test_sections_split_at_the_markers_and_dry_run_counts_anywhere_among_the_callers_flags() -> None:
    argv = ["--a", "1", "::eval", "--eval-interval", "5", "::dynamic-sampling", "--f", "x", "::extra"]
    sections = plan.split_sections([*argv, "--num-rollout", "5", "--dry-run"])
    assert sections.base == ("--a", "1") and sections.eval == ("--eval-interval", "5")
    assert sections.dynamic == ("--f", "x") and sections.extra == ("--num-rollout", "5") and sections.dry_run
    # the caller's words are theirs, markers included
    assert plan.split_sections([*argv, "::eval"]).extra == ("::eval",)
    assert not plan.split_sections(argv).dry_run


@pytest.mark.parametrize("argv", [["--a"], ["::dynamic-sampling", "::eval", "::extra"]])
def test_sections_out_of_order_or_missing_are_an_error(argv: list[str]) -> None:
    with pytest.raises(plan.LaunchError, match="sections"):
        plan.split_sections(argv)


def test_the_last_value_of_a_flag_wins_in_either_spelling() -> None:
    argv = ["--rollout-batch-size", "8", "--x", "--rollout-batch-size=16"]
    assert plan.flag_value(argv, "--rollout-batch-size", "1") == "16"
    assert plan.flag_value(argv, "--global-batch-size", "512") == "512"
    with pytest.raises(plan.LaunchError, match="--x must be a positive integer, got ''"):
        plan.positive(["--x"], "--x", "1")


def test_the_key_flags_come_from_the_one_definition_of_the_columns() -> None:
    flags = plan.key_flags()
    assert dict(zip(flags[::2], flags[1::2], strict=True)) == SLIME_KEY_FLAGS
    eval_flags = plan.eval_key_flags()
    assert eval_flags == ["--eval-input-key", "prompt", "--eval-label-key", "reward_model", "--eval-tool-key", "tools"]


# ---- settings and sizes -----------------------------------------------------------------------------------------


def test_settings_take_the_launchers_defaults_and_make_its_paths_absolute(tmp_path: Path) -> None:
    values = settings(tmp_path, MEGATRON_DIR="mega", SEARCH_R1_CONFIG="my.yaml")
    assert values["MEGATRON_DIR"] == str(tmp_path / "mega") and values["SEARCH_R1_CONFIG"] == str(tmp_path / "my.yaml")
    assert (values["RAY_PORT"], values["RAY_DASHBOARD_PORT"], values["EVAL_MAX_SAMPLES"]) == ("6379", "8265", "500")
    assert values["EVAL_DIR"] == "/d/eval" and not values.eval_dir_given
    values.check(())
    assert values["MASTER_ADDR"] == "127.0.0.1"
    assert settings(tmp_path, EVAL_DIR="sets")["EVAL_DIR"] == str(tmp_path / "sets")


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({"TP_SIZE": "0"}, (), "TP_SIZE must be a positive integer, got '0'"),
        ({"EVAL_MAX_SAMPLES": "-1"}, (), "EVAL_MAX_SAMPLES must be an integer >= 0 (0 = off/all), got '-1'"),
        ({"NUM_NODES": "2"}, (), "NUM_NODES=2 needs MASTER_ADDR"),
        ({}, ("--custom-config-path=x",), "--custom-config-path is set by this script"),
    ],
)
def test_settings_that_cannot_work_are_one_error(
    tmp_path: Path, env: dict[str, str], extra: tuple[str, ...], message: str
) -> None:
    with pytest.raises(plan.LaunchError) as error:
        settings(tmp_path, **env).check(extra)
    assert message in str(error.value)


def test_sizes_return_the_rollout_batch_and_warn_about_samples_left_out(tmp_path: Path) -> None:
    values = settings(tmp_path)
    values.check(())
    checker = plan.Checker(dry_run=True)
    assert plan.check_sizes(values, ["--rollout-batch-size", "40", "--global-batch-size", "256"], checker) == 40
    assert checker.warnings == [
        "warning: 64 of each rollout's 320 samples (ROLLOUT_BATCH_SIZE x N_SAMPLES_PER_PROMPT) are not trained on:"
        " slime trains whole steps of GLOBAL_BATCH_SIZE=256"
    ]
    with pytest.raises(plan.LaunchError, match="must be an integer >= the rollout batch size 64"):
        plan.check_sizes(values, ["--over-sampling-batch-size", "63"], checker)


def test_a_dry_run_collects_what_a_live_run_stops_at(tmp_path: Path) -> None:
    checker = plan.Checker(dry_run=True)
    checker.refuse("no checkpoint")
    assert checker.warnings == ["warning: a live run stops here: no checkpoint"]
    with pytest.raises(plan.LaunchError, match="no checkpoint"):
        plan.Checker(dry_run=False).refuse("no checkpoint")


def test_the_filter_check_reads_slimes_file(tmp_path: Path) -> None:
    values = settings(tmp_path, SLIME_DIR=str(tmp_path))
    source = tmp_path / plan.FILTER_FILE
    source.parent.mkdir(parents=True)
    source.write_text("def check_reward_nonzero_std(args, samples, **kwargs):\n    return True\n")
    checker = plan.Checker(dry_run=True)
    path = "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std"
    plan.check_filter(values, path, checker)
    assert checker.warnings == []
    plan.check_filter(values, path.replace("check_reward_nonzero_std", "gone"), checker)
    assert len(checker.warnings) == 1 and "defines no gone" in checker.warnings[0]


def test_commands_of_the_cluster(tmp_path: Path) -> None:
    values = settings(tmp_path, NUM_NODES="2", MASTER_ADDR="10.0.0.5", RAY_START_ARGS=" --temp-dir=/x  --foo ")
    values.check(())
    assert plan.placement(values)[:4] == ["env", "--chdir=/s", "python3", "/s/train.py"]
    assert plan.flag_value(plan.placement(values), "--rollout-num-gpus", "") == "8"
    head = plan.head_command(values)
    assert head[-2:] == ["--temp-dir=/x", "--foo"] and plan.flag_value(head, "--dashboard-host", "") == "127.0.0.1"
    assert plan.worker_command(values) == ["ray", "start", "--address", "10.0.0.5:6379", "--num-gpus", "4"]
    assert plan.runtime_env(values)["env_vars"]["PYTHONPATH"] == f"/root/Megatron-LM:{plan.ROOT}"


# ---- eval sets --------------------------------------------------------------------------------------------------


def test_eval_sets_are_capped_by_slimes_row_slice(tmp_path: Path) -> None:
    write_eval_set(tmp_path / "nq.parquet", 7)
    write_eval_set(tmp_path / "popqa.parquet", 2)
    sets = find_eval_sets(tmp_path, 5, pyarrow_required=True)
    assert sets.config() == {
        "eval": {
            "datasets": [
                {"name": "nq", "path": f"{tmp_path}/nq.parquet@[0:5]"},
                {"name": "popqa", "path": f"{tmp_path}/popqa.parquet@[0:5]"},
            ]
        }
    }
    assert sets.described == ("nq (first 5 of 7 rows)", "popqa (all 2 rows)")


def test_without_pyarrow_a_live_run_refuses_and_a_dry_run_says_what_it_did_not_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_eval_set(tmp_path / "nq.parquet", 3)
    monkeypatch.setattr("search_r1_launch.eval_sets._pyarrow_parquet", lambda: None)
    with pytest.raises(EvalSetError, match="cannot import pyarrow"):
        find_eval_sets(tmp_path, 0, pyarrow_required=True)
    sets = find_eval_sets(tmp_path, 0, pyarrow_required=False)
    assert sets.described == ("nq (all rows; not opened: python3 has no pyarrow)",)
    assert sets.datasets == ({"name": "nq", "path": f"{tmp_path}/nq.parquet"},)


# ---- Ray's token, the runner's children ----------------------------------------------------------------------


def test_the_token_comes_from_the_variable_its_file_or_home(tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN": "t"}
    assert ray_job.find_token(env, None) == "variable" and env["RAY_AUTH_MODE"] == "token"
    token = tmp_path / "token"
    token.write_text("t")
    env = {"RAY_AUTH_TOKEN_PATH": str(token)}
    assert ray_job.find_token(env, None) == "file"
    with pytest.raises(ray_job.Failed, match="is not a readable, non-empty token file"):
        ray_job.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    env = {}
    assert ray_job.find_token(env, str(tmp_path)) == "file"
    assert env == {"RAY_AUTH_TOKEN_PATH": str(tmp_path / ".ray" / "auth_token"), "RAY_AUTH_MODE": "token"}
    env = {}
    assert ray_job.find_token(env, str(tmp_path / "nobody")) == "" and env == {}


def test_the_worker_command_names_where_the_token_is_never_the_token(tmp_path: Path) -> None:
    run = ray_job.Run({"private_dir": str(tmp_path), "worker_command": ["ray", "start", "--address", "h:1"]})
    run.env = {"RAY_AUTH_TOKEN_PATH": "/t/file", "RAY_AUTH_TOKEN": "secret-token"}
    assert run.worker_command("file") == (
        "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/t/file ray start --address h:1",
        "(first copy /t/file from this node to the same path there, mode 0600)",
    )
    assert "secret-token" not in " ".join(run.worker_command("variable") + run.worker_command("file"))
    assert run.worker_command("") == ("ray start --address h:1", "")


def test_a_stopped_session_leaves_no_process(tmp_path: Path) -> None:
    """What the runner does with a head it started: TERM the leader, KILL what of its session is left."""
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(ray_job.session_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ray_job.session_members(leader.pid)) == 2
    ray_job.stop_process(leader, 5)
    for pid in ray_job.session_members(leader.pid):  # the orphaned sleep
        os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while ray_job.session_members(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray_job.session_members(leader.pid) == [] and not ray_job.alive(leader.pid)


def test_the_cluster_wait_ends_with_one_line_at_its_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    waiter = ray_probe.Waiter(5, 0, clock=lambda: now[0])
    waiter.check("no Ray head answers at h:1")  # within the deadline: nothing
    now[0] = 106.0
    with pytest.raises(SystemExit) as stop:
        waiter.check("no Ray head answers at h:1")
    assert stop.value.code == 1
    assert capsys.readouterr().err == "error: no Ray head answers at h:1 (waited 6s; RAY_CLUSTER_TIMEOUT=5)\n"


def test_a_head_that_exited_ends_the_wait_with_code_3() -> None:
    head = subprocess.Popen(["true"])
    head.wait()
    with pytest.raises(SystemExit) as stop:
        ray_probe.Waiter(600, head.pid).check("anything")
    assert stop.value.code == ray_probe.HEAD_EXITED
    assert not ray_probe.head_exited(0)  # no head of ours: a reused cluster


def test_the_probe_says_how_to_call_it() -> None:
    result = subprocess.run([sys.executable, ray_probe.__file__, "wait"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "ray_probe.py status DASHBOARD_URL JOB_ID" in result.stderr
