"""The tmux wrapper run for real: real tmux, the real retriever on the toy index, a fake training script."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import wrapper_fakes

pytestmark = pytest.mark.e2e  # the training wrapper in real tmux sessions

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "run_qwen2.5-3B-it-with-retrieval.sh"

FAKE_TRAINING = """#!/usr/bin/env bash
set -euo pipefail
echo "args: $*"
echo "url: $RETRIEVAL_SERVER_URL"
curl -sf -X POST "$RETRIEVAL_SERVER_URL/retrieve" -H 'content-type: application/json' \\
  -d '{"queries": ["QUESTION"], "topk": 3}' > "OUT"
sleep "${FAKE_TRAIN_SECONDS:-0}"
exit "${FAKE_TRAIN_EXIT:-0}"
"""


def session_exists(name: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", f"={name}"], capture_output=True).returncode == 0


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        return True
    except httpx.TransportError:
        return False


def training_inputs(folder: Path, checkpoint: str = "checkpoint") -> tuple[Path, Path]:
    """A checkpoint folder and a DATA_DIR holding train.parquet: what the wrapper checks exists before it starts
    anything (the fake preflight reads neither)."""
    (folder / checkpoint).mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "data" / "train.parquet").write_bytes(b"PAR1")
    return folder / checkpoint, folder / "data"


@pytest.fixture
def wrapper_env(tmp_path: Path, toy_index, toy_facts, minilm_dir: Path, port: int):
    index, corpus = toy_index
    session = f"test-search-r1-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "retrieved.json"
    train = tmp_path / "fake_train.sh"
    train.write_text(FAKE_TRAINING.replace("QUESTION", toy_facts[0].question).replace("OUT", str(out)))
    checkpoint, data = training_inputs(tmp_path)
    env = {
        **os.environ,
        "TMUX_SESSION": session,
        "LOG_DIR": str(tmp_path / "logs"),
        "RETRIEVAL_SERVER_URL": f"http://127.0.0.1:{port}",
        "RETRIEVER_PYTHON": sys.executable,
        "INDEX_PATH": str(index),
        "CORPUS_PATH": str(corpus),
        "RETRIEVER_MODEL": str(minilm_dir),
        "RETRIEVER_READY_TIMEOUT": "120",
        "TRAIN_SCRIPT": str(train),
        "PREFLIGHT_PYTHON": str(wrapper_fakes.preflight_python(tmp_path / "preflight_python", tmp_path / "preflight")),
        "HF_CKPT": str(checkpoint),
        "DATA_DIR": str(data),
    }
    yield env, out
    subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)


def test_wrapper_runs_training_against_a_healthy_retriever_then_cleans_up(wrapper_env, toy_facts, port: int) -> None:
    env, out = wrapper_env
    result = subprocess.run(
        ["bash", str(WRAPPER), "--", "--num-rollout", "2"],
        env={**env, "FAKE_TRAIN_EXIT": "3"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 3, result.stdout + result.stderr  # training's exit code is the wrapper's
    assert "retriever ready" in result.stdout
    documents = json.loads(out.read_text())["result"][0]
    assert toy_facts[0].passage_id in [doc["id"] for doc in documents]
    logs = Path(env["LOG_DIR"])
    training_log = next(logs.glob("training-*.log")).read_text()
    assert "args: --num-rollout 2" in training_log and f"url: http://127.0.0.1:{port}" in training_log
    assert next(logs.glob("retriever-*.log")).stat().st_size > 0
    assert not session_exists(env["TMUX_SESSION"])
    assert not port_open(port)


def test_wrapper_stops_everything_on_ctrl_c(wrapper_env, port: int) -> None:
    env, out = wrapper_env
    wrapper = subprocess.Popen(
        ["bash", str(WRAPPER)],
        env={**env, "FAKE_TRAIN_SECONDS": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not out.exists():
            assert wrapper.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        assert session_exists(env["TMUX_SESSION"]) and port_open(port)
        wrapper.send_signal(signal.SIGINT)
        output, _ = wrapper.communicate(timeout=60)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 130, output
    assert "stopping retriever" in output
    assert not session_exists(env["TMUX_SESSION"])
    assert not port_open(port)


def test_wrapper_reports_a_retriever_that_cannot_start(wrapper_env, tmp_path: Path) -> None:
    env, _ = wrapper_env
    broken = tmp_path / "broken.index"
    rows = len(Path(env["CORPUS_PATH"]).read_text().splitlines())
    # A FAISS flat header with the corpus's row count but no vectors: passes --check, fails when the server loads it.
    broken.write_bytes(b"IxFI" + struct.pack("<iqqq?i", 384, rows, 0, 0, True, 0))
    env = {**env, "INDEX_PATH": str(broken)}
    result = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "exited before it became ready" in result.stderr
    assert "could not be loaded" in result.stderr  # the retriever's own message is shown, not hidden in a log
    assert not session_exists(env["TMUX_SESSION"])


def test_wrapper_names_a_missing_index_before_starting_anything(wrapper_env, tmp_path: Path) -> None:
    env, _ = wrapper_env
    env = {**env, "INDEX_PATH": str(tmp_path / "missing.index")}
    result = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "index not found" in result.stderr and "download.py" in result.stderr  # what is wrong, what to do
    assert len(result.stderr.strip().splitlines()) == 1
    assert "starting the retriever" not in result.stdout
    assert not session_exists(env["TMUX_SESSION"])


def test_wrapper_refuses_to_reuse_an_existing_session(wrapper_env) -> None:
    env, _ = wrapper_env
    subprocess.run(["tmux", "new-session", "-d", "-s", env["TMUX_SESSION"]], check=True)
    result = subprocess.run(["bash", str(WRAPPER)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert session_exists(env["TMUX_SESSION"])  # somebody else's session is left alone


# ---------------------------------------------------------------------------------------------------------------
# The launch itself, with a fake retriever (tests/support/wrapper_fakes.py) and a fake training script that records its
# environment, each on a private tmux server so that no test touches the user's tmux.

RECORDING_TRAINING = """#!/usr/bin/env bash
echo $$ > RECORD/training.pid
env -0 > RECORD/training.env.tmp && mv RECORD/training.env.tmp RECORD/training.env
echo "fake training: args $*"
if [[ "${HOLD:-}" == 1 ]]; then
  for _ in $(seq 1 600); do [[ -e RECORD/release ]] && break; sleep 0.2; done
