"""The preflight: every check passes on a sound setup, and each broken piece fails its own check with a fix."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search_r1_oai import preflight
from search_r1_oai.prompts import build_messages, tools_json
from tests.support.live_server import free_port
from tests.support.sglang_mock import MockSGLang, serve_mock_sglang


@pytest.fixture
def data(tmp_path: Path) -> Path:
    question = "Who founded Ilvermark?"
    row = {
        "prompt": build_messages(question),
        "tools": tools_json(),
        "reward_model": {"ground_truth": {"target": ["Oda Venn"]}, "style": "rule"},
        "data_source": "nq",
        "metadata": {"question": question, "split": "train", "index": 0, "data_source": "nq"},
    }
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = preflight.main(list(argv))
    return code, capsys.readouterr().out


def test_a_sound_setup_passes(data, retriever, qwen_tokenizer, qwen_tokenizer_dir, capsys) -> None:
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    mock.script("Who founded Ilvermark?", ["Oda", " Venn"])
    with serve_mock_sglang(mock) as policy_url:
        code, out = _run(
            capsys, "--data", str(data), "--tokenizer", str(qwen_tokenizer_dir), "--retrieval-url", retriever.url,
            "--policy-url", policy_url, "--max-response-len", "512",
        )  # fmt: skip
    assert code == 0, out
    for name in ("data", "template", "retriever", "policy", "settings"):
        assert f"ok    {name}:" in out
    assert "preflight passed" in out
    assert retriever.requests[-1]["queries"] == ["Who founded Ilvermark?"], "asks the data's own question"


def test_broken_data_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), bad)
    code, out = _run(capsys, "--data", str(bad))
    assert code == 1 and "FAIL  data:" in out and "data_preprocess.py" in out


def test_template_without_tools(qwen_tokenizer_dir: Path, tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain_tokenizer"
    shutil.copytree(qwen_tokenizer_dir, plain)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (plain / "chat_template.jinja").write_text(template)
    code, out = _run(capsys, "--tokenizer", str(plain))
    assert code == 1 and "FAIL  template: the chat template drops the tools list" in out


def test_dead_retriever(capsys) -> None:
    code, out = _run(capsys, "--retrieval-url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "FAIL  retriever:" in out and "start_server.sh" in out


def test_policy_without_token_ids(qwen_tokenizer, qwen_tokenizer_dir, capsys) -> None:
    old = MockSGLang(qwen_tokenizer, version="0.5.12")
    old.script(preflight.DEFAULT_QUESTION, ["Jane", " Austen"])
    with serve_mock_sglang(old) as policy_url:
        code, out = _run(capsys, "--tokenizer", str(qwen_tokenizer_dir), "--policy-url", policy_url)
    assert code == 1 and "FAIL  policy:" in out and "no token ids" in out and "0.5.13" in out


def test_budget_smaller_than_a_response(capsys, monkeypatch, qwen_tokenizer_dir) -> None:
    monkeypatch.setenv("SEARCH_R1_CONTEXT_BUDGET", "1024")
    code, out = _run(capsys, "--tokenizer", str(qwen_tokenizer_dir), "--max-response-len", "2048")
    assert code == 1 and "FAIL  settings: context budget 1024" in out and "SEARCH_R1_CONTEXT_BUDGET" in out


def test_bad_setting_is_reported(capsys, monkeypatch) -> None:
    monkeypatch.setenv("SEARCH_R1_TOPK", "zero")
    code, out = _run(capsys)
    assert code == 1 and "SEARCH_R1_TOPK" in out


def test_no_arguments_is_an_error_not_a_pass(capsys) -> None:
    code = preflight.main([])
    captured = capsys.readouterr()
    assert code == 2 and "preflight passed" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "nothing to check" in lines[0] and "--data" in lines[0] and "--policy-url" in lines[0]


def test_a_check_that_cannot_run_is_a_fail_line_naming_what_is_missing(tmp_path: Path) -> None:
    """A preflight Python without pyarrow or httpx (the wrapper's PREFLIGHT_PYTHON=python3): each check it cannot
    run is its own FAIL line naming the module and what to do, no traceback, and the summary has lines to point at."""
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"not parquet")
    script = (
        "import sys\n"
        "sys.modules['pyarrow'] = None\n"  # an import of it now raises ModuleNotFoundError, as without the package
        "sys.modules['httpx'] = None\n"
        "from search_r1_oai.preflight import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["--data", str(bad), "--retrieval-url", f"http://127.0.0.1:{free_port()}"]
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "Traceback" not in out + done.stderr
    assert "FAIL  data: cannot run:" in out and "no module 'pyarrow'" in out
    assert "FAIL  retriever: cannot run:" in out and "no module 'httpx'" in out
    assert "PREFLIGHT_PYTHON" in out and "pip install" in out, "what to do"
    assert out.rstrip().endswith("preflight FAILED: fix the lines marked FAIL before starting the run")


def test_a_tokenizer_that_does_not_load_is_named_by_the_policy_check(tmp_path: Path, capsys) -> None:
    code, out = _run(capsys, "--tokenizer", str(tmp_path / "nope"), "--policy-url", "http://127.0.0.1:9")
    assert code == 1 and "FAIL  template: cannot load" in out
    assert "FAIL  policy: needs the tokenizer, which did not load" in out


def test_the_worker_package_does_not_import_data_prep() -> None:
    """The preflight checks data with the core's own checker: nothing in search_r1_oai imports search_r1_data."""
    package = Path(__file__).resolve().parents[1] / "search_r1_oai"
    importing = re.compile(r"^\s*(from|import)\s+search_r1_data\b", re.MULTILINE)
    offenders = [p.name for p in package.glob("*.py") if importing.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
