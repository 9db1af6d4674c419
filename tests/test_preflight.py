"""The preflight: every check passes on a sound setup, and each broken piece fails its own check with a fix."""

from __future__ import annotations

import shutil
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
