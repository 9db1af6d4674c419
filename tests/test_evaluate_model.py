"""evaluate.py --model: it starts SGLang (its real serving code with the scripted engine, through the same flags as
``python -m sglang.launch_server``), evaluates against it and stops it, at the end and on Ctrl-C; and the one-line
errors before anything starts (no SGLang in this Python, a tokenizer or model folder that is not one)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import evaluate
from search_r1_eval.policy_server import NOT_INSTALLED
from tests.support.live_server import free_port
from tests.support.real_sglang import scripted_launch_command, sglang_venv, write_model_dir, write_script_file
from tests.support.rollout_helpers import IM_END, answer, call
from tests.support.sglang_mock import Reply
from tests.test_evaluate import _write_set

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.5.15.post1"  # the release the project supports (slime's image)
QUESTIONS = [("Who founded Ilvermark?", "Oda Venn"), ("Who painted the Sorrel gate?", "Ama Quist")]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment contains ``marker`` (the test's unique script file, which
    the server and every subprocess it spawns inherit in SCRIPTED_ENGINE_SCRIPT)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = (proc / "environ").read_bytes().decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in cmdline + environ and state != "Z":
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _launch(tmp_path: Path, qwen_tokenizer_dir: Path, qwen_tokenizer, retriever_url: str, scripts: dict):
    """evaluate.py --model as a user runs it (a subprocess), with the scripted engine's launcher as the command."""
    if not (sglang_venv(VERSION) / "bin" / "python").exists():
        pytest.fail(f"{sglang_venv(VERSION)} is missing: run bash scripts/setup_env.sh")
    model = write_model_dir(qwen_tokenizer_dir, tmp_path / "model")
    data = _write_set(tmp_path / "nq.parquet", "nq", list(scripts_questions(scripts)))
    script = write_script_file(tmp_path / "script.json", qwen_tokenizer, scripts)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    control_port = free_port()
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SCRIPTED_ENGINE_CONTROL_PORT=str(control_port),
        SCRIPTED_ENGINE_SCRIPT=str(script),
    )
    argv = [
        sys.executable, str(ROOT / "evaluate.py"), "--data", str(data), "--model", str(model),
        "--sglang-command", shlex.join(scripted_launch_command(VERSION)), "--sglang-args", "--max-running-requests 8",
        "--retrieval-url", retriever_url, "--out", str(out), "--no-progress", "--concurrency", "1",
        "--server-timeout", "240",
    ]  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, script, out, control_port


def scripts_questions(scripts: dict) -> list[tuple[str, str]]:
    return [(q, gold) for q, gold in QUESTIONS if q in scripts]


def _assert_stopped(marker: Path, stdout: str, control_port: int) -> None:
    port = int(re.search(r"starting SGLang on http://127\.0\.0\.1:(\d+)", stdout).group(1))
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the group was SIGKILLed; the kernel reaps it in a moment
    assert _processes_mentioning(str(marker)) == [], "no server process is left"
    assert _port_is_free(port) and _port_is_free(control_port), "the server's ports are free again"