fi
exit "${FAKE_TRAIN_EXIT:-0}"
"""

# Not the caller's to pass on: what bash sets in every shell, and the terminal's (a pane is a tmux terminal).
NOT_PASSED = {"PWD", "OLDPWD", "SHLVL", "_", "TMUX", "TMUX_PANE", "TERM"}


def wait_for(predicate, what: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc is None or proc.poll() is None, f"the wrapper exited (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie has ended (a parent or init just has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PrivateTmux:
    """A tmux server of the test's own (TMUX_TMPDIR in a short folder: socket paths are limited to ~100 bytes)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wrt-", dir="/tmp"))
        self.socket = self.dir / f"tmux-{os.getuid()}" / "default"

    def env(self) -> dict[str, str]:
        """The test's environment aimed at this server (and at no tmux the tests run inside)."""
        env = {k: v for k, v in os.environ.items() if k not in {"TMUX", "TMUX_PANE"}}
        return {**env, "TMUX_TMPDIR": str(self.dir)}

    def __call__(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        result = subprocess.run(
            ["tmux", *args], env=env or self.env(), capture_output=True, text=True, timeout=30, check=False
        )
        assert not check or result.returncode == 0, f"tmux {args}: {result.stderr}"
        return result.stdout.strip()

    def start(self, server_env: dict[str, str]) -> None:
        """Start the server with ``server_env`` (what every later session inherits) and a session "base"."""
        self(
            "new-session", "-d", "-s", "base", "-x", "80", "-y", "24", env={**server_env, "TMUX_TMPDIR": str(self.dir)}
        )

    def has_session(self, name: str) -> bool:
        return (
            subprocess.run(["tmux", "has-session", "-t", f"={name}"], env=self.env(), capture_output=True).returncode
            == 0
        )

    def running(self) -> bool:
        return subprocess.run(["tmux", "ls"], env=self.env(), capture_output=True).returncode == 0

    def inside(self) -> dict[str, str]:
        """TMUX and TMUX_PANE as a shell in the base session's pane has them."""
        pid = self("display-message", "-p", "-t", "=base:", "#{pid}")
        return {
            "TMUX": f"{self.socket},{pid},0",
            "TMUX_PANE": self("display-message", "-p", "-t", "=base:", "#{pane_id}"),
        }

    def stop(self) -> None:
        self("kill-server", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def tmux():
    server = PrivateTmux()
    yield server
    server.stop()


@dataclass
class Launch:
    env: dict[str, str]
    record: Path
    session: str

    @property
    def logs(self) -> Path:
        return Path(self.env["LOG_DIR"])

    def popen(self, *args: str, **extra: str) -> subprocess.Popen:
        out = (self.record / "wrapper.out").open("w")
        return subprocess.Popen(
            ["bash", str(WRAPPER), *args], env={**self.env, **extra}, stdout=out, stderr=subprocess.STDOUT, text=True
        )

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(WRAPPER), *args], env={**self.env, **extra}, capture_output=True, text=True, timeout=120
        )

    def output(self) -> str:
        return (self.record / "wrapper.out").read_text()

    def finish(self, proc: subprocess.Popen, timeout_s: float = 90) -> int:
        try:
            return proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def retriever(self) -> dict | None:
        path = self.record / "retriever.json"
        return json.loads(path.read_text()) if path.exists() else None

    def training_env(self) -> dict[str, str] | None:
        path = self.record / "training.env"
        if not path.exists():
            return None
        return dict(item.split("=", 1) for item in path.read_text().split("\0") if item)

    def release(self) -> None:
        (self.record / "release").touch()

    def preflight(self) -> dict | None:
        path = self.record / "preflight.json"
        return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture
def launch(tmp_path: Path, tmux: PrivateTmux, port: int):
    """The wrapper set up with the fake retriever on ``port`` and the recording training script."""
    record = tmp_path / "record"
    record.mkdir()
    (tmp_path / "data.index").write_bytes(b"index")
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    train = tmp_path / "fake_train.sh"
    train.write_text(RECORDING_TRAINING.replace("RECORD", str(record)))
    session = f"test-search-r1-{uuid.uuid4().hex[:8]}"
    checkpoint, data = training_inputs(tmp_path)
    env = {
        **tmux.env(),
        "TMUX_SESSION": session,
        "LOG_DIR": str(tmp_path / "logs"),
        "RETRIEVAL_SERVER_URL": f"http://127.0.0.1:{port}",
        "RETRIEVER_PYTHON": str(wrapper_fakes.retriever_python(tmp_path / "fake_python", record)),
        "INDEX_PATH": str(tmp_path / "data.index"),
        "CORPUS_PATH": str(tmp_path / "corpus.jsonl"),
        "RETRIEVER_READY_TIMEOUT": "60",
        "TRAIN_SCRIPT": str(train),
        "PREFLIGHT_PYTHON": str(wrapper_fakes.preflight_python(tmp_path / "preflight_python", record)),
        "HF_CKPT": str(checkpoint),
        "DATA_DIR": str(data),
    }
    for name in ("SLIME_DIR", "REF_LOAD", "SEARCH_R1_CONFIG", "SKIP_PREFLIGHT"):
        env.pop(name, None)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "HOST"):
        env.pop(name, None)
    yield Launch(env, record, session)
    (record / "release").touch()


