"""start_server.sh and setup_venv.sh, run for real (setup_venv.sh only in --dry-run).

start_server.sh runs a tiny fake server written here (RETRIEVER_PYTHON) that answers /health with its pid
and argv, so we can check flag pass-through, the log file and that the script's PID is the server's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from tests.support.offline_assets import PROJECT_ROOT

START = PROJECT_ROOT / "local_dense_retriever" / "start_server.sh"
SETUP = PROJECT_ROOT / "local_dense_retriever" / "setup_venv.sh"

FAKE_SERVER = """#!{python}
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--host") + 1]
print(f"fake server pid {{os.getpid()}} port {{port}}", flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"pid": os.getpid(), "argv": args}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        sys.stderr.write("request " + self.path + "\\n")


HTTPServer((host, port), Handler).serve_forever()
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "fake_server_python"
    path.write_text(FAKE_SERVER.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "e5_Flat.index").write_bytes(b"index")
    (data / "wiki-18.jsonl").write_text('{"id": "0", "contents": "\\"T\\"\\ntext"}\n')
    return data


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PORT", "LOG_FILE", "FAISS_GPU", "FP16", "SAVE_PATH"}}
    env.update(extra)
    return env


class Started:
    """A start_server.sh process under test; always stopped by the test."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        # Own process group, so teardown can stop everything it started even if the script misbehaves.
        self.proc = subprocess.Popen(
            ["bash", str(START), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def health(self, port: int, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stop()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).json()
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"no answer on port {port} within {timeout_s}s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return out


@pytest.fixture
def start() -> Iterator:
    started: list[Started] = []

    def _start(args: list[str], env: dict[str, str]) -> Started:
        started.append(Started(args, env))
        return started[-1]

    yield _start
    for s in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(s.proc.pid, signal.SIGKILL)
        s.proc.communicate(timeout=20)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_flags_port_and_log_pass_through_and_pid_is_the_server(
    start, fake_python: Path, data_dir: Path, tmp_path: Path, port: int
) -> None:
    log = tmp_path / "logs" / "retriever.log"
    env = script_env(SAVE_PATH=str(data_dir), RETRIEVER_PYTHON=str(fake_python))
    server = start(["--port", str(port), "--log", str(log), "--", "--max_batch_size", "7"], env)

    health = server.health(port)

    assert health["pid"] == server.proc.pid, "exec: the script's PID must be the server's"
    argv = health["argv"]
    assert argv[0] == str(START.parent / "retrieval_server.py")
    assert flag(argv, "--port") == str(port)
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--index_path") == str(data_dir / "e5_Flat.index")
    assert flag(argv, "--corpus_path") == str(data_dir / "wiki-18.jsonl")
    assert flag(argv, "--topk") == "3"
    assert flag(argv, "--retriever_name") == "e5"
    assert flag(argv, "--retriever_model") == "intfloat/e5-base-v2"
    assert flag(argv, "--max_batch_size") == "7"
    assert "--faiss_gpu" not in argv and "--fp16" not in argv

    out = server.stop()
    assert server.proc.returncode == -signal.SIGTERM
    logged = log.read_text()
    for text in ("[start_server]", f"fake server pid {server.proc.pid} port {port}", "request /health"):
        assert text in logged, "the log file gets stdout and stderr"
        assert text in out, "the terminal sees the same output"


def test_environment_variables_configure_the_server(
    start, fake_python: Path, data_dir: Path, tmp_path: Path, port: int
) -> None:
    (data_dir / "e5-base-v2").mkdir()  # downloaded encoder: used instead of the Hub name
    (data_dir / "e5-base-v2" / "config.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("{}\n")
    log = tmp_path / "env.log"
    env = script_env(
        SAVE_PATH=str(data_dir),
        RETRIEVER_PYTHON=str(fake_python),
        PORT=str(port),
        LOG_FILE=str(log),
        CORPUS_PATH=str(elsewhere),
        TOPK="5",
        FAISS_GPU="1",
        FP16="1",
    )
    server = start([], env)

    argv = server.health(port)["argv"]

    assert flag(argv, "--corpus_path") == str(elsewhere)
    assert flag(argv, "--topk") == "5"
    assert flag(argv, "--retriever_model") == str(data_dir / "e5-base-v2")
    assert "--faiss_gpu" in argv and "--fp16" in argv
    server.stop()
    assert f"port {port}" in log.read_text()


def test_positional_form_of_the_slime_example(start, fake_python: Path, data_dir: Path, tmp_path: Path, port: int):
    log = tmp_path / "positional.log"
    index, corpus = data_dir / "e5_Flat.index", data_dir / "wiki-18.jsonl"
    args = [str(index), str(corpus), "4", "bge", "some/model", str(log), str(port)]
    server = start(args, script_env(RETRIEVER_PYTHON=str(fake_python)))

    argv = server.health(port)["argv"]

    assert [flag(argv, f) for f in ("--topk", "--retriever_name", "--retriever_model")] == ["4", "bge", "some/model"]
    server.stop()
    assert log.exists()


def test_works_without_home(start, fake_python: Path, data_dir: Path, port: int) -> None:
    """systemd units and `env -i` have no HOME: the default SAVE_PATH comes from the passwd home, like download.py's."""
    bare = {"PATH": os.environ["PATH"], "RETRIEVER_PYTHON": str(fake_python)}
    server = start(["--port", str(port)], {**bare, "INDEX_PATH": str(data_dir / "e5_Flat.index"),
                                           "CORPUS_PATH": str(data_dir / "wiki-18.jsonl")})  # fmt: skip
    assert flag(server.health(port)["argv"], "--index_path") == str(data_dir / "e5_Flat.index")
    out = server.stop()
    assert "unbound variable" not in out

    checked = subprocess.run(["bash", str(START), "--check", "--port", str(port)], env=bare, capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert "unbound variable" not in checked.stderr
    default = Path(pwd.getpwuid(os.getuid()).pw_dir) / "search_r1_data"
    assert checked.returncode == 0 or f"download.py --save_path {default} " in checked.stderr, checked.stderr


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("e5_Flat.index", "index not found: INDEX_PATH="),
        ("wiki-18.jsonl", "corpus not found: CORPUS_PATH="),
    ],
)
def test_missing_data_is_a_clear_error(fake_python: Path, data_dir: Path, port: int, missing: str, message: str):
    (data_dir / missing).unlink()
    env = script_env(SAVE_PATH=str(data_dir), RETRIEVER_PYTHON=str(fake_python))
    proc = subprocess.run(
        ["bash", str(START), "--port", str(port)], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert f"download.py --save_path {data_dir}" in proc.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["--port", "70000"], {}, "port must be a number in 1..65535"),
        (["--port"], {}, "--port needs a value"),
        (["--bogus"], {}, "unknown argument: --bogus"),
        (["a", "b"], {}, "positional form"),
        ([], {"RETRIEVER_PYTHON": "/nonexistent/python"}, "setup_venv.sh"),
    ],
)
def test_bad_invocations_fail_with_a_message(data_dir: Path, args: list[str], extra_env: dict, message: str) -> None:
    # `false` as the server: should a bad invocation slip through, it exits without the expected message.
    env = script_env(**{"SAVE_PATH": str(data_dir), "RETRIEVER_PYTHON": shutil.which("false"), **extra_env})
    proc = subprocess.run(["bash", str(START), *args], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_start_server_help_documents_options_and_env() -> None:
    out = subprocess.run(["bash", str(START), "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for word in ("--port", "--host", "--log", "SAVE_PATH", "INDEX_PATH", "CORPUS_PATH", "RETRIEVER_MODEL", "TOPK",
                 "FAISS_GPU", "FP16", "RETRIEVER_PYTHON", "/health"):  # fmt: skip
        assert word in out


@pytest.mark.e2e
def test_real_server_through_start_server(start, toy_corpus_files, minilm_dir: Path, tmp_path: Path, port: int) -> None:
    """The script's flags are the ones retrieval_server.py accepts: it becomes healthy and answers."""
    corpus = toy_corpus_files[0]
    rows = len(corpus.read_text().splitlines())
    vectors = np.random.default_rng(0).standard_normal((rows, 384)).astype("float32")
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(384)
    index.add(vectors)
    index_path = tmp_path / "toy.index"
    faiss.write_index(index, str(index_path))
    local_corpus = tmp_path / "corpus.jsonl"  # the server writes its offsets sidecar next to the corpus
    local_corpus.write_bytes(corpus.read_bytes())
    env = script_env(
        INDEX_PATH=str(index_path),
        CORPUS_PATH=str(local_corpus),
        RETRIEVER_MODEL=str(minilm_dir),
        RETRIEVER_NAME="minilm",
        RETRIEVER_PYTHON=sys.executable,
    )
    server = start(["--port", str(port), "--log", str(tmp_path / "real.log"), "--", "--num_threads", "1"], env)

    health: dict | None = None
    deadline = time.monotonic() + 120
    while health is None and time.monotonic() < deadline:
        assert server.proc.poll() is None, server.stop()
        with contextlib.suppress(httpx.TransportError):
            reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
            health = reply.json() if reply.status_code == 200 else None
        time.sleep(0.2)
    assert health is not None, "server not healthy within 120 s"
    assert health["index_size"] == rows
    answer = httpx.post(f"http://127.0.0.1:{port}/retrieve", json={"queries": ["painter"], "topk": 2}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["result"][0]) == 2
    server.stop()
    assert "Started server process" in (tmp_path / "real.log").read_text()


# ---- setup_venv.sh (dry run only: the suite never builds a real venv) ----

FAKE_SYSTEM_PYTHON = """#!/bin/sh
# Stands in for a GPU image's python: answers setup_venv.sh's torch probes only.
case "$2" in
  *torch.version.cuda*) [ "$FAKE_CUDA" = 1 ] ;;
  *torch.__version__*) [ "$FAKE_CUDA" = 1 ] && echo 2.9.1+cu128 ;;
  *) exit 3 ;;
esac
"""


@pytest.fixture
def system_python(tmp_path: Path) -> Path:
    path = tmp_path / "python3"
    path.write_text(FAKE_SYSTEM_PYTHON)
    path.chmod(0o755)
    return path


def dry_run(*args: str, **env: str) -> list[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in {"RETRIEVER_DEVICE", "TORCH_INDEX_URL", "PYTHON"}}
    full_env.update(env)
    proc = subprocess.run(
        ["bash", str(SETUP), "--dry-run", *args], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def commands(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("+ ")]


def test_setup_cpu_installs_pinned_torch_first_then_requirements(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    lines = dry_run("--cpu", RETRIEVER_VENV=str(venv))

    cmds = commands(lines)
    assert len(cmds) == 3, lines
    assert cmds[0].endswith(f"-m venv {venv}") and "--system-site-packages" not in cmds[0]
    assert cmds[1].endswith(f"-r {PROJECT_ROOT}/scripts/torch-cpu.txt")
    assert cmds[2].endswith(f"-r {PROJECT_ROOT}/local_dense_retriever/requirements.txt")
    assert not venv.exists(), "a dry run creates nothing"


def test_setup_cpu_can_take_torch_from_a_cpu_index(tmp_path: Path) -> None:
    cmds = commands(dry_run("--cpu", RETRIEVER_VENV=str(tmp_path / "v"), TORCH_INDEX_URL="https://example.invalid/cpu"))
    assert "--index-url https://example.invalid/cpu -r" in cmds[1]


def test_setup_gpu_reuses_the_system_cuda_torch_and_installs_faiss_gpu(tmp_path: Path, system_python: Path) -> None:
    venv = tmp_path / "venv"
    lines = dry_run("--gpu", RETRIEVER_VENV=str(venv), PYTHON=str(system_python), FAKE_CUDA="1")

    cmds = commands(lines)
    assert len(cmds) == 2, lines
    assert cmds[0] == f"+ {system_python} -m venv --system-site-packages {venv}"
    assert "keeping the existing torch 2.9.1+cu128" in "\n".join(lines)
    assert "faiss-gpu-cu12==" in cmds[1]
    assert "faiss-cpu" not in cmds[1] and "torch" not in cmds[1]
    assert "fastapi==" in cmds[1] and "transformers==" in cmds[1]


def test_setup_gpu_without_system_cuda_torch_installs_torch_in_the_venv(tmp_path: Path, system_python: Path) -> None:
    venv = tmp_path / "venv"
    cmds = commands(dry_run("--gpu", RETRIEVER_VENV=str(venv), PYTHON=str(system_python), FAKE_CUDA="0"))
    assert cmds[0] == f"+ {system_python} -m venv {venv}"
    assert cmds[1].endswith("-r " + str(PROJECT_ROOT / "scripts" / "torch-cpu.txt"))
    assert "faiss-gpu-cu12==" in cmds[2]


def test_setup_detects_a_gpu_by_nvidia_smi(tmp_path: Path, system_python: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: H100'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    lines = dry_run(RETRIEVER_VENV=str(tmp_path / "v"), PYTHON=str(system_python), FAKE_CUDA="1", PATH=path)
    assert lines[0].endswith("device: gpu, venv: " + str(tmp_path / "v"))
    assert "faiss-gpu-cu12==" in commands(lines)[-1]


@pytest.mark.e2e
def test_setup_never_replaces_an_existing_torch() -> None:
    venv = Path(sys.prefix)  # the test venv already has torch
    assert (venv / "bin" / "python").exists()
    lines = dry_run("--cpu", RETRIEVER_VENV=str(venv))
    cmds = commands(lines)
    assert len(cmds) == 1 and "requirements.txt" in cmds[0], lines
    assert any("keeping the existing torch" in line for line in lines)


def test_setup_help_and_bad_device() -> None:
    out = subprocess.run(["bash", str(SETUP), "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for word in ("--dry-run", "--cpu", "--gpu", "RETRIEVER_VENV", "RETRIEVER_DEVICE", "FAISS_GPU_PACKAGE"):
        assert word in out
    env = {**os.environ, "RETRIEVER_DEVICE": "tpu"}
    proc = subprocess.run(["bash", str(SETUP), "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "RETRIEVER_DEVICE must be auto, cpu or gpu" in proc.stderr
