"""The mechanics of ``run_qwen2.5-3B-it.sh``: the script shows the settings and slime's flags, then hands them here.

    python3 search_r1_launch/train.py BASE_FLAGS... ::eval EVAL_FLAGS... ::dynamic-sampling DYNAMIC_FLAGS...
        ::extra [--dry-run] [CALLER'S FLAGS...]

1. Check everything that can be checked before Ray is touched (:mod:`search_r1_launch.plan`): the settings, the
   paths, the sizes Megatron and slime would refuse, the eval sets, the rollout settings (search_r1_oai/config.py,
   the code the workers run); with ``--dry-run``, print what would run and stop.
2. Live: write the private files into a 0700 folder (the job's runtime env, the slime config with the keys, the
   eval config), then replace this process with :mod:`search_r1_launch.ray_job`, which runs the cluster and the job,
   without the keys in its environment: no process this run starts (Ray's head, ``ray`` commands) gets them.

It runs under the ``python3`` of slime's image, by path (the folder above is put on ``sys.path``), and, for a dry
run on a login node, under a python3 without any package (no pyarrow, no PyYAML unless SEARCH_R1_CONFIG is set).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run by path: import the project's packages from the folder above
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from search_r1_launch import plan
from search_r1_oai import config

SECRET_VARIABLES = (config.WANDB_KEY_VARIABLE, "RETRIEVER_API_KEY")
PRIVATE = "PRIVATE_DIR"  # what a dry run shows in place of the private folder


def dynamic_sampling_on(env: dict[str, str], user_config: str) -> bool:
    """DYNAMIC_SAMPLING as the job's slime config will have it (the variable over SEARCH_R1_CONFIG's key)."""
    base = config.read_config_file(user_config) if user_config else {}
    merged = config.slime_config(env, base, f"{config.CONFIG_FILE_VARIABLE}={user_config}")
    return bool(config.load_settings(SimpleNamespace(**{str(k): v for k, v in merged.items()}), {}).dynamic_sampling)


def slime_config_text(settings: plan.Settings, command: list[str], output: str | None) -> str:
    """The slime config as one line of YAML, secrets masked; with ``output``, also written there whole, with the
    keys. A key of SEARCH_R1_CONFIG that is one of slime's flags (its own, found in SLIME_DIR/slime, or one on the
    train command) is refused: slime applies the file after validating its flags and building the eval datasets."""
    argv = ["--slime-config", "--slime-dir", settings["SLIME_DIR"]]
    if settings["SEARCH_R1_CONFIG"]:
        argv += ["--base", settings["SEARCH_R1_CONFIG"]]
    if output:
        argv += ["--output", output]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = config.main([*argv, "--", *command])
    if status:
        raise SystemExit(status)  # config.main printed the one error line
    return printed.getvalue().strip()


def quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in argv)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    try:
        return launch(plan.split_sections(sys.argv[1:] if argv is None else argv))
    except (plan.LaunchError, config.ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def launch(sections: plan.Sections) -> int:
    env = dict(os.environ)
    settings = plan.Settings.read(env, Path.cwd())
    settings.check(sections.extra)
    checker = plan.Checker(sections.dry_run)
    slime_found = plan.check_paths(settings, checker)
    if not sections.dry_run:
        notes: list[str] = []
        plan.check_live_tools(notes)
        for note in notes:
            print(f"[train] {note}", flush=True)
    evaluation = plan.plan_evaluation(settings, sections.eval, checker)
    model_file = Path(settings["SLIME_DIR"], "scripts", "models", "qwen2.5-3B.sh")
    if slime_found and not model_file.is_file():  # without slime, its warning says it
        checker.refuse(f"{model_file} not found: the train command has no model flags")
    dynamic = dynamic_sampling_on(env, settings["SEARCH_R1_CONFIG"])
    base = [*plan.placement(settings), *plan.key_flags(), *sections.base, *evaluation.flags]
    if dynamic:
        filter_flags = list(sections.dynamic)
        filter_path = plan.flag_value(filter_flags, "--dynamic-sampling-filter-path", "")
        if slime_found and filter_path.startswith("slime."):
            plan.check_filter(settings, filter_path, checker)
        prompts = plan.positive([*base, *sections.extra], "--rollout-batch-size", settings["ROLLOUT_BATCH_SIZE"])
        base += ["--over-sampling-batch-size", str(plan.OVER_SAMPLING_FACTOR * prompts), *filter_flags]
    plan.check_sizes(settings, [*base, *sections.extra], checker)
    checked_command = [*base[4:], *sections.extra]
    if not sections.dry_run:
        return start(settings, sections, base, evaluation, checker.warnings)
    text = slime_config_text(settings, checked_command, None)
    print("\n".join(checker.warnings), file=sys.stderr, end="\n" if checker.warnings else "")
    print_dry_run(settings, sections, base, evaluation, text, dynamic)
    return 0


def train_command(base: list[str], private: str, evaluation: plan.Evaluation, extra: tuple[str, ...]) -> list[str]:
    """The train command: the config files after the script's flags, the caller's flags last (they win)."""
    command = [*base, "--custom-config-path", f"{private}/slime_config.yaml"]
    if evaluation.sets is not None:
        command += ["--eval-config", f"{private}/eval_config.yaml"]
    return [*command, *extra]


def print_dry_run(
    settings: plan.Settings,
    sections: plan.Sections,
    base: list[str],
    evaluation: plan.Evaluation,
    slime_config: str,
    dynamic: bool,
) -> None:
    print(f"slime config (--custom-config-path {PRIVATE}/slime_config.yaml): {slime_config}")
    if evaluation.sets is not None:
        print(f"eval config (--eval-config {PRIVATE}/eval_config.yaml): {json.dumps(evaluation.sets.config())}")
    print(f"runtime_env: {json.dumps(plan.runtime_env(settings))}")
    print(f"eval: {evaluation.summary}")
    if dynamic:
        flags = base[base.index("--over-sampling-batch-size") :]
        print(f"dynamic sampling: {quoted(flags)} (groups whose rewards are all equal are dropped)")
    else:
        print("dynamic sampling: off (DYNAMIC_SAMPLING=0)")
    address = f"{settings['MASTER_ADDR']}:{settings['RAY_PORT']}"
    print(f"ray head (unless a cluster answers at {address}): {quoted(plan.head_command(settings))}")
    if settings.number("NUM_NODES") > 1:
        print(f"each worker node: {quoted(plan.worker_command(settings))}")
    gpus = settings.number("NUM_NODES") * settings.number("NUM_GPUS")
    print(
        f"submit: ray job submit --address DASHBOARD_URL_OF_THE_CLUSTER --submission-id {plan.job_id()}"
        f" --runtime-env PRIVATE_RUNTIME_ENV_FILE --no-wait -- python3 -m search_r1_oai.redact_output"
        f" {PRIVATE}/slime_config.yaml -- TRAIN_COMMAND (once the cluster has {gpus} GPUs; the filter masks the"
        " config's secrets in the job's output)"
    )
    print(f"train command: {quoted(train_command(base, PRIVATE, evaluation, sections.extra))}")


def start(
    settings: plan.Settings,
    sections: plan.Sections,
    base: list[str],
    evaluation: plan.Evaluation,
    warnings: list[str],
) -> int:
    """Write the private files, then become the Ray runner (same process, same PID) without the keys."""
    private = Path(tempfile.mkdtemp(prefix="search-r1-oai-launch."))  # mode 0700
    try:
        command = train_command(base, str(private), evaluation, sections.extra)
        write_private(private / "runtime_env.json", json.dumps(plan.runtime_env(settings)))
        # The real config, secrets included (wandb_key from WANDB_API_KEY, retriever_api_key), straight into 0600.
        slime_config_text(settings, [*base[4:], *sections.extra], str(private / "slime_config.yaml"))
        print("\n".join(warnings), file=sys.stderr, end="\n" if warnings else "")
        if evaluation.sets is not None:
            write_private(private / "eval_config.yaml", json.dumps(evaluation.sets.config()) + "\n")
        job = {
            "private_dir": str(private),
            "job_id": plan.job_id(),
            # slime and Megatron print the config's values (the W&B key among them): the job's output is filtered
            # on its way to Ray's log files and `ray job logs`.
            "job_command": [
                *("python3", "-m", "search_r1_oai.redact_output", f"{private}/slime_config.yaml", "--"),
                *command,
            ],
            "head_command": plan.head_command(settings),
            "worker_command": plan.worker_command(settings),
            "master_addr": settings["MASTER_ADDR"],
            "ray_port": settings.number("RAY_PORT"),
            "dashboard_port": settings.number("RAY_DASHBOARD_PORT"),
            "num_nodes": settings.number("NUM_NODES"),
            "total_gpus": settings.number("NUM_NODES") * settings.number("NUM_GPUS"),
            "cluster_timeout": settings.number("RAY_CLUSTER_TIMEOUT"),
        }
        write_private(private / "job.json", json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        runner = Path(__file__).with_name("ray_job.py")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, str(runner), str(private / "job.json")], env)
    except BaseException:
        import shutil

        shutil.rmtree(private, ignore_errors=True)
        raise
    return 0  # not reached: execve replaced this process


if __name__ == "__main__":
    sys.exit(main())