# Set in the retriever's window by its runner (TOPK) or start_server.sh (PYTHONUNBUFFERED), not the caller's.
SET_FOR_THE_RETRIEVER = {"TOPK", "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("where", ["inside a running tmux server", "no tmux server running yet"])
def test_training_gets_the_callers_environment_and_the_retriever_only_its_own(
    launch: Launch, tmux: PrivateTmux, where: str, tmp_path: Path
) -> None:
    secret = f"wandb-secret-{uuid.uuid4().hex}"
    (tmp_path / "with space").mkdir()
    caller = {
        **launch.env,
        "HOLD": "1",
        "TERM": "xterm-256color",
        "FAKE_TRAIN_EXIT": "5",
        "WANDB_API_KEY": secret,
        "HF_CKPT": str(tmp_path / "with space"),
        "CUDA_VISIBLE_DEVICES": "1,3",
        "SEARCH_R1_MAX_TURNS": "7",
        "SEARCH_R1_SYSTEM_PROMPT": "two\nlines, 'single' \"double\" $HOME `tick` \\ %q",
        "NOT-AN-IDENTIFIER": "skipped",
    }
    if where == "inside a running tmux server":
        # The server was started from an environment without the caller's variables (and with stale values):
        # tmux gives new windows the server's environment, not the caller's.
        lean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "CUDA_VISIBLE_DEVICES": "0",
                "SEARCH_R1_MAX_TURNS": "2", "ONLY_IN_TMUX_SERVER": "1"}  # fmt: skip
        tmux.start(lean)
        caller.update(tmux.inside())
    wrapper = subprocess.Popen(
        ["bash", str(WRAPPER)], env=caller, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper)
        expected = {k: v for k, v in caller.items() if k.isidentifier() and k not in NOT_PASSED}
        terminal = tmux("show-options", "-gv", "default-terminal")
        retriever_env = launch.retriever()["env"]
        training_env = launch.training_env()
        # The retriever's window: only what the retriever reads, with the caller's values; no key, no training
        # settings.
        for name in ("PATH", "CUDA_VISIBLE_DEVICES", "INDEX_PATH", "CORPUS_PATH", "RETRIEVER_PYTHON"):
            assert retriever_env.get(name) == expected[name], f"retriever window: {name} differs from the caller's"
        for name in ("WANDB_API_KEY", "HF_CKPT", "SEARCH_R1_MAX_TURNS", "SEARCH_R1_SYSTEM_PROMPT", "FAKE_TRAIN_EXIT"):
            assert name not in retriever_env, f"retriever window got {name}"
        assert secret not in json.dumps(retriever_env)
        foreign = sorted(
            k for k, v in retriever_env.items() if k not in NOT_PASSED | SET_FOR_THE_RETRIEVER and expected.get(k) != v
        )
        assert not foreign, f"retriever window: {foreign} are not the caller's"
        for window, seen in (("retriever", retriever_env), ("training", training_env)):
            if window == "training":
                differ = sorted(k for k in expected if seen.get(k) != expected[k])
                assert not differ, f"{window} window: {differ} differ from the caller's"
            assert "ONLY_IN_TMUX_SERVER" not in seen and "NOT-AN-IDENTIFIER" not in seen
            assert seen["TERM"] == terminal

        # The key is on no command line and in no tmux environment; the file that carries it is private.
        shown = tmux("show-environment", "-g") + tmux("show-environment", "-t", f"={launch.session}")
        assert secret not in shown
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                assert secret.encode() not in cmdline.read_bytes(), f"the key is on the command line of {cmdline}"
        pane_pid = tmux("display-message", "-p", "-t", f"={launch.session}:1", "#{pane_pid}")
        runner = Path(Path(f"/proc/{pane_pid}/cmdline").read_bytes().split(b"\0")[-2].decode())
        assert runner.parent.stat().st_mode & 0o777 == 0o700
        # Each window deleted its environment file once it had read it: gone while the run still goes.
        assert not list(runner.parent.glob("*environment*")), sorted(f.name for f in runner.parent.iterdir())
        assert wrapper.poll() is None
        for left in runner.parent.iterdir():
            assert secret not in left.read_text(errors="replace"), f"the key is in {left}"
    finally:
        launch.release()
        output, _ = wrapper.communicate(timeout=90)
    assert wrapper.returncode == 5, output  # training's exit code
    assert not runner.parent.exists()
    assert not tmux.has_session(launch.session)
    if where == "inside a running tmux server":
        assert tmux.has_session("base")  # the caller's own session is left alone


def test_a_remote_url_is_health_checked_and_no_retriever_is_started(launch: Launch, tmux: PrivateTmux) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy, wrapper_fakes.forward_proxy() as (proxy, seen):
        # Another host (reached through a proxy: the name does not resolve here), on a port that is busy locally.
        url = f"http://retriever.remote.invalid:{busy.getsockname()[1]}"
        proxies = {"http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": ""}
        result = launch.run(RETRIEVAL_SERVER_URL=url, **proxies)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not on this machine" in result.stdout
    assert f"GET {url}/health" in seen
    assert launch.retriever() is None  # nothing was started for it
    assert launch.training_env()["RETRIEVAL_SERVER_URL"] == url
    assert not tmux.running()  # the session the wrapper made (the only one) is gone


def test_this_machines_hostname_counts_as_local(launch: Launch, port: int) -> None:
    url = f"http://{socket.gethostname()}:{port}"
    result = launch.run(RETRIEVAL_SERVER_URL=url)
    assert result.returncode == 0, result.stdout + result.stderr
    started = launch.retriever()
    assert started is not None and started["argv"][started["argv"].index("--port") + 1] == str(port)
    assert launch.training_env()["RETRIEVAL_SERVER_URL"] == url


def test_every_replica_must_be_healthy_before_training(launch: Launch, tmux: PrivateTmux, port: int) -> None:
    remote = "http://retriever.remote.invalid:8000"
    with wrapper_fakes.forward_proxy(health_status=503) as (proxy, seen):
        result = launch.run(
            RETRIEVAL_SERVER_URL=f"http://127.0.0.1:{port},{remote}",
            RETRIEVER_READY_TIMEOUT="3",
            http_proxy=proxy,
            HTTP_PROXY=proxy,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no answer to GET /health after 3s from: {remote}" in result.stderr
    assert f"GET {remote}/health" in seen
    assert not any("127.0.0.1" in request for request in seen)  # the local replica is asked directly
    started = launch.retriever()
    assert started is not None and "--port" in started["argv"] and str(port) in started["argv"]
    assert not alive(started["pid"])  # the local replica it started is stopped again
    assert launch.training_env() is None  # training never started
    assert not tmux.running()


def test_a_killed_training_window_stops_everything(launch: Launch, tmux: PrivateTmux, port: int) -> None:
    wrapper = launch.popen(HOLD="1")
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper)
        pane_pid = int(tmux("display-message", "-p", "-t", f"={launch.session}:1", "#{pane_pid}"))
        os.kill(pane_pid, signal.SIGTERM)
        rc = launch.finish(wrapper, timeout_s=90)  # the old wrapper waited here forever
    finally:
        launch.release()
    output = launch.output()
    assert rc != 0, output
    training_log = next(launch.logs.glob("training-*.log"))
    assert (
        f"training ended without reporting an exit code (its window was killed or closed); see its log: {training_log}"
        in output
    )
    assert not alive(launch.retriever()["pid"]) and not port_open(port)
    assert not alive(int((launch.record / "training.pid").read_text()))  # the training script itself too
    assert not tmux.running()


