"""The live half of ``run_qwen2.5-3B-it.sh``: the Ray cluster, the job, its log, its outcome, and the cleanup.

    python3 ray_job.py PRIVATE_DIR/job.json      (exec'd by train.py, which wrote the private folder)

- It reuses the Ray cluster that answers at MASTER_ADDR:RAY_PORT and leaves it running, or starts a head there in
  a session of its own and stops exactly that session on exit (never ``ray stop``, which stops every Ray cluster
  on the machine: another one here, a developer's or another run's, is in another session and untouched).
- Ray token authentication (Ray >= 2.52): the caller's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
  ~/.ray/auth_token) or, for a head started here, a new one in a 0600 file of the private folder. The worker-node
  command names where the token is, never the token.
- It submits the job under its own submission id, follows its log and exits with its outcome: 0 when it
  succeeded, the driver's exit code (or 1) when it failed or was stopped from elsewhere. INT, TERM and HUP stop
  the job first (exit 130, 143, 129); whatever it started is stopped by PID; the private folder is removed.

Its environment holds no key (train.py left them out), so neither does any process it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("ray_probe.py")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class Interrupted(Exception):
    """A signal asked the launcher to stop; ``code`` is its exit status (128 + the signal)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Failed(Exception):
    """The run cannot go on: the message is the one error line; ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    with contextlib.suppress(OSError):  # a closed terminal must not stop the cleanup
        print(f"[train] {message}", flush=True)


def answers(host: str, port: int) -> bool:
    """Something accepts TCP connections at host, port."""
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                members.append(int(name))
    return members


def stop_process(process: subprocess.Popen[Any], grace_s: float) -> None:
    """TERM, then KILL after ``grace_s`` seconds; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def find_token(env: dict[str, str], home: str | None) -> str:
    """Where the caller's Ray token is: "variable", "file" (RAY_AUTH_TOKEN_PATH set in ``env``), or "" for none.
    ``env`` gains RAY_AUTH_TOKEN_PATH for ~/.ray/auth_token and RAY_AUTH_MODE=token whenever there is a token."""
    if env.get("RAY_AUTH_TOKEN"):
        found = "variable"
    elif env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"])
        if not (path.is_file() and os.access(path, os.R_OK) and path.stat().st_size > 0):
            raise Failed(f"RAY_AUTH_TOKEN_PATH={path} is not a readable, non-empty token file")
        found = "file"
    elif home and os.path.isfile(default := os.path.join(home, ".ray", "auth_token")) and os.path.getsize(default):
        env["RAY_AUTH_TOKEN_PATH"] = default
        found = "file"
    else:
        return ""
    env["RAY_AUTH_MODE"] = "token"
    return found


