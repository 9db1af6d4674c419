"""The evaluation table and files, without servers: per-set EM/F1/cover-EM, the mean over sets beside the mean over
samples, the paper's reference row, failed samples left out of the scores, cut-off lines set aside, the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from search_r1_eval.lock import OutLock, OutLocked
from search_r1_eval.report import PAPER_AVG, PAPER_EM, reference, render_summary, render_table, summarize, write_summary
from search_r1_eval.results_file import is_failure, json_line, recover


def _record(source: str, em: float, **extra) -> dict:
    return {
        "id": f"{source}.parquet:0", "data_source": source, "em": em, "f1": em, "cover_em": em, "turns": 2,
        "searches": 1, "final_answer": True, "tool_errors": 0, "tool_calls": 1, "status": "COMPLETED", **extra,
    }  # fmt: skip


def test_avg_over_sets_beside_the_mean_over_samples_and_failures_left_out() -> None:
    records = [_record("nq", 1.0)] * 3 + [_record("hotpotqa", 0.0)]
    failed = [{"data_source": "hotpotqa", "status": "FAILED", "error": "x"}]
    table = summarize(records, failed)
    assert table["all"]["em"] == 0.75 and table["all"]["n"] == 4, "all: the mean over samples"
    assert table["avg"]["em"] == 0.5 and table["avg"]["cover_em"] == 0.5, "avg: the mean over sets"
    assert table["hotpotqa"]["n"] == 1 and table["hotpotqa"]["failed"] == 1 and table["all"]["failed"] == 1
    text = render_summary(table)
    assert "cover-EM" in text.splitlines()[0]
    assert "over the 4 finished sample(s) only: 1 failed" in text and "avg: mean over the 2 sets" in text


def test_a_set_with_only_failures_has_a_row_without_scores() -> None:
    table = summarize([_record("nq", 1.0)], [{"data_source": "popqa", "status": "FAILED"}])
    assert table["popqa"]["n"] == 0 and table["popqa"]["em"] is None and "avg" not in table
    line = next(line for line in render_table(table).splitlines() if line.startswith("popqa"))
    assert line.split()[1:3] == ["0", "-"]


def test_older_records_without_cover_em_are_scored_from_their_answer() -> None:
    old = _record("nq", 0.0, answer="the Beatles band", gold=["Beatles"])
    del old["cover_em"]
    assert summarize([old])["nq"]["cover_em"] == 1.0


def test_the_paper_row_is_shown_for_the_seven_benchmarks_only() -> None:
    seven = summarize([_record(source, 0.5) for source in PAPER_EM])
    text = reference(seven)
    assert text is not None and "Search-R1 paper, Qwen2.5-3B-Instruct" in text and "OpenAI tool calls" in text
    for source, em in PAPER_EM.items():
        assert f"{em:.3f}" in next(line for line in text.splitlines() if line.startswith(source + " "))
    assert f"{PAPER_AVG:.3f}" in next(line for line in text.splitlines() if line.startswith("avg "))
    assert "OpenAI tool calls" in render_summary(seven)
    assert reference(summarize([_record("toy", 1.0)])) is None
    some = reference(summarize([_record("nq", 1.0), _record("bamboogle", 0.0)]))
    assert some is not None and "avg of these 2" in some


def test_write_summary_leaves_no_temporary_files(tmp_path: Path) -> None:
    table = summarize([_record("nq", 1.0)])
    markdown, as_json = write_summary(table, tmp_path)
    assert json.loads(as_json.read_text())["nq"]["cover_em"] == 1.0 and "| nq |" in markdown.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]


def test_json_line_replaces_lone_surrogates() -> None:
    line = json_line({"id": "a", "answer": "x\ud800y"})
    assert line.endswith(b"\n") and json.loads(line)["answer"] == "x\ufffdy"


@pytest.mark.parametrize(
    ("tail", "set_aside"),
    [(b'{"id": "c.parquet:0", "em"', b'{"id": "c.parquet:0", "em"\n'), (b"", None), (b"  ", None)],
)
def test_recover_sets_a_cut_off_last_line_aside(tmp_path: Path, tail: bytes, set_aside: bytes | None) -> None:
    path = tmp_path / "results.jsonl"
    whole = json_line({"id": "a.parquet:0"}) + json_line({"id": "b.parquet:0"})
    path.write_bytes(whole + tail)
    records, message = recover(path)
    assert [r["id"] for r in records] == ["a.parquet:0", "b.parquet:0"] and path.read_bytes() == whole
    sides = list(tmp_path.glob("results.jsonl.partial-*"))
    if set_aside is None:
        assert message is None and sides == []
    else:
        assert message is not None and str(sides[0]) in message and sides[0].read_bytes() == set_aside


def test_recover_sets_aside_a_line_an_older_writer_glued_together(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    glued = b'{"id": "a.parquet:0", "em": 1.0, "mess' + json_line({"id": "b.parquet:0"})
    path.write_bytes(json_line({"id": "z.parquet:0"}) + glued + json_line({"id": "c.parquet:0"}))
    records, message = recover(path)
    assert [r["id"] for r in records] == ["z.parquet:0", "c.parquet:0"] and message is not None
    assert next(tmp_path.glob("results.jsonl.partial-*")).read_bytes() == glued


def test_the_lock_names_its_holder_and_is_emptied_on_release(tmp_path: Path) -> None:
    first = OutLock(tmp_path)
    assert first.acquire() is None
    holder = json.loads(first.path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    with pytest.raises(OutLocked, match=rf"PID {os.getpid()} on "):
        OutLock(tmp_path).acquire()  # another open file: flock refuses it as it would another process
    first.release()
    assert first.path.read_text() == ""
    second = OutLock(tmp_path)
    assert second.acquire() is None, "an emptied lock is not stale"
    second.release()


@pytest.mark.parametrize(
    ("status", "stop_reason", "failed"),
    [("COMPLETED", "answer", False), ("TRUNCATED", "length", False), ("TRUNCATED", "deadline", True),
     ("FAILED", "policy_error", True), ("ABORTED", "abort", True)],
)  # fmt: skip
def test_what_counts_as_a_failure(status: str, stop_reason: str, failed: bool) -> None:
    assert is_failure({"status": status, "stop_reason": stop_reason}) is failed