def test_a_port_taken_by_a_non_http_listener_is_refused_before_any_session(launch: Launch, tmux: PrivateTmux) -> None:
    tmux.start(launch.env)  # a server that has the launch settings: only what is under test differs
    created = launch.record / "session-created"
    tmux("set-hook", "-g", "session-created", f"run-shell 'touch {created}'")
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts connections, never speaks HTTP
        port = listener.getsockname()[1]
        result = launch.run(RETRIEVAL_SERVER_URL=f"http://127.0.0.1:{port}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and "choose another port" in result.stderr
    assert not created.exists() and launch.retriever() is None
    assert tmux("list-sessions", "-F", "#{session_name}") == "base"


def test_a_retriever_that_fails_at_once_gets_no_unwritten_log_paths(launch: Launch, tmp_path: Path) -> None:
    failing = wrapper_fakes.retriever_python(tmp_path / "failing_python", launch.record, fail=True)
    result = launch.run(RETRIEVER_PYTHON=str(failing))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "exited before it became ready" in output and "cannot load the index (scripted failure)" in output
    named = re.findall(re.escape(str(launch.logs)) + r"/\S+\.log", output)
    assert named, output  # the retriever's log was written: it is named
    missing = [path for path in named if not Path(path).exists()]
    assert not missing, f"log paths printed that were never written: {missing}\n{output}"


def test_the_preflight_runs_once_the_retriever_is_healthy_and_before_training(
    launch: Launch, port: int, tmp_path: Path
) -> None:
    checkpoint, data = training_inputs(tmp_path / "run1", checkpoint="qwen 3B")
    relative = os.path.relpath(data, ROOT)
    result = launch.run(DATA_DIR=relative, HF_CKPT=str(checkpoint))
    assert result.returncode == 0, result.stdout + result.stderr
    seen = launch.preflight()
    assert seen is not None, result.stdout
    assert seen["retriever_healthy"] and not seen["training_started"]
    url = f"http://127.0.0.1:{port}"
    assert seen["argv"] == [
        "-m",
        "search_r1_oai.preflight",
        "--data",
        f"{ROOT}/{relative}/train.parquet",  # relative, as the training script (run from ROOT) reads it
        "--tokenizer",
        str(checkpoint),
        "--retrieval-url",
        url,
    ]  # no --policy-url: slime starts the policy inside training
    assert seen["cwd"] == str(ROOT) and seen["pythonpath"].split(":")[0] == str(ROOT)
    assert "ok    retriever: 3 passages" in result.stdout and "preflight passed" in result.stdout
    assert result.stdout.index("retriever ready") < result.stdout.index("preflight passed")
    assert result.stdout.index("preflight passed") < result.stdout.index("training started")
    assert launch.training_env() is not None
    assert "preflight passed" in next(launch.logs.glob("preflight-*.log")).read_text()


def test_a_failing_preflight_stops_the_run_before_training(
    launch: Launch, tmux: PrivateTmux, tmp_path: Path, port: int
) -> None:
    failing = wrapper_fakes.preflight_python(tmp_path / "failing_preflight", launch.record, fail=True)
    result = launch.run(PREFLIGHT_PYTHON=str(failing))
    assert result.returncode == 1, result.stdout + result.stderr
    report = "FAIL  retriever: " + f"http://127.0.0.1:{port}: no passage (scripted failure)"
    assert report in result.stderr and "-> check the index and corpus it serves" in result.stderr
    log = next(launch.logs.glob("preflight-*.log"))
    assert f"preflight failed (exit code 1; its report is above and in {log})" in result.stderr
    assert "SKIP_PREFLIGHT=1" in result.stderr
    assert launch.preflight()["retriever_healthy"]
    assert launch.training_env() is None  # training never started
    assert not alive(launch.retriever()["pid"]) and not port_open(port)  # the retriever it started is stopped
    assert not tmux.running()  # the session it made is gone
    assert "stopping retriever" in result.stdout and "cleaned up" in result.stdout


def test_skip_preflight_starts_training_without_it(launch: Launch) -> None:
    result = launch.run(SKIP_PREFLIGHT="1", PREFLIGHT_PYTHON="/nonexistent/python")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preflight skipped (SKIP_PREFLIGHT=1)" in result.stdout
    assert launch.preflight() is None and launch.training_env() is not None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKIP_PREFLIGHT": "yes"}, "SKIP_PREFLIGHT must be 0 or 1 (got 'yes')"),
        ({"PREFLIGHT_PYTHON": "/nonexistent/python"}, "PREFLIGHT_PYTHON=/nonexistent/python not found"),
    ],
    ids=["bad-skip-value", "missing-python"],
)
def test_preflight_settings_are_checked_before_anything_starts(
    launch: Launch, tmux: PrivateTmux, env: dict[str, str], message: str
) -> None:
    result = launch.run(**env)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and launch.retriever() is None and not tmux.running()


