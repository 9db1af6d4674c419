"""One training run with its retriever, once every check has passed: the tmux windows, the health wait, the
preflight, training, and the cleanup of exactly what this run started.

Window 0 runs the retriever when this machine serves the first replica; training runs in the next window. The
run's record (wrapper_record) names what was started as soon as it is, so that a run killed with SIGKILL can be
cleaned up by the next one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from search_r1_launch.wrapper_env import (
    env_file_text,
    retriever_reads,
    retriever_runner,
    training_runner,
    write_private,
)
from search_r1_launch.wrapper_log import LaunchError, log
from search_r1_launch.wrapper_procs import running, stop
from search_r1_launch.wrapper_record import Proc, Record
from search_r1_launch.wrapper_settings import Settings
from search_r1_launch.wrapper_tmux import Session, Tmux, inside_tmux, on_a_terminal
from search_r1_launch.wrapper_urls import Replica, healthy

ENV_READ_TIMEOUT_S = 60  # for a window to read (and delete) its environment file
RETRIEVER_GRACE_S = 10
# Training's pane leads a process group (training script, tee, what they started); SIGTERM lets the launcher run
# its exit trap (ray job stop, then the Ray head it started, up to 60 s each), so it gets that long before SIGKILL.
TRAINING_GRACE_S = 150


@dataclass
class Plan:
    """Everything checked: what the run will start, where and with what."""

    settings: Settings
    root: Path
    environ: dict[str, str]  # the caller's, plus what the wrapper adds (SEARCH_R1_CONFIG absolute, the key)
    log_dir: Path
    record: Record
    replicas: list[Replica]
    topk: str
    train_script: Path
    preflight_data: Path
    preflight_tokenizer: Path
    start_local: bool
    host: str = ""
    port: int = 0
    ready_timeout_s: int = 600
    skip_preflight: bool = False


@dataclass
class Run:
    plan: Plan
    run_dir: Path = field(init=False)
    session: Session = field(init=False)
    retriever_pid: int = 0
    training_pid: int = 0
    training_window: int = 0

    def __post_init__(self) -> None:
        plan = self.plan
        stamp = time.strftime("%Y%m%d_%H%M%S")
        self.logs = {what: plan.log_dir / f"{what}-{stamp}.log" for what in ("retriever", "preflight", "training")}
        self.bash = shutil.which("bash", path=plan.environ.get("PATH")) or "/bin/bash"
        self.rm = shutil.which("rm", path=plan.environ.get("PATH")) or "rm"
        self.session = Session(Tmux(plan.environ), plan.settings.session, os.getcwd())
        tmp = plan.environ.get("TMPDIR") or "/tmp"
        self.run_dir = Path(tempfile.mkdtemp(prefix="search-r1-run.", dir=tmp))  # 0700: environment files, status
        record = plan.record
        record.wrapper, record.started, record.session = Proc.of(os.getpid()), int(time.time()), plan.settings.session
        record.run_dir, record.host, record.port = str(self.run_dir), plan.host, str(plan.port or "")
        record.write()

    def existing_logs(self) -> str:
        found = [str(path) for path in self.logs.values() if path.is_file()]
        return f"logs: {' '.join(found)}" if found else "no log was written"

    def go(self) -> int:
        """The run from the retriever to training's end; training's exit code."""
        if self.plan.start_local:
            self.start_retriever()
            self.training_window = 1
        self.wait_healthy()
        self.preflight()
        self.start_training()
        self.attach()
        return self.wait_training()

    def _window(self, index: int, title: str, env_file: Path, runner: str) -> int:
        script = self.run_dir / f"{title}.sh"
        script.write_text(runner)
        pid = self.session.open_window(index, title, str(script))
        record = self.plan.record
        record.session_created, record.socket = self.session.created, self.session.socket
        setattr(record, title, Proc.of(pid))
        record.write()
        self.wait_read(env_file, index, title)
        return pid

    def wait_read(self, env_file: Path, index: int, what: str) -> None:
        """Until the window's runner has read and deleted its environment file; a pane that ended first is left
        to the caller's own checks, one that never reads it stops the run."""
        deadline = time.monotonic() + ENV_READ_TIMEOUT_S
        while env_file.exists():
            if self.session.pane_gone(index):
                break
            if time.monotonic() >= deadline:
                env_file.unlink(missing_ok=True)
                raise LaunchError(
                    f"the {what} window did not read its environment file within {ENV_READ_TIMEOUT_S}s (is tmux or "
                    "its shell stuck?)"
                )
            time.sleep(0.1)
        env_file.unlink(missing_ok=True)

    def start_retriever(self) -> None:
        plan = self.plan
        extra = plan.settings.retriever_env.split()
        env_file = self.run_dir / "retriever.environment"
        write_private(env_file, env_file_text(plan.environ, lambda name: retriever_reads(name, extra)))
        server = [self.bash, str(plan.root / "local_dense_retriever" / "start_server.sh"), "--port", str(plan.port),
                  "--host", plan.host, "--log", str(self.logs["retriever"])]  # fmt: skip
        runner = retriever_runner(env_file, self.rm, server, plan.topk, plan.settings.retriever_gpus)
        log(f"starting the retriever on {plan.host}:{plan.port}")
        self.retriever_pid = self._window(0, "retriever", env_file, runner)

    def wait_healthy(self) -> None:
        plan = self.plan
        timeout = plan.ready_timeout_s
        log(f"waiting up to {timeout}s for GET /health of: {' '.join(r.url for r in plan.replicas)}")
        start = time.monotonic()
        pending = list(plan.replicas)
        while True:
            pending = [replica for replica in pending if not healthy(replica)]
            if not pending:
                break
            if self.retriever_pid and (not running(self.retriever_pid) or self.session.pane_gone(0)):
                print("----- retriever output -----", file=sys.stderr, flush=True)
                print(self.session.capture(0).rstrip("\n"), file=sys.stderr, flush=True)
                raise LaunchError(f"the retriever exited before it became ready ({self.existing_logs()})")
            if time.monotonic() - start >= timeout:
                retriever_log = self.logs["retriever"]
                if self.retriever_pid and pending[0] == plan.replicas[0] and retriever_log.is_file():
                    tail = retriever_log.read_text(errors="replace").splitlines()[-40:]
                    print("\n".join(tail), file=sys.stderr, flush=True)
                raise LaunchError(
                    f"no answer to GET /health after {timeout}s from: {' '.join(r.url for r in pending)} (start it, "
                    f"fix RETRIEVAL_SERVER_URL or raise RETRIEVER_READY_TIMEOUT; {self.existing_logs()})"
                )
            time.sleep(1)
        where = f" (log: {self.logs['retriever']})" if self.retriever_pid else ""
        log(f"retriever ready after {time.monotonic() - start:.0f}s{where}")

    def preflight(self) -> None:
        """The preflight against the retriever that is up now, from the project folder with the caller's
        environment; a failure stops the run before training."""
        plan = self.plan
        if plan.skip_preflight:
            log("preflight skipped (SKIP_PREFLIGHT=1)")
            return
        urls = ",".join(replica.url for replica in plan.replicas)
        command = [plan.settings.preflight_python, "-m", "search_r1_oai.preflight", "--data", str(plan.preflight_data),
                   "--tokenizer", str(plan.preflight_tokenizer), "--retrieval-url", urls]  # fmt: skip
        log(f"preflight: {shlex.join(command)}")
        pythonpath = plan.environ.get("PYTHONPATH")
        env = {**plan.environ, "PYTHONPATH": f"{plan.root}:{pythonpath}" if pythonpath else str(plan.root)}
        report = self.logs["preflight"]
        with report.open("wb") as out:
            try:
                rc = subprocess.run(command, cwd=plan.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT).returncode  # fmt: skip
            except OSError as err:
                raise LaunchError(f"PREFLIGHT_PYTHON={command[0]} cannot run ({err.strerror})") from None
        text = report.read_text(errors="replace")
        if rc != 0:
            print(text, end="", file=sys.stderr, flush=True)
            raise LaunchError(
                f"preflight failed (exit code {rc}; its report is above and in {report}): fix what it marks FAIL, or "
                "set SKIP_PREFLIGHT=1 to train anyway"
            )
        print(text, end="", flush=True)
        log("preflight passed")

    def start_training(self) -> None:
        plan = self.plan
        env_file = self.run_dir / "environment"
        write_private(env_file, env_file_text(plan.environ))
        command = [self.bash, str(plan.train_script), *plan.settings.train_args]
        self.status = self.run_dir / "training.status"
        log_file = self.logs["training"]
        runner = training_runner(env_file, self.rm, str(plan.root), command, log_file, self.status)
        log_file.touch()  # exists from now on, so the path printed below is one that exists
        self.training_pid = self._window(self.training_window, "training", env_file, runner)
        log(f"training started (log: {log_file})")
        windows = f"Ctrl-b {self.training_window} training, Ctrl-b d detach"
        if self.retriever_pid:
            windows = f"Ctrl-b 0 retriever, {windows}"
        log(f"watch it: tmux attach -t {plan.settings.session}   ({windows})")

    def attach(self) -> None:
        """--attach: show the training window (switch this client when inside tmux: attaching would nest)."""
        if not self.plan.settings.attach:
            return
        name, tmux = self.plan.settings.session, self.session.tmux
        target = f"={name}:{self.training_window}"
        if inside_tmux(self.plan.environ):
            tmux.run("set-option", "-t", f"={name}:", "detach-on-destroy", "off")
            if tmux.run("switch-client", "-t", target).returncode == 0:
                log(
                    f"switched this tmux client to {name} (this script goes on waiting in the window it was started in)"
                )
            else:
                log(f"could not switch the tmux client; run: tmux switch-client -t {name}")
        elif on_a_terminal():
            tmux.interactive("attach", "-t", target)
            if tmux.has_session(name):
                log(f"detached; training goes on and this script keeps waiting. reattach with: tmux attach -t {name}")
        else:
            log(f"--attach needs a terminal; watch with: tmux attach -t {name}")

    def wait_training(self) -> int:
        """Until training's runner writes its exit code; a pane that ended without it was killed."""
        while not self.status_written():
            if not running(self.training_pid) or self.session.pane_gone(self.training_window):
                if self.status_written():
                    break
                log_file = self.logs["training"]
                where = f"see its log: {log_file}" if log_file.is_file() else "it wrote no log"
                raise LaunchError(
                    f"training ended without reporting an exit code (its window was killed or closed); {where}"
                )
            time.sleep(1)
        text = self.status.read_text().strip()
        self.training_pid = 0  # it finished: what it left running is its own business, as without this wrapper
        code = int(text) if text.isdigit() else 1
        log(f"training finished with exit code {text}")
        return code

    def status_written(self) -> bool:
        return self.status.is_file() and self.status.stat().st_size > 0

    def cleanup(self) -> None:
        """Stop what this run started and is still running, remove its private folder and its record."""
        if self.retriever_pid:
            stop(self.retriever_pid, "retriever", RETRIEVER_GRACE_S)
        if self.training_pid:
            stop(-self.training_pid, "training", TRAINING_GRACE_S)
        self.session.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.plan.record.path.unlink(missing_ok=True)
        log(f"cleaned up; {self.existing_logs()}")
