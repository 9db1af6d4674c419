"""Start-up errors in seconds, as the last line: start_server.sh --check, the real server, download.py offline.

Every process here is real (the project's python running start_server.sh, retrieval_server.py, download.py);
"unreachable" is a port on 127.0.0.1 nobody listens on, and the Hugging Face cache is an empty folder per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from tests.support.offline_assets import PROJECT_ROOT

START = PROJECT_ROOT / "local_dense_retriever" / "start_server.sh"
DOWNLOAD_PY = PROJECT_ROOT / "local_dense_retriever" / "download.py"
DEADLINE_S = 30  # "within seconds": a generous bound that only proves no Hub retries (~50 s) happen
BOGUS_MODEL = "no-such-org/no-such-encoder"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_pair(folder: Path, index_rows: int, corpus_rows: int) -> tuple[Path, Path]:
    """A real flat FAISS index of ``index_rows`` vectors and a jsonl corpus of ``corpus_rows`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).standard_normal((index_rows, 8)).astype("float32"))
    index_path, corpus_path = folder / "e5_Flat.index", folder / "wiki-18.jsonl"
    faiss.write_index(index, str(index_path))
    corpus_path.write_text("".join(f'{{"id": "{i}", "contents": "\\"T{i}\\"\\ntext"}}\n' for i in range(corpus_rows)))
    return index_path, corpus_path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Hub: an empty cache of this test's own, offline unless the test says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in {"PORT", "LOG_FILE", "SAVE_PATH", "RETRIEVER_ARGS"}}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RETRIEVER_PYTHON=sys.executable,
        RETRIEVER_NAME="minilm",
    )
    env.update(extra)
    return env


def check(env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(START), "--check", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_check_passes_with_a_local_encoder_and_matching_rows(tmp_path: Path, minilm_dir: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=str(minilm_dir))
    done = check(env, port)
    assert done.returncode == 0, done.stderr
    assert "index and corpus both have 5 rows" in done.stdout
    assert f"encoder {minilm_dir} is a local folder" in done.stdout


def test_check_refuses_a_missing_encoder_offline(tmp_path: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=BOGUS_MODEL)
    done = check(env, port)
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert f"cannot load the encoder {BOGUS_MODEL}: not in the Hugging Face cache" in line
    assert "HF_HUB_OFFLINE=1" in line and "download.py" in line and "--retriever_model PATH" in line

    missing_dir = tmp_path / "no_encoder_here"
    done = check({**env, "RETRIEVER_MODEL": str(missing_dir)}, port)
    assert done.returncode == 1 and f"cannot load the encoder {missing_dir}: no such folder" in last_line(done.stderr)


def test_check_with_an_unreachable_hub_says_so_in_seconds(tmp_path: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(
        tmp_path,
        INDEX_PATH=str(index),
        CORPUS_PATH=str(corpus),
        RETRIEVER_MODEL=BOGUS_MODEL,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
    )
    started = time.monotonic()
    done = check(env, port)
    assert time.monotonic() - started < DEADLINE_S
    assert done.returncode == 1
    assert "not cached and the Hub at http://127.0.0.1:" in last_line(done.stderr)
    assert "is unreachable" in last_line(done.stderr)


def test_check_finds_a_hub_id_in_the_cache_offline(tmp_path: Path, minilm_dir: Path, port: int) -> None:
    """A Hub id whose snapshot is in the cache (laid out as huggingface_hub writes it) passes offline."""
    repo = tmp_path / "hf_home" / "hub" / "models--some-org--cached-encoder"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text((minilm_dir / "config.json").read_text())
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL="some-org/cached-encoder")
    done = check(env, port)
    assert done.returncode == 0, done.stderr
    assert "encoder some-org/cached-encoder is in the Hugging Face cache" in done.stdout


def test_check_refuses_an_index_and_corpus_of_different_sizes(tmp_path: Path, minilm_dir: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 3, 4)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=str(minilm_dir))
    done = check(env, port)
    assert done.returncode == 1
    assert "the index has 3 rows but the corpus has 4" in last_line(done.stderr)


def test_row_counts_read_headers_and_sidecars_not_the_data(tmp_path: Path) -> None:
    """Index rows come from the header; corpus rows from a fresh sidecar, else a count under the size limit."""
    from retriever.corpus import load_or_build_offsets
    from retriever.startup_check import check_rows, corpus_rows, index_rows

    index, corpus = write_pair(tmp_path, 7, 7)
    assert index_rows(index) == 7
    assert corpus_rows(corpus) == 7
    broken = tmp_path / "broken.index"
    broken.write_bytes(b"not a faiss index")
    ok, line = check_rows(broken, corpus)
    assert not ok and "is not a FAISS index" in line
    ok, line = check_rows(index, corpus, max_count_bytes=1)
    assert ok and "corpus rows not counted" in line  # too big to count, no sidecar yet
    load_or_build_offsets(corpus, show_progress=False)  # what the server writes on its first start
    assert corpus_rows(corpus, max_count_bytes=1) == 7
    with corpus.open("a") as handle:
        handle.write("\n")  # a trailing empty line is no record, as for the server
    assert corpus_rows(corpus) == 7


def run_server(env: dict[str, str], port: int) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(START), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=DEADLINE_S + 30,
    )
    return done, time.monotonic() - started


@pytest.mark.e2e
def test_server_without_its_encoder_exits_in_seconds_with_one_last_line(tmp_path: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=BOGUS_MODEL)
    done, took = run_server(env, port)
    assert took < DEADLINE_S, done.stdout
    assert done.returncode != 0
    line = last_line(done.stdout)
    assert line.startswith(f"error: cannot load the encoder {BOGUS_MODEL}:"), done.stdout
    assert "download.py" in line and "--retriever_model PATH" in line
    assert "Traceback" not in done.stdout


@pytest.mark.e2e
def test_server_on_a_busy_port_exits_in_seconds_naming_the_holder(tmp_path: Path, minilm_dir: Path, port: int) -> None:
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=str(minilm_dir))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done, took = run_server(env, port)
    assert took < DEADLINE_S, done.stdout
    assert done.returncode != 0
    assert last_line(done.stdout) == (
        f"error: port {port} on 127.0.0.1 is in use (by PID {os.getpid()}): pass --port or stop it"
    ), done.stdout


def without_module(tmp_path: Path, env: dict[str, str], module: str) -> dict[str, str]:
    """``env`` for a python in which ``module`` cannot be found, as in a venv built before it was required."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return {**env, "PYTHONPATH": str(hide)}


@pytest.mark.e2e
def test_a_retriever_python_without_a_required_package_is_one_line(tmp_path: Path, minilm_dir: Path, port: int) -> None:
    """A retriever venv built before fastapi-offline was required: --check and the server name the package and the
    fix in their last line, within seconds, before anything loads."""
    index, corpus = write_pair(tmp_path / "data", 5, 5)
    env = env_for(tmp_path, INDEX_PATH=str(index), CORPUS_PATH=str(corpus), RETRIEVER_MODEL=str(minilm_dir))
    env = without_module(tmp_path, env, "fastapi_offline")
    expected = (
        f"{sys.executable} lacks fastapi_offline: run bash local_dense_retriever/setup_venv.sh "
        "(or set RETRIEVER_PYTHON to the retriever's python)"
    )
    checked = check(env, port)
    assert checked.returncode == 1
    assert last_line(checked.stderr) == f"[start_server] error: {expected}", checked.stderr
    done, took = run_server(env, port)
    assert took < DEADLINE_S, done.stdout
    assert done.returncode == 1
    assert last_line(done.stdout) == f"error: {expected}", done.stdout
    assert "Traceback" not in done.stdout


def test_check_packages_names_every_missing_module() -> None:
    from retriever.startup_check import REQUIRED_MODULES, check_packages

    assert check_packages() == (True, f"{sys.executable} has the retriever's packages")
    assert "fastapi_offline" in REQUIRED_MODULES and "faiss" in REQUIRED_MODULES
    ok, line = check_packages(("fastapi", "no_such_module_a", "no_such_module_b"))
    assert not ok and line.startswith(f"{sys.executable} lacks no_such_module_a, no_such_module_b: ")


@pytest.mark.parametrize("offline", ["1", "0"])
def test_download_without_network_is_one_line(tmp_path: Path, offline: str) -> None:
    """HF_HUB_OFFLINE=1, or a Hub endpoint nobody answers on: one error line, exit 1, nothing written."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": offline,
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
    }
    save = tmp_path / "save"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(DOWNLOAD_PY), "--save_path", str(save)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 30,
    )
    assert time.monotonic() - started < DEADLINE_S
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert ("HF_HUB_OFFLINE=1" if offline == "1" else "is unreachable") in lines[0]
    assert "e5_Flat.index" in lines[0]