def tmux_sessions_made(tmux: PrivateTmux, launch: Launch) -> Path:
    """Start the test's tmux server with a hook that leaves a file behind once any session is created."""
    tmux.start(launch.env)  # a server that has the launch settings: only what is under test differs
    created = launch.record / "session-created"
    tmux("set-hook", "-g", "session-created", f"run-shell 'touch {created}'")
    return created


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("HF_CKPT", "HF checkpoint not found at HF_CKPT=/nonexistent/Qwen2.5-3B-Instruct: set HF_CKPT to the folder"),
        ("DATA_DIR", "/nonexistent/data/train.parquet missing: run python data_preprocess.py --local_dir"),
        ("PREFLIGHT_PYTHON", "cannot import pyarrow, which the preflight needs; set PREFLIGHT_PYTHON to"),
    ],
)
def test_what_training_needs_is_checked_before_any_tmux_session_or_retriever(
    launch: Launch, tmux: PrivateTmux, tmp_path: Path, what: str, message: str
) -> None:
    created = tmux_sessions_made(tmux, launch)
    wrong = {
        "HF_CKPT": "/nonexistent/Qwen2.5-3B-Instruct",
        "DATA_DIR": "/nonexistent/data",
        "PREFLIGHT_PYTHON": str(
            wrapper_fakes.preflight_python(tmp_path / "no_pyarrow", launch.record, lacking=("pyarrow",))
        ),
    }
    result = launch.run(**{what: wrong[what]})
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr  # one line: what to do
    assert "Repo id" not in result.stderr and "Traceback" not in result.stderr
    assert not created.exists() and launch.retriever() is None and launch.preflight() is None
    assert tmux("list-sessions", "-F", "#{session_name}") == "base"


def test_the_training_scripts_paths_are_checked_together_before_anything_starts(
    launch: Launch, tmux: PrivateTmux
) -> None:
    created = tmux_sessions_made(tmux, launch)
    missing = {"SLIME_DIR": "/nonexistent/slime", "HF_CKPT": "/nonexistent/ckpt", "REF_LOAD": "/nonexistent/ref"}
    result = launch.run(TRAIN_SCRIPT=str(ROOT / "run_qwen2.5-3B-it.sh"), **missing)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr  # every mistake at once, one line each
    for line, (name, value) in zip(lines, missing.items(), strict=True):
        assert f"{name}={value}" in line and line.startswith("[with-retrieval] error: "), line
    assert not created.exists() and launch.retriever() is None


def test_detaching_from_attach_prints_how_to_reattach(launch: Launch, tmux: PrivateTmux) -> None:
    wrapper = PtyProcess(["bash", str(WRAPPER), "--attach"], {**launch.env, "HOLD": "1", "TERM": "xterm"})
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper.proc)
        wait_for(lambda: tmux("list-clients", "-F", "#{session_name}") == launch.session, "the terminal to attach")
        tmux("detach-client", "-s", f"={launch.session}")
        reattach = f"reattach with: tmux attach -t {launch.session}"
        wait_for(lambda: reattach in b"".join(wrapper.chunks).decode(errors="replace"), "the hint", proc=wrapper.proc)
        assert tmux.has_session(launch.session)  # detaching left the run going
    finally:
        launch.release()
        rc = launch.finish(wrapper.proc)
        wrapper.stop()
    assert rc == 0, wrapper.output()
    assert not tmux.running()