def new_token(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


class Run:
    """One launch: what it started, so that the cleanup stops exactly that."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.private = Path(job["private_dir"])
        self.env = dict(os.environ)
        self.head: subprocess.Popen[bytes] | None = None
        self.child: subprocess.Popen[bytes] | None = None  # the helper or log follower being waited for
        self.dashboard = ""
        self.submitted = False
        self.done = False

    def wait_child(self, argv: list[str], deadline_s: float | None = None, env: dict[str, str] | None = None) -> int:
        """Run a child in the background and wait for it, so that a signal is handled at once; its exit code."""
        child = self.child = subprocess.Popen(argv, env=env or self.env, stdin=subprocess.DEVNULL)
        try:
            rc = child.wait(timeout=deadline_s)  # a signal raises here, leaving the child to the cleanup
        except subprocess.TimeoutExpired:
            stop_process(child, 10)
            rc = 124
        self.child = None
        return rc

    def start_cluster(self) -> str:
        """Reuse the cluster at MASTER_ADDR:RAY_PORT or start a head there; returns where the token is."""
        host, port = self.job["master_addr"], self.job["ray_port"]
        token_from = find_token(self.env, self.env.get("HOME"))
        if answers(host, port):
            log(f"reusing the Ray cluster at {host}:{port} (it keeps running after this script)")
            return token_from
        # A head whose dashboard port is taken starts without a dashboard, and a job cannot be submitted to it.
        dashboard_port = self.job["dashboard_port"]
        if answers("127.0.0.1", dashboard_port):
            raise Failed(
                f"port {dashboard_port} is in use (another Ray cluster's dashboard?): set RAY_DASHBOARD_PORT to a free"
                " port, or RAY_PORT to that cluster's port to reuse it"
            )
        if not token_from:
            token_file = self.private / "ray_auth_token"
            new_token(token_file)
            self.env.update(RAY_AUTH_TOKEN_PATH=str(token_file), RAY_AUTH_MODE="token")
            token_from = "file"
        log(f"starting a Ray head at {host}:{port} with token authentication (stopped when this script exits)")
        with (self.private / "ray-head.log").open("wb") as out:
            self.head = subprocess.Popen(
                self.job["head_command"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return token_from

    def worker_command(self, token_from: str) -> tuple[str, str]:
        """The command each worker node runs, and what to do first: it names where the token is, never the token."""
        command = " ".join(self.job["worker_command"])
        if token_from == "file":
            path = self.env["RAY_AUTH_TOKEN_PATH"]
            note = f"(first copy {path} from this node to the same path there, mode 0600)"
            return f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={path} {command}", note
        if token_from == "variable":
            return f"RAY_AUTH_MODE=token {command}", "(with RAY_AUTH_TOKEN set to this node's token)"
        return command, ""

    def wait_for_cluster(self, worker: str) -> None:
        timeout = self.job["cluster_timeout"]
        address = f"{self.job['master_addr']}:{self.job['ray_port']}"
        url_file = self.private / "dashboard_url"
        head_pid = str(self.head.pid) if self.head else "0"
        argv = [sys.executable, str(PROBE), "wait", address, str(self.job["total_gpus"]), str(timeout), head_pid]
        rc = self.wait_child([*argv, str(url_file), worker, str(self.job["num_nodes"])], timeout + 60)
        if rc == 3:
            lines = (self.private / "ray-head.log").read_text(errors="replace").splitlines()[-30:]
            print("\n".join(lines), file=sys.stderr)
            raise Failed(
                "the Ray head exited while starting (its output is above; if a port it needs is taken, move it with"
                " RAY_START_ARGS)"
            )
        if rc == 124:
            raise Failed(f"no answer from the Ray cluster at {address} within {timeout + 60}s")
        if rc:
            raise Failed("", rc)  # the helper printed the error line
        self.dashboard = url_file.read_text().strip()
        log(f"Ray dashboard: {self.dashboard}")

    def submit(self, token_from: str) -> None:
        """The submit runs to its end before a signal is handled, so the cleanup cannot miss the job."""
        job_id = self.job["job_id"]
        self.submitted = True
        argv = ["ray", "job", "submit", "--address", self.dashboard, "--submission-id", job_id]
        argv += ["--runtime-env", str(self.private / "runtime_env.json"), "--no-wait", "--", *self.job["job_command"]]
        with (self.private / "submit.log").open("wb") as out:
            process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            while True:
                try:
                    rc = process.wait()
                    break
                except Interrupted as interrupt:  # after the submit: then stop the job
                    pending = interrupt
                    process.wait()
                    raise pending from None
        if rc:
            sys.stderr.write((self.private / "submit.log").read_text(errors="replace"))
            raise Failed("ray job submit failed (output above)")
        elsewhere = f"ray job logs|status|stop --address {self.dashboard} {job_id}"
        if token_from:
            elsewhere = f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=TOKEN_FILE {elsewhere}"
        log(f"job {job_id} submitted; from elsewhere: {elsewhere}")

    def outcome(self) -> int:
        """Follow the job's log; its final state decides the exit code. A broken log stream while the job runs
        is followed by waiting for the job."""
        job_id = self.job["job_id"]
        self.wait_child(
            ["ray", "job", "logs", "--address", self.dashboard, "--follow", job_id],
            env={**self.env, "PYTHONUNBUFFERED": "1"},
        )
        while True:
            try:
                answer = subprocess.run(
                    [sys.executable, str(PROBE), "status", self.dashboard, job_id],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                answer = None
            if answer is None or answer.returncode or not answer.stdout.split():
                raise Failed(f"lost contact with the Ray cluster ({self.dashboard}) while job {job_id} ran")
            state, *code = answer.stdout.split()
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            log(
                f"the log stream ended while job {job_id} is {state}; waiting for it (ray job logs --address"
                f" {self.dashboard} {job_id})"
            )
            time.sleep(10)
        self.done = True
        if state == "SUCCEEDED":
            log(f"job {job_id} succeeded")
            return 0
        if state == "FAILED":
            exit_code = int(code[0]) if code and code[0].isdigit() and 1 <= int(code[0]) <= 255 else 1
            log(f"job {job_id} failed (exit code {exit_code})")
            return exit_code
        log(f"job {job_id} was stopped from outside this script")
        return 1

    def run(self) -> int:
        token_from = self.start_cluster()
        worker, note = self.worker_command(token_from)
        if self.job["num_nodes"] > 1:
            log(f"on each of the other {self.job['num_nodes'] - 1} node(s) run:  {worker} {note}")
        self.wait_for_cluster(worker)
        self.submit(token_from)
        return self.outcome()

    def stop_head(self) -> None:
        """TERM makes `ray start --block` drain and stop what it started; what of its session outlives it (workers
        of a dying raylet) is killed by PID."""
        assert self.head is not None
        log(f"stopping the Ray head this script started (pid {self.head.pid})")
        stop_process(self.head, 60)
        leftover: list[int] = []
        for _ in range(50):
            leftover = session_members(self.head.pid)
            if not leftover:
                return
            for pid in leftover:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        log(f"warning: Ray processes of session {self.head.pid} are still there: {leftover}")

    def cleanup(self) -> None:
        """Bounded in time; a second Ctrl-C must not cut it short."""
        for sig in EXIT_CODES:
            signal.signal(sig, signal.SIG_IGN)
        if self.child is not None:
            stop_process(self.child, 5)
        if self.submitted and not self.done:
            job_id = self.job["job_id"]
            log(f"stopping Ray job {job_id}")
            argv = ["ray", "job", "stop", "--address", self.dashboard, job_id]
            try:
                with (self.private / "stop.log").open("wb") as out:
                    stopped = subprocess.run(argv, env=self.env, stdout=out, stderr=out, timeout=60).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                stopped = False
            if stopped:
                log(f"job {job_id} stopped")
            else:
                log(f"warning: could not confirm that job {job_id} stopped: {' '.join(argv)}")
        if self.head is not None:
            self.stop_head()
        shutil.rmtree(self.private, ignore_errors=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(EXIT_CODES[signal.Signals(signum)])


def main(argv: list[str]) -> int:
    job_file = Path(argv[0])
    run = Run(json.loads(job_file.read_text()))
    for sig in EXIT_CODES:
        signal.signal(sig, _interrupt)
    try:
        return run.run()
    except Interrupted as interrupt:
        return interrupt.code
    except Failed as failure:
        if str(failure):
            print(f"error: {failure}", file=sys.stderr, flush=True)
        return failure.code
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
