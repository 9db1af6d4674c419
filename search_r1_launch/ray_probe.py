"""The launcher's short-lived Ray clients, each run as a child process with a deadline (``ray.init`` blocks while
nothing listens, and a driver should not live in the launcher itself):

    python3 ray_probe.py wait ADDRESS GPUS TIMEOUT_S HEAD_PID URL_FILE WORKER_COMMAND NUM_NODES
        connect to the cluster as a driver for a moment, read the dashboard address it reports (where ``ray job
        submit`` must go: a preset MASTER_ADDR is not it when the dashboard listens on 127.0.0.1), wait until it
        has GPUS GPUs, warn when a reused cluster lets anyone in, and write the dashboard URL to URL_FILE.
        Exit 3: the head the launcher started (HEAD_PID, 0 for none) exited; 1: an error line on stderr.
    python3 ray_probe.py status DASHBOARD_URL JOB_ID
        print the job's status and its driver's exit code (if any), e.g. ``FAILED 3``.

Standard library plus ``ray``, imported only once needed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEAD_EXITED = 3
if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # run by path: the launcher's own files must not shadow what ray imports


def head_exited(head_pid: int) -> bool:
    """True once the head (our sibling's child: a zombie until reaped) is gone; False when there is none."""
    if not head_pid:
        return False
    try:
        with open(f"/proc/{head_pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class Waiter:
    """Fails the wait with one line once the deadline passed, or at once when the head exited."""

    def __init__(self, timeout_s: int, head_pid: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + timeout_s
        self.timeout_s = timeout_s
        self.head_pid = head_pid

    def check(self, what: str) -> None:
        if head_exited(self.head_pid):
            sys.exit(HEAD_EXITED)
        if self.clock() > self.deadline:
            waited = self.clock() - self.started
            print(f"error: {what} (waited {waited:.0f}s; RAY_CLUSTER_TIMEOUT={self.timeout_s})", file=sys.stderr)
            sys.exit(1)

    def shorten(self, seconds: float) -> None:
        self.deadline = min(self.deadline, self.clock() + seconds)


def wait_for_head(address: str, waiter: Waiter) -> None:
    host, port = address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            return
        except OSError:
            waiter.check(f"no Ray head answers at {address}")
            time.sleep(0.5)


def connect(address: str, waiter: Waiter) -> Any:
    """A driver's connection to the cluster once it accepts drivers and reports its dashboard."""
    import ray

    no_dashboard_since = None
    while True:
        try:  # a head still starting may answer before it accepts drivers or has registered its dashboard
            context = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            # When the launcher is interrupted it TERMs this helper: leave quietly, without Ray's crash report.
            signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
            if context.dashboard_url:
                return context
            problem = "reports no dashboard (job submission needs one; was it started with --include-dashboard=false?)"
            if no_dashboard_since is None:  # it registers within seconds of accepting drivers: do not wait long
                no_dashboard_since = time.monotonic()
                waiter.shorten(60)
        except Exception as error:  # retried until the deadline, then reported
            problem = f"does not accept a driver: {error}"
            if not os.environ.get("RAY_AUTH_MODE"):
                problem += (
                    " (if it uses token authentication, give its token: RAY_AUTH_TOKEN_PATH=FILE or ~/.ray/auth_token)"
                )
        ray.shutdown()
        waiter.check(f"the Ray cluster at {address} {problem}")
        time.sleep(1)


def wait_for_gpus(address: str, need: int, num_nodes: int, worker_command: str, waiter: Waiter) -> None:
    import ray

    seen = None
    while True:
        gpus = ray.cluster_resources().get("GPU", 0)
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        if gpus >= need:
            return
        if (gpus, nodes) != seen:
            print(f"[train] waiting for GPUs: {gpus:g} of {need} on {nodes} node(s)", flush=True)
            seen = (gpus, nodes)
        hint = f"on each worker node run: {worker_command}" if num_nodes > 1 else "lower NUM_GPUS or add a node"
        waiter.check(
            f"the Ray cluster at {address} has {gpus:g} GPU(s) on {nodes} node(s), the run needs {need}"
            f" (NUM_NODES={num_nodes} x NUM_GPUS={need // num_nodes}); {hint}"
        )
        time.sleep(2)


def open_to_all(url: str) -> bool:
    """A dashboard that answers without a token lets anyone submit jobs (401: it wants one)."""
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=10).close()
    except (urllib.error.URLError, OSError):
        return False
    return True


def wait(argv: list[str]) -> int:
    address, need, timeout_s, head_pid, url_file, worker_command, num_nodes = argv
    waiter = Waiter(int(timeout_s), int(head_pid))
    wait_for_head(address, waiter)
    context = connect(address, waiter)
    wait_for_gpus(address, int(need), int(num_nodes), worker_command, waiter)
    url = context.dashboard_url if "://" in context.dashboard_url else f"http://{context.dashboard_url}"
    if not int(head_pid) and open_to_all(url):
        print(
            f"[train] warning: the Ray cluster at {address} has no authentication: anyone who reaches its ports can"
            " submit jobs (run any code as its user) and read every job's environment and logs; start it with"
            " RAY_AUTH_MODE=token (README: Security)",
            flush=True,
        )
    with open(url_file, "w") as f:
        f.write(url)
    return 0


def status(argv: list[str]) -> int:
    from ray.job_submission import JobSubmissionClient

    url, job = argv
    info = JobSubmissionClient(url).get_job_info(job)
    code = getattr(info, "driver_exit_code", None)
    state = info.status.value if hasattr(info.status, "value") else info.status
    print(state, "" if code is None else code)
    return 0


def main(argv: list[str]) -> int:
    commands = {"wait": (wait, 7), "status": (status, 2)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    command, _ = commands[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