@pytest.mark.e2e
def test_model_starts_sglang_evaluates_and_stops_it(qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path) -> None:
    (q1, g1), (q2, _) = QUESTIONS
    scripts = {q1: [call([q1]) + IM_END, answer(g1)], q2: [answer("Somebody Else")]}
    process, script, out, control_port = _launch(tmp_path, qwen_tokenizer_dir, qwen_tokenizer, retriever.url, scripts)
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "SGLang is up after" in stdout
    records = {r["question"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert records[q1]["em"] == 1.0 and records[q1]["searches"] == 1 and records[q2]["em"] == 0.0
    assert json.loads((out / "summary.json").read_text())["all"]["em"] == 0.5
    assert (out / "sglang.log").stat().st_size > 0, "the server's output is kept"
    _assert_stopped(script, stdout, control_port)


@pytest.mark.e2e  # a signal to the evaluate.py process while a sample is in flight
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_server_too(sig, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path) -> None:
    (q1, g1), (q2, g2) = QUESTIONS
    scripts = {q1: [answer(g1)], q2: [Reply(answer(g2), delay_s=120.0)]}
    process, script, out, control_port = _launch(tmp_path, qwen_tokenizer_dir, qwen_tokenizer, retriever.url, scripts)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while not results.exists() or not results.read_text():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first sample never finished"
        time.sleep(0.2)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=90)
    assert process.returncode == 130, stderr[-3000:]
    assert "run the same command to resume" in stderr and "stopping SGLang" in stderr
    _assert_stopped(script, stdout, control_port)


# ---- one-line errors before anything starts --------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _write_set(tmp_path / "nq.parquet", "nq", QUESTIONS[:1])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_model_without_sglang_in_this_python_is_one_line(data, qwen_tokenizer_dir, tmp_path, capsys) -> None:
    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("this Python has SGLang")
    model = write_model_dir(qwen_tokenizer_dir, tmp_path / "model")
    assert evaluate.main(["--data", str(data), "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    assert _one_error_line(capsys) == f"error: {NOT_INSTALLED}"
    assert not (tmp_path / "out").exists(), "nothing was started or written"


def test_bad_tokenizer_is_one_line_exit_2(data, tmp_path, capsys) -> None:
    argv = ["--data", str(data), "--policy-url", "http://127.0.0.1:9", "--tokenizer", "/nope"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert _one_error_line(capsys).startswith("error: --tokenizer /nope: cannot load a tokenizer")


def test_bad_tokenizer_through_the_command_line(data, tmp_path) -> None:
    argv = ["--data", str(data), "--policy-url", "http://127.0.0.1:9", "--tokenizer", "/nope", "--out", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [next(iter(done.stderr.strip().splitlines()))], done.stderr


def test_model_folder_without_config_is_one_line(data, qwen_tokenizer_dir, tmp_path, capsys) -> None:
    argv = ["--data", str(data), "--model", str(qwen_tokenizer_dir), "--out", str(tmp_path / "out")]
    assert evaluate.main(argv) == 2
    assert "no config.json there" in _one_error_line(capsys)


def test_model_and_policy_url_exclude_each_other(data) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(data), "--model", "m", "--policy-url", "http://127.0.0.1:9"])
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(data), "--policy-url", "http://x", "--tokenizer", "t", "--sglang-args", "--tp 2"])


def _stand_in(code: str) -> str:
    """A --sglang-command that runs ``code`` instead of SGLang (it gets SGLang's flags as its arguments)."""
    return shlex.join([sys.executable, "-c", code])


def test_a_server_that_dies_while_loading_is_reported_with_its_log(data, qwen_tokenizer_dir, tmp_path, capsys) -> None:
    model = write_model_dir(qwen_tokenizer_dir, tmp_path / "model")
    code = "import sys; print('loading', sys.argv[1:3]); print('CUDA out of memory', flush=True); sys.exit(3)"
    argv = ["--data", str(data), "--model", str(model), "--out", str(tmp_path / "out"), "--sglang-command"]
    assert evaluate.main([*argv, _stand_in(code)]) == 1
    err = capsys.readouterr().err
    assert "error: SGLang exited with status 3 while starting" in err and "CUDA out of memory" in err
    assert "--model-path" in (tmp_path / "out" / "sglang.log").read_text(), "its output is in OUT/sglang.log"


def test_a_server_that_never_gets_ready_is_stopped_at_the_deadline(data, qwen_tokenizer_dir, tmp_path, capsys) -> None:
    model = write_model_dir(qwen_tokenizer_dir, tmp_path / "model")
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    argv = ["--data", str(data), "--model", str(model), "--out", str(tmp_path / "out"), "--server-timeout", "2"]
    started = time.monotonic()
    assert evaluate.main([*argv, "--sglang-command", _stand_in(code)]) == 1
    assert time.monotonic() - started < 2 + 30, "the deadline holds (plus the bounded stop)"
    assert "error: SGLang not ready after 2 s (--server-timeout)" in capsys.readouterr().err
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
