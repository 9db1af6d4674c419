"""evaluate.py end to end: the test SGLang server with scripted answers (known EM), the fake retriever, resume,
the table recomputed from the JSON lines, the PNG, --compare; and the scripted plumbing-check policy against the
real retriever on the toy index."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import evaluate
from retriever.api import create_app
from retriever.settings import Settings as RetrieverSettings
from search_r1_eval.scripted_policy import answer_span, passages_in
from search_r1_eval.scripted_policy import create_app as scripted_policy_app
from search_r1_oai.prompts import build_messages, tools_json
from tests.support.live_server import serve_app
from tests.support.rollout_helpers import IM_END, answer, call
from tests.support.sglang_mock import MockSGLang, Reply, serve_mock_sglang

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = {
    "nq": [("Who founded Ilvermark?", "Oda Venn"), ("Who painted the Sorrel gate?", "Ama Quist")],
    "hotpotqa": [("Which river feeds Lake Orrin?", "Vessa")],
}


def _write_set(path: Path, source: str, rows: list[tuple[str, str]]) -> Path:
    table = [
        {
            "prompt": build_messages(q),
            "tools": tools_json(),
            "reward_model": {"ground_truth": {"target": [gold]}, "style": "rule"},
            "data_source": source,
            "metadata": {"question": q, "split": "test", "index": i, "data_source": source},
            "question": q,
        }
        for i, (q, gold) in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


@pytest.fixture
def sets(tmp_path: Path) -> list[Path]:
    return [_write_set(tmp_path / f"{source}.parquet", source, rows) for source, rows in QUESTIONS.items()]


@pytest.fixture
def policy(qwen_tokenizer):
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    (q1, g1), (q2, _) = QUESTIONS["nq"]
    [(q3, g3)] = QUESTIONS["hotpotqa"]
    mock.script(q1, [call([q1]) + IM_END, answer(g1)])  # right, after one search
    mock.script(q2, [answer("Somebody Else")])  # wrong, no search
    mock.script(q3, [call(["Lake Orrin"]) + IM_END, call(["Orrin river"]) + IM_END, answer(g3)])  # right, 2 searches
    with serve_mock_sglang(mock) as url:
        yield mock, url


def _argv(sets: list[Path], url: str, tokenizer_dir: Path, retriever_url: str, out: Path, *extra: str) -> list[str]:
    return [
        "--data", *map(str, sets), "--policy-url", url, "--tokenizer", str(tokenizer_dir),
        "--retrieval-url", retriever_url, "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_known_em_resume_table_and_plot(sets, policy, retriever, qwen_tokenizer_dir, tmp_path, capsys) -> None:
    mock, url = policy
    out = tmp_path / "run"
    argv = _argv(sets, url, qwen_tokenizer_dir, retriever.url, out)

    assert evaluate.main([*argv, "--max-samples", "1"]) == 0, "one sample per file first"
    assert sorted(r["id"] for r in _results(out)) == ["hotpotqa.parquet:0", "nq.parquet:0"]
    first = len(mock.requests_for(QUESTIONS["nq"][0][0]))

    assert evaluate.main(argv) == 0
    records = _results(out)
    assert len(records) == 3 and len({r["id"] for r in records}) == 3, "done samples were skipped, none repeated"
    assert len(mock.requests_for(QUESTIONS["nq"][0][0])) == first, "a finished sample was not rolled out again"
    by_question = {r["question"]: r for r in records}
    right = by_question["Who founded Ilvermark?"]
    assert right["em"] == 1.0 and right["answer"] == "Oda Venn" and right["searches"] == 1
    assert right["queries"] == ["Who founded Ilvermark?"] and right["status"] == "COMPLETED"
    assert [m["role"] for m in right["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert by_question["Who painted the Sorrel gate?"]["em"] == 0.0
    assert by_question["Which river feeds Lake Orrin?"]["searches"] == 2

    summary = json.loads((out / "summary.json").read_text())
    for source in ("nq", "hotpotqa"):
        mine = [r for r in records if r["data_source"] == source]
        assert summary[source]["n"] == len(mine)
        assert summary[source]["em"] == pytest.approx(sum(r["em"] for r in mine) / len(mine))
        assert summary[source]["mean_searches"] == pytest.approx(sum(r["searches"] for r in mine) / len(mine))
    assert summary["all"]["em"] == pytest.approx(2 / 3) and summary["nq"]["em"] == 0.5
    assert summary["all"]["failed"] == 0 and summary["all"]["final_answer_pct"] == 100.0
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| nq |" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "0.667" in printed and str(out / "summary.png") in printed


def test_compare_prints_two_runs_side_by_side(tmp_path: Path, capsys) -> None:
    row = {"n": 10, "em": 0.2, "f1": 0.3}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"nq": row, "all": row}))
    b.write_text(json.dumps({"nq": {**row, "em": 0.5}, "all": {**row, "em": 0.5}}))
    assert evaluate.main(["--compare", str(a), str(b)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("nq"))
    assert "0.200" in line and "0.500" in line and "+0.300" in line


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    argv = ["--data", str(not_parquet), "--policy-url", "http://127.0.0.1:9", "--tokenizer", "unused"]
    assert evaluate.main(argv) == 2
    assert "cannot be read as parquet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(not_parquet)])  # no policy URL, no tokenizer
    with pytest.raises(SystemExit):
        evaluate.main([*argv, "--concurrency", "0"])


# ---- the scripted plumbing-check policy ---------------------------------------------------------------------------


def test_answer_span_picks_the_fact_not_the_question() -> None:
    text = (
        'Doc 1 (Title: "Zorkel") Visitors often mention Zorkel in travel diaries.\n'
        'Doc 2 (Title: "Zorkel") Zorkel is a novel written by the author Mira Quin.\n'
        'Doc 3 (Title: "Zorkel") The festival of Zorkel was first held in the year 1432.'
    )
    passages = passages_in("<tool_response>\n" + text + "\n</tool_response>")
    assert len(passages) == 3
    assert answer_span("Who wrote the novel Zorkel?", passages) == "Mira Quin"
    assert answer_span("In what year was the festival of Zorkel first held?", passages[2:]) == "1432"
    assert answer_span("Who?", []) is None


@contextlib.contextmanager
def _toy_retriever(toy_index, minilm_dir: Path):
    index, corpus = toy_index
    settings = RetrieverSettings(
        index_path=str(index), corpus_path=str(corpus), retriever_model=str(minilm_dir), retriever_name="e5"
    )
    with serve_app(create_app(settings), name="retriever", lifespan="on", startup_timeout_s=120) as url:
        yield url


@pytest.mark.e2e
def test_scripted_policy_through_the_real_rollout_and_retriever(
    toy_index, minilm_dir, toy_facts, qwen_tokenizer, qwen_tokenizer_dir, tmp_path: Path
) -> None:
    """The quickstart's path: scripted policy, real retriever on the toy index, real rollout core and reward."""
    facts = toy_facts[:12]
    data = _write_set(tmp_path / "toy.parquet", "toy", [(f.question, f.answer) for f in facts])
    out = tmp_path / "scripted"
    with (
        serve_app(scripted_policy_app(qwen_tokenizer), name="scripted-policy") as policy_url,
        _toy_retriever(toy_index, minilm_dir) as retriever_url,
    ):
        assert evaluate.main(_argv([data], policy_url, qwen_tokenizer_dir, retriever_url, out)) == 0
    records = _results(out)
    assert len(records) == 12 and all(r["status"] == "COMPLETED" and r["searches"] == 1 for r in records)
    assert all(r["queries"] == [r["question"]] for r in records), "it searches for the question itself"
    em = sum(r["em"] for r in records) / len(records)
    assert em >= 0.5, f"the toy answers are in the retrieved passages; EM {em}"