def test_attach_inside_tmux_switches_the_client_instead_of_nesting(launch: Launch, tmux: PrivateTmux) -> None:
    tmux.start(launch.env)  # a server that has the launch settings: only what is under test differs
    client = PtyProcess(["tmux", "attach", "-t", "=base"], {**tmux.env(), "TERM": "xterm"})
    try:
        wait_for(lambda: tmux("list-clients", "-F", "#{session_name}") == "base", "the client to attach")
        wrapper = PtyProcess(["bash", str(WRAPPER), "--attach"], {**launch.env, **tmux.inside(), "HOLD": "1"})
        try:
            wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper.proc)
            wait_for(lambda: tmux("list-clients", "-F", "#{session_name}") == launch.session, "the client to switch")
        finally:
            launch.release()
            rc = launch.finish(wrapper.proc)
        output = wrapper.output()
        assert rc == 0, output
        assert "nested" not in output and "switched this tmux client" in output
        # Its session gone, the client is back where it was rather than thrown out of tmux.
        assert tmux("list-clients", "-F", "#{session_name}") == "base"
    finally:
        client.stop()


class PtyProcess:
    """A process on its own pseudo-terminal (a terminal user's view), its output collected in the background."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def output(self) -> str:
        self.reader.join(timeout=10)
        return b"".join(self.chunks).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


# ---------------------------------------------------------------------------------------------------------------
# The worst case: the wrapper killed with SIGKILL. Its record (LOG_DIR/.with-retrieval-<session>.run, one
# `key=value` per line) names what it started; the next start reports it, --cleanup stops exactly that.


def record_path(launch: Launch) -> Path:
    return launch.logs / f".with-retrieval-{launch.session}.run"


def read_record(launch: Launch) -> dict[str, str]:
    return dict(line.split("=", 1) for line in record_path(launch).read_text().splitlines())


def start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_a_sigkilled_run_is_reported_by_the_next_start_and_cleanup_stops_exactly_it(
    launch: Launch, tmux: PrivateTmux, port: int
) -> None:
    tmux.start(launch.env)  # somebody's own session "base" on the same tmux server: it must survive
    unrelated = subprocess.Popen(["sleep", "600"])
    secret = f"wandb-secret-{uuid.uuid4().hex}"
    wrapper = launch.popen(HOLD="1", WANDB_API_KEY=secret)
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper)
        retriever_pid = launch.retriever()["pid"]
        training_pid = int((launch.record / "training.pid").read_text())
        pane_pid = int(tmux("display-message", "-p", "-t", f"={launch.session}:1", "#{pane_pid}"))
        wait_for(lambda: read_record(launch).get("training", "").startswith(f"{pane_pid} "), "training recorded")
        wrapper.kill()  # SIGKILL: no trap runs
        wrapper.wait(timeout=30)

        # What it started still runs; its record names it, privately, without the key.
        assert tmux.has_session(launch.session) and alive(retriever_pid) and port_open(port)
        assert record_path(launch).stat().st_mode & 0o777 == 0o600
        record = read_record(launch)
        assert secret not in record_path(launch).read_text()
        run_dir = Path(record["run_dir"])
        assert run_dir.is_dir() and not list(run_dir.glob("*environment*"))  # read and deleted by the windows
        assert record["session"] == launch.session and record["port"] == str(port)
        assert record["retriever"] == f"{retriever_pid} {start_time(retriever_pid)}"

        again = launch.run()
        assert again.returncode == 1, again.stdout + again.stderr
        message = again.stderr.strip()
        assert len(message.splitlines()) == 1, message
        for named in (
            f"retriever pid {retriever_pid}",
            f"training pid {pane_pid}",
            f"tmux session '{launch.session}'",
            f"port {port} on 127.0.0.1 is held",
            "--cleanup",
        ):
            assert named in message, message
        assert f"its wrapper (pid {wrapper.pid})" not in message  # that one is gone
        assert launch.retriever()["pid"] == retriever_pid  # nothing new was started
        assert alive(retriever_pid) and tmux.has_session(launch.session)

        cleaned = launch.run("--cleanup")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert "stopping retriever" in cleaned.stdout and "stopping training" in cleaned.stdout
        assert not alive(retriever_pid) and not alive(pane_pid) and not alive(training_pid)
        assert not port_open(port)
        assert not tmux.has_session(launch.session)
        assert not run_dir.exists() and not record_path(launch).exists()
        assert tmux.has_session("base") and unrelated.poll() is None  # nothing else was touched

        assert launch.run("--cleanup").returncode == 0  # nothing left: says so
        launch.release()
        after = launch.run()  # and the next run starts
        assert after.returncode == 0, after.stdout + after.stderr
        assert "killed before it cleaned up" not in after.stdout + after.stderr
        assert not record_path(launch).exists()  # a run that ended cleans up its record
    finally:
        launch.release()
        if wrapper.poll() is None:
            wrapper.kill()
        unrelated.kill()
        unrelated.wait()
        subprocess.run(["bash", str(WRAPPER), "--cleanup"], env=launch.env, capture_output=True, timeout=240)


def test_cleanup_never_stops_a_reused_pid_nor_another_session_nor_another_folder(
    launch: Launch, tmux: PrivateTmux, tmp_path: Path
) -> None:
    tmux.start(launch.env)
    unrelated = subprocess.Popen(["sleep", "600"])
    precious = tmp_path / "precious"
    precious.mkdir()
    try:
        launch.logs.mkdir(parents=True, exist_ok=True)
        wrong_start = int(start_time(unrelated.pid)) + 1  # the PID was reused: another process now
        created = tmux("display-message", "-p", "-t", "=base:", "#{session_created}")
        record_path(launch).write_text(
            f"wrapper={unrelated.pid} {wrong_start}\nstarted=0\nsession=base\nsession_created={int(created) - 1}\n"
            f"run_dir={precious}\nhost=127.0.0.1\nport=1\nretriever={unrelated.pid} {wrong_start}\n"
            f"training={unrelated.pid} {wrong_start}\n"
        )
        result = launch.run("--cleanup")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "nothing still running" in result.stdout
        assert unrelated.poll() is None and tmux.has_session("base") and precious.is_dir()
        assert not record_path(launch).exists()

        # A stale record whose processes are all gone: the next start removes it and goes on.
        record_path(launch).write_text(f"retriever={unrelated.pid} {wrong_start}\nsession=base\nstarted=9999999999\n")
        started = launch.run()
        assert started.returncode == 0, started.stdout + started.stderr
        assert "nothing of it still runs" in started.stdout
        assert unrelated.poll() is None and tmux.has_session("base")
    finally:
        unrelated.kill()
        unrelated.wait()


@pytest.mark.parametrize("given", ["generated", "the caller's"])
def test_a_retriever_beyond_loopback_requires_a_key_both_windows_get_and_no_argv_shows(
    launch: Launch, port: int, given: str
) -> None:
    extra = {"HOST": "0.0.0.0", "HOLD": "1"}
    if given == "the caller's":
        extra["RETRIEVER_API_KEY"] = f"callers-key-{uuid.uuid4().hex}"
    wrapper = launch.popen(**extra)
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper)
        key = launch.retriever()["env"].get("RETRIEVER_API_KEY", "")
        if given == "generated":
            assert len(key) >= 40, "no generated key in the retriever's window"
        else:
            assert key == extra["RETRIEVER_API_KEY"]
        assert launch.training_env().get("RETRIEVER_API_KEY") == key
        assert "0.0.0.0" in launch.retriever()["argv"]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                assert key.encode() not in cmdline.read_bytes(), f"the key is on the command line of {cmdline}"
        run_dir = Path(read_record(launch)["run_dir"])
        for left in run_dir.iterdir():
            assert key not in left.read_text(errors="replace"), f"the key is in {left}"
        url = f"http://127.0.0.1:{port}/retrieve"
        assert httpx.post(url, json={"queries": ["q"]}, timeout=10).status_code == 401
        authorized = httpx.post(url, json={"queries": ["q"]}, headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert authorized.status_code == 200
    finally:
        launch.release()
        rc = launch.finish(wrapper)
    assert rc == 0, launch.output()
    assert key not in launch.output()


def test_a_second_start_names_a_run_still_going_and_cleanup_stops_it_through_its_wrapper(
    launch: Launch, tmux: PrivateTmux, port: int
) -> None:
    wrapper = launch.popen(HOLD="1")
    try:
        wait_for(lambda: launch.training_env() is not None, "training to start", proc=wrapper)
        retriever_pid = launch.retriever()["pid"]
        second = launch.run()
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"is still going (its wrapper is pid {wrapper.pid}" in second.stderr, second.stderr
        assert wrapper.poll() is None and alive(retriever_pid)

        cleaned = launch.run("--cleanup")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert f"stopping its wrapper (pid {wrapper.pid})" in cleaned.stdout
        assert launch.finish(wrapper, timeout_s=30) == 143  # its own exit trap stopped what it started
    finally:
        launch.release()
        if wrapper.poll() is None:
            wrapper.kill()
    assert "cleaned up" in launch.output()
    assert not alive(retriever_pid) and not port_open(port) and not tmux.running()
    assert not record_path(launch).exists()
