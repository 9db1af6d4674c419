"""The training wrapper's entry point: ``run_qwen2.5-3B-it-with-retrieval.sh`` holds the settings and calls this.

    python3 search_r1_launch/wrapper.py --script PATH --session NAME ... -- [USER ARGUMENTS]

Order: every check (nothing is started until all pass), then an earlier run's record, then the run itself
(wrapper_run), whose cleanup runs however it ends: training's exit code, 1 for a failure, 130 / 143 for SIGINT /
SIGTERM. ``--cleanup`` stops what a run killed with SIGKILL left running, exactly as its record names it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run by path from the .sh: the package lives one folder up
    if sys.version_info < (3, 11):  # noqa: UP036  (a clear line, not a syntax error, from an old python3)
        sys.exit("[with-retrieval] error: python3 is older than 3.11; put a python3 >= 3.11 first on PATH")
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from search_r1_launch.wrapper_checks import (
    TrainingPaths,
    from_root,
    preflight_python_problems,
    setting,
    training_problems,
)
from search_r1_launch.wrapper_log import LaunchError, Stopped, error, log
from search_r1_launch.wrapper_procs import stop
from search_r1_launch.wrapper_record import Record, record_path
from search_r1_launch.wrapper_run import RETRIEVER_GRACE_S, TRAINING_GRACE_S, Plan, Run
from search_r1_launch.wrapper_settings import Settings, parse, read_environ
from search_r1_launch.wrapper_tmux import Tmux
from search_r1_launch.wrapper_urls import replicas

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_BINDS = ("::1", "[::1]", "localhost")


def prepare(settings: Settings, environ: dict[str, str]) -> Plan:
    """Every check, in the order a user fixes them; a LaunchError names the first mistake (the training side's
    all at once). Nothing is started here."""
    if not Tmux(environ).binary:
        raise LaunchError("tmux is not installed (apt-get install -y tmux)")
    if not settings.ready_timeout.isdigit():
        raise LaunchError(f"RETRIEVER_READY_TIMEOUT must be a whole number of seconds (got '{settings.ready_timeout}')")
    config = environ.get("SEARCH_R1_CONFIG", "")
    if config and not os.path.isabs(config):  # the training window starts in ROOT
        environ["SEARCH_R1_CONFIG"] = os.path.join(os.getcwd(), config)
    urls = setting(ROOT, "RETRIEVAL_SERVER_URL", environ)
    topk = setting(ROOT, "SEARCH_R1_TOPK", environ)  # the retriever started here serves the rollout's top-k
    if environ.get("TOPK") and environ["TOPK"] != topk:
        raise LaunchError(
            f"TOPK={environ['TOPK']} differs from the rollout's top-k {topk}: the retriever started here uses the "
            "rollout's; set SEARCH_R1_TOPK (or search_r1_topk in SEARCH_R1_CONFIG) instead of TOPK"
        )
    train_script, paths = check_training_side(settings, environ)
    log_dir = Path(os.path.abspath(settings.log_dir))
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LaunchError(f"cannot create LOG_DIR={settings.log_dir} ({err.strerror})") from None
    record = Record(record_path(str(log_dir), settings.session))
    earlier_run(settings, record, environ)
    found = replicas(urls)
    plan = Plan(settings, ROOT, environ, log_dir, record, found, topk, train_script.resolve(),
                paths.train_parquet, paths.hf_ckpt, start_local=found[0].local,
                ready_timeout_s=int(settings.ready_timeout), skip_preflight=settings.skip_preflight == "1")  # fmt: skip
    if plan.start_local:
        plan.host, plan.port = settings.host or found[0].bind, found[0].port
        check_retriever(plan)
    else:
        log(f"{found[0].url} is not on this machine: no retriever is started here, it is only health-checked")
    return plan


def check_training_side(settings: Settings, environ: dict[str, str]) -> tuple[Path, TrainingPaths]:
    """The training script, and what it and the preflight read: every missing piece at once, one line each."""
    train_script = Path(settings.train_script)
    if not train_script.is_file():
        raise LaunchError(f"training script not found: TRAIN_SCRIPT={settings.train_script}")
    if settings.skip_preflight not in ("0", "1"):
        raise LaunchError(f"SKIP_PREFLIGHT must be 0 or 1 (got '{settings.skip_preflight}')")
    values = (settings.slime_dir, settings.hf_ckpt, settings.ref_load, settings.data_dir)
    paths = TrainingPaths(*(from_root(ROOT, value) for value in values))
    ours = train_script.resolve() == (ROOT / "run_qwen2.5-3B-it.sh").resolve()
    preflight = settings.skip_preflight == "0"
    problems = training_problems(paths, our_script=ours, preflight=preflight)
    if preflight:
        problems += preflight_python_problems(settings.preflight_python, environ)
    if problems:
        raise LaunchError(*problems)
    return train_script, paths


def check_retriever(plan: Plan) -> None:
    """start_server.sh's own checks (index, corpus, its python, encoder, a free port), then the bearer token a
    retriever bound beyond loopback requires: the caller's, else one made for this run (environment, never argv)."""
    server = ROOT / "local_dense_retriever" / "start_server.sh"
    result = subprocess.run(["bash", str(server), "--check", "--port", str(plan.port), "--host", plan.host],
                            env=plan.environ, capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    if result.returncode != 0:
        said = (result.stdout + result.stderr).rstrip("\n").removeprefix("[start_server] error: ")
        raise LaunchError(f"the retriever for {plan.replicas[0].url} cannot start: {said}")
    if plan.environ.get("RETRIEVER_API_KEY") or plan.host.startswith("127.") or plan.host in LOOPBACK_BINDS:
        return
    plan.environ["RETRIEVER_API_KEY"] = secrets.token_urlsafe(32)
    log(f"the retriever binds {plan.host}, beyond loopback: /retrieve requires a bearer token generated for this run"
        " (RETRIEVER_API_KEY in the retriever's and training's environment)")  # fmt: skip


def earlier_run(settings: Settings, record: Record, environ: dict[str, str]) -> None:
    """An earlier run of this session killed before it cleaned up: refuse while any of it runs, else tidy up.
    Then a tmux session of that name that exists anyway (somebody's own, say) is refused, never reused."""
    if record.path.is_file():
        tidy_up_after(settings, record, environ)
    if Tmux(environ).has_session(settings.session):
        raise LaunchError(
            f"tmux session '{settings.session}' already exists (an earlier run?). Attach with: tmux attach -t "
            f"{settings.session}; end it with: tmux kill-session -t {settings.session}; or set TMUX_SESSION to "
            "another name"
        )


def tidy_up_after(settings: Settings, record: Record, environ: dict[str, str]) -> None:
    """The recorded run: refuse while any of it runs, else remove its leftovers."""
    old = Record.read(record.path)
    if old.wrapper.alive():
        raise LaunchError(
            f"a run of session '{old.session}' is still going (its wrapper is pid {old.wrapper.pid}; record: "
            f"{record.path}): watch it with: tmux attach -t {old.session}; stop it with: bash {settings.script} "
            "--cleanup; or set TMUX_SESSION and RETRIEVAL_SERVER_URL (port) for a second run"
        )
    alive = old.alive(environ)
    if alive:
        raise LaunchError(
            f"an earlier run of session '{old.session}' was killed before it cleaned up (record: {record.path}); still"
            f" running: {', '.join(alive)}{old.port_note()}; stop exactly these and remove its leftovers with: bash "
            f"{settings.script} --cleanup (same TMUX_SESSION and LOG_DIR)"
        )
    log(f"an earlier run of session '{old.session}' was killed before it cleaned up; nothing of it still runs")
    old.remove_leftovers()


def cleanup_recorded(settings: Settings, environ: dict[str, str]) -> int:
    """--cleanup: stop exactly what the recorded run still runs, remove its leftovers."""
    if not os.path.isdir(settings.log_dir):
        log(f"nothing to clean up: LOG_DIR={settings.log_dir} does not exist")
        return 0
    path = record_path(os.path.abspath(settings.log_dir), settings.session)
    if not path.is_file():
        log(f"nothing to clean up: no record of a run of session '{settings.session}' in {settings.log_dir}")
        return 0
    old = Record.read(path)
    log(f"record {path}: {', '.join(old.alive(environ)) or 'nothing'} still running{old.port_note()}")
    if old.wrapper.alive():
        old.stop_wrapper()  # still running: its own cleanup stops what it started
    if old.retriever.alive():
        stop(old.retriever.pid, "retriever", RETRIEVER_GRACE_S)
    if old.training.alive():
        stop(-old.training.pid, "training", TRAINING_GRACE_S)  # the pane leads training's process group
    if old.session_alive(environ):
        old.tmux(environ).kill_session(old.session)
        log(f"removed tmux session '{old.session}'")
    old.remove_leftovers()
    left = old.alive(environ)
    if left:
        raise LaunchError(f"still running after cleanup: {', '.join(left)}")
    log(f"cleaned up the run of session '{old.session}'{old.port_note()}")
    return 0


def _stop_on(signum: int, _frame: object) -> None:
    raise Stopped(128 + signum)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, _stop_on)
    signal.signal(signal.SIGTERM, _stop_on)
    run = None
    try:
        settings = parse(argv)
        if settings.help:
            return subprocess.run(["bash", str(ROOT / "scripts" / "print_usage.sh"), settings.script]).returncode
        environ = dict(os.environ)
        if settings.environ_fd is not None:
            environ = read_environ(settings.environ_fd)
            # The `env -0` that wrote it is this process's only child (the .sh exec'd into this process): reap it
            # rather than leave a zombie for the whole run.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-1, 0)
        if settings.cleanup:
            return cleanup_recorded(settings, environ)
        run = Run(prepare(settings, environ))
        return run.go()
    except LaunchError as err:
        error(*err.lines)
        return 1
    except Stopped as stopped:
        return stopped.code
    finally:
        if run is not None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C during cleanup ends the wrapper at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            run.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