def test_show_trajectory_marks_the_trained_tokens(sets, policy, retriever, qwen_tokenizer_dir, capsys) -> None:
    from search_r1_eval import show_trajectory

    _, url = policy
    argv = ["--data", str(sets[1]), "--policy-url", url, "--tokenizer", str(qwen_tokenizer_dir)]
    assert show_trajectory.main([*argv, "--retrieval-url", retriever.url, "--colour", "never"]) == 0
    out = capsys.readouterr().out
    assert "[assistant]" in out and "-> tool call search" in out and "[tool] Doc 1 (Title:" in out
    tokens = out.split("--- tokens", 1)[1]
    assert '[[<tool_call>\n{"name": "search"' in tokens, "the sampled call is marked as trained on"
    assert "[[<tool_response>" not in tokens and "<tool_response>" in tokens, "search results are not trained on"
    assert "--- reward 1.0 (EM 1" in out


@pytest.mark.e2e  # a subprocess interrupted with SIGINT
def test_ctrl_c_keeps_finished_samples_and_the_rerun_resumes(
    qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path
) -> None:
    questions = [(f"Who rules the isle of Varn number {i}?", f"Ruler {i}") for i in range(5)]
    data = _write_set(tmp_path / "isles.parquet", "isles", questions)
    out = tmp_path / "interrupted"
    slow = MockSGLang(qwen_tokenizer, version="0.5.15")
    for i, (q, gold) in enumerate(questions):
        slow.script(q, [Reply(answer(gold), delay_s=0.0 if i == 0 else 8.0)])
    argv = _argv([data], "", qwen_tokenizer_dir, retriever.url, out, "--concurrency", "1")
    with serve_mock_sglang(slow) as url:
        argv[argv.index("--policy-url") + 1] = url
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "evaluate.py"), *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, "the first sample never finished"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()[-2000:]
    assert "run the same command to resume" in stderr.decode()
    assert [r["question"] for r in _results(out)] == [questions[0][0]]

    fast = MockSGLang(qwen_tokenizer, version="0.5.15")
    for q, gold in questions:
        fast.script(q, [answer(gold)])
    with serve_mock_sglang(fast) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 0
    assert sorted(r["question"] for r in _results(out)) == sorted(q for q, _ in questions)
    assert fast.requests_for(questions[0][0]) == [], "the finished sample was not run again"
