"""Start the SGLang server that ``evaluate.py --model`` evaluates, and make sure it never outlives the run.

Why here: evaluating a checkpoint should be one command. The server runs in its own process group (so a Ctrl-C in
the terminal reaches evaluate.py, which stops it in order), logs into a file, listens on a free port of 127.0.0.1,
and is stopped by that group (SIGTERM, then SIGKILL after a bound) at the end, on an error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx

SGLANG_RELEASE = "0.5.15.post1"  # slime's image; tests/SGLANG_VERSIONS.md
NOT_INSTALLED = (
    "evaluate.py --model needs SGLang in this Python (python -c 'import sglang' fails): "
    f"pip install 'sglang[all]=={SGLANG_RELEASE}' or pass --policy-url of a running server"
)
STOP_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 15.0
LOG_TAIL_LINES = 20
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class PolicyServerError(Exception):
    """The server cannot be started, or died or stayed unready past its deadline (the message is one line plus,
    where there is one, the tail of its log)."""


def default_command() -> list[str]:
    """``THIS_PYTHON -m sglang.launch_server``; refused in one line when this Python has no SGLang."""
    if importlib.util.find_spec("sglang") is None:
        raise PolicyServerError(NOT_INSTALLED)
    return [sys.executable, "-m", "sglang.launch_server"]


def check_model(model: str) -> str:
    """The model as SGLang should get it: an existing folder (absolute) holding ``config.json``, or a Hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolicyServerError(
                f"--model {model}: no config.json there; pass a Hugging Face model folder "
                "(convert slime's torch_dist checkpoint first, see README 'Evaluation')"
            )
        return str(path.resolve())
    if path.exists() or not _HUB_ID.match(model):
        raise PolicyServerError(f"--model {model}: no such model folder")
    return model


def free_port() -> int:
    """A free port on 127.0.0.1 that SGLang accepts: 0.5.15.post1 also derives ``port + 10000`` (its gRPC port)
    and refuses to start when that exceeds 65535."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 <= 65535:
            return port
    raise PolicyServerError("no free TCP port below 55536 on 127.0.0.1")


def server_argv(command: list[str], model: str, port: int, extra: list[str]) -> list[str]:
    """The launch command: the qwen25 tool parser (the rollout's tool calls), loopback only, the extra flags last
    (SGLang's argparse: a repeated flag's last value wins)."""
    return [
        *command,
        "--model-path", model,
        "--tool-call-parser", "qwen25",
        "--host", "127.0.0.1",
        "--port", str(port),
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM are ignored while the server is being stopped (a second Ctrl-C must not leave it running;
    the stop is bounded). Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class PolicyServer:
    """One SGLang server process group, from :meth:`start` until :meth:`stop` (also as a context manager)."""

    def __init__(self, argv: list[str], port: int, model: str, log_path: Path, timeout_s: float) -> None:
        self.argv = argv
        self.port = port
        self.model = model
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PolicyServer:
        try:
            self.start()
        except BaseException:  # a failed start or a Ctrl-C while loading: the server must not be left running
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Launch and wait until ``/health`` answers 200 and ``/model_info`` names our model (another process
        could hold the port); raises :class:`PolicyServerError` when it dies or the deadline passes."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            except OSError as exc:
                raise PolicyServerError(f"cannot run {self.argv[0]}: {exc}") from exc
        print(f"starting SGLang on {self.url} (log: {self.log_path}; up to {self.timeout_s:.0f} s)", flush=True)
        started = time.monotonic()
        deadline = started + self.timeout_s
        next_note = started + PROGRESS_EVERY_S
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self._process.poll() is not None:
                    raise PolicyServerError(
                        f"SGLang exited with status {self._process.returncode} while starting; "
                        f"the last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                if self._ready(client):
                    print(f"SGLang is up after {time.monotonic() - started:.0f} s", flush=True)
                    return
                now = time.monotonic()
                if now > deadline:
                    raise PolicyServerError(
                        f"SGLang not ready after {self.timeout_s:.0f} s (--server-timeout); "
                        f"the last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                if now >= next_note:
                    print(f"  waiting for SGLang ({now - started:.0f} s)...", flush=True)
                    next_note = now + PROGRESS_EVERY_S
                time.sleep(0.5)

    def _ready(self, client: httpx.Client) -> bool:
        try:
            if client.get(f"{self.url}/health").status_code != 200:
                return False
            info = client.get(f"{self.url}/model_info")
            if info.status_code == 404:
                info = client.get(f"{self.url}/get_model_info")
            if info.status_code != 200:
                return False
            served = info.json().get("model_path")
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        # A local folder must be ours (another process may have taken the port); a Hub id may be served under the
        # path it was downloaded to, so only its health is checked.
        if Path(self.model).is_absolute() and (
            not isinstance(served, str) or Path(served).resolve() != Path(self.model)
        ):
            raise PolicyServerError(f"the server on {self.url} serves {served!r}, not {self.model!r}")
        return True

    def stop(self) -> None:
        """Stop the whole group: SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL; stragglers of the group (the
        scheduler and detokenizer subprocesses) get SIGKILL too. Safe to call twice."""
        process = self._process
        if process is None:
            return
        with _signals_held():
            self._stop(process)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            print("stopping SGLang", file=sys.stderr, flush=True)
            started = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"SGLang still running after {STOP_TIMEOUT_S:.0f} s: SIGKILL", file=sys.stderr, flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
            print(f"SGLang stopped after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log (what it said before dying)."""
        try:
            text = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join("  " + line for line in text.splitlines()[-lines:])
