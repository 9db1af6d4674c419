"""Numbers you can put in a paper: evaluate.py never counts a failure as a result, never loses or doubles a record
(kill -9, a full disk, two runs on one --out), keys samples by content so same-named files in different folders
do not collide, compares only what it can, and survives a reply with invalid Unicode.

Real HTTP servers on free ports (the test SGLang server, the fake retriever, a scripted policy) and, where the
behaviour is about processes (SIGKILL, two writers, a file size limit), evaluate.py as a real subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi import Request, Response

import evaluate
from search_r1_eval.lock import LOCK_NAME
from search_r1_eval.results_file import JsonLinesFile, ResultsWriteError
from search_r1_eval.scripted_policy import completion
from search_r1_eval.scripted_policy import create_app as scripted_policy_app
from tests.support.live_server import free_port, serve_app
from tests.support.rollout_helpers import answer
from tests.support.sglang_mock import MockSGLang, Reply, serve_mock_sglang
from tests.test_evaluate import _argv, _results, _write_set

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [(f"Who keeps the lighthouse of Parn number {i}?", f"Keeper {i}") for i in range(4)]
DEADLINE_S = 120


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short backoff, so a dead policy fails its samples in well under a second (the children inherit it)."""
    monkeypatch.setenv("SEARCH_R1_RETRY_INITIAL_WAIT_S", "0.01")
    monkeypatch.setenv("SEARCH_R1_RETRY_MAX_WAIT_S", "0.05")


def _mock(tokenizer, slow_after: int | None = None, delay_s: float = 60.0) -> MockSGLang:
    """Answers every question right; with ``slow_after``, samples from that index on answer ``delay_s`` late."""
    mock = MockSGLang(tokenizer, version="0.5.15")
    for i, (q, gold) in enumerate(QUESTIONS):
        late = slow_after is not None and i >= slow_after
        mock.script(q, [Reply(answer(gold), delay_s=delay_s if late else 0.0)])
    return mock


def _start(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "evaluate.py"), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _wait_for_lines(process: subprocess.Popen, path: Path, count: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists() or len(path.read_bytes().splitlines()) < count:
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, f"{path} never reached {count} line(s)"
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


@pytest.fixture
def isles(tmp_path: Path) -> Path:
    return _write_set(tmp_path / "parn.parquet", "parn", QUESTIONS)


# ---- a failed sample is not a result -----------------------------------------------------------------------------


def test_wrong_policy_url_fails_loudly_and_the_fixed_rerun_runs_the_failed_samples(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = _argv([isles], dead, qwen_tokenizer_dir, retriever.url, out)
    assert evaluate.main(argv) == 1, "every sample failed: not a success"
    captured = capsys.readouterr()
    assert f"failed {len(QUESTIONS)}:" in captured.err
    reason = next(line for line in captured.err.splitlines() if line.strip().startswith(f"{len(QUESTIONS)}x "))
    assert "127.0.0.1" in reason, f"the reason names what failed: {reason}"
    assert "run the same command to retry" in captured.err
    assert not (out / "results.jsonl").read_text(), "a failure is not a result"
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == len(QUESTIONS) and all(f["status"] == "FAILED" and f["error"] for f in failures)

    mock = _mock(qwen_tokenizer)
    with serve_mock_sglang(mock) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 0
    captured = capsys.readouterr()
    assert f"{len(QUESTIONS)} failed before and run again" in captured.out
    assert all(len(mock.requests_for(q)) == 1 for q, _ in QUESTIONS), "each failed sample ran again, once"
    records = _results(out)
    assert len(records) == len(QUESTIONS) and all(r["em"] == 1.0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["n"] == len(QUESTIONS) and summary["all"]["em"] == 1.0 and summary["all"]["failed"] == 0


def test_a_partly_failed_run_scores_what_finished_and_says_so(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    for i, (q, gold) in enumerate(QUESTIONS):
        mock.script(q, [Reply(status=400, text="bad request") if i == 0 else answer(gold if i == 1 else "nobody")])
    out = tmp_path / "partly"
    with serve_mock_sglang(mock) as url:
        assert evaluate.main(_argv([isles], url, qwen_tokenizer_dir, retriever.url, out)) == 1
    captured = capsys.readouterr()
    assert "failed 1:" in captured.err and "1x " in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parn"]["n"] == 3 and summary["parn"]["failed"] == 1
    assert summary["parn"]["em"] == pytest.approx(1 / 3), "EM over the finished samples, the failure left out"
    assert "over the 3 finished sample(s) only: 1 failed" in captured.out
    assert "failed" in (out / "summary.md").read_text()


def test_a_sample_cut_by_the_trajectory_deadline_is_retried_not_scored(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("SEARCH_R1_TRAJECTORY_TIMEOUT_S", "1")
    out = tmp_path / "slow"
    argv = _argv([isles], "", qwen_tokenizer_dir, retriever.url, out)
    with serve_mock_sglang(_mock(qwen_tokenizer, slow_after=3, delay_s=5.0)) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 1
    err = capsys.readouterr().err
    assert "failed 1:" in err and "SEARCH_R1_TRAJECTORY_TIMEOUT_S" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parn"]["n"] == 3 and summary["parn"]["failed"] == 1 and summary["parn"]["em"] == 1.0
    monkeypatch.delenv("SEARCH_R1_TRAJECTORY_TIMEOUT_S")
    with serve_mock_sglang(_mock(qwen_tokenizer)) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 0
    assert len(_results(out)) == len(QUESTIONS)


# ---- every record whole, counted once ---------------------------------------------------------------------------


@pytest.mark.e2e  # evaluate.py as a subprocess
def test_sigkill_and_a_cut_off_line_then_the_rerun_counts_every_sample_once(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "killed"
    argv = _argv([isles], "", qwen_tokenizer_dir, retriever.url, out, "--concurrency", "1")
    with serve_mock_sglang(_mock(qwen_tokenizer, slow_after=2)) as url:
        argv[argv.index("--policy-url") + 1] = url
        process = _start(argv)
        try:
            _wait_for_lines(process, out / "results.jsonl", 2)
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
        finally:
            _stop(process)
    assert process.returncode == -signal.SIGKILL
    # The kill landing mid-write leaves the start of a record and no newline (what an older writer glued the next
    # record onto); written here because a kill cannot be aimed at the middle of one write().
    results = out / "results.jsonl"
    whole = results.read_bytes()
    partial = whole.splitlines(keepends=True)[0][:57]
    results.write_bytes(whole + partial)

    fast = _mock(qwen_tokenizer)
    with serve_mock_sglang(fast) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert "stale lock" in err and f"PID {process.pid}" in err, "the dead run's lock is taken over, with a message"
    assert "set aside in" in err
    records = _results(out)
    assert sorted(r["question"] for r in records) == sorted(q for q, _ in QUESTIONS), "each sample exactly once"
    assert [len(fast.requests_for(q)) for q, _ in QUESTIONS] == [0, 0, 1, 1], "finished samples were not rerun"
    [side] = out.glob("results.jsonl.partial-*")
    assert side.read_bytes() == partial + b"\n", "the cut-off line is kept, not deleted"
    assert json.loads((out / "summary.json").read_text())["all"]["n"] == len(QUESTIONS)
    assert not (out / LOCK_NAME).read_text(), "a clean exit empties the lock"


@pytest.mark.e2e  # evaluate.py as a subprocess
def test_a_second_run_on_the_same_out_refuses_naming_the_holder(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path
) -> None:
    out = tmp_path / "shared"
    argv = _argv([isles], "", qwen_tokenizer_dir, retriever.url, out, "--concurrency", "1")
    with serve_mock_sglang(_mock(qwen_tokenizer, slow_after=1)) as url:
        argv[argv.index("--policy-url") + 1] = url
        first = _start(argv)
        try:
            _wait_for_lines(first, out / "results.jsonl", 1)  # it holds the lock and is writing
            second = subprocess.run(
                [sys.executable, str(ROOT / "evaluate.py"), *argv],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=DEADLINE_S,
            )
            lines = (out / "results.jsonl").read_bytes().splitlines()
        finally:
            first.send_signal(signal.SIGINT)
            _stop(first)
    assert second.returncode == 2
    assert f"PID {first.pid}" in second.stderr and "another --out" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert len(lines) == 1, "the refused run wrote nothing"


def test_a_stale_lock_of_a_dead_process_is_taken_over(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "gone-host", "since": "yesterday"}))
    with serve_mock_sglang(_mock(qwen_tokenizer)) as url:
        assert evaluate.main(_argv([isles], url, qwen_tokenizer_dir, retriever.url, out)) == 0
    err = capsys.readouterr().err
    assert f"taking over a stale lock in {out}: PID {pid} on gone-host" in err


@pytest.mark.e2e  # evaluate.py as a subprocess
def test_a_full_disk_is_one_line_and_loses_only_the_unfinished_sample(
    isles, qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "full"
    argv = _argv([isles], "", qwen_tokenizer_dir, retriever.url, out, "--concurrency", "1")
    with serve_mock_sglang(_mock(qwen_tokenizer)) as url:
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main([*argv, "--max-samples", "1"]) == 0
        first = (out / "results.jsonl").read_bytes()
        # A file size limit stands in for a full disk: the next record fits only in part (Python ignores SIGXFSZ,
        # so the write fails with EFBIG as it would with ENOSPC).
        limit = len(first) + len(first) // 2

        def limit_file_size() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        process = _start(argv, preexec_fn=limit_file_size)
        _, stderr = process.communicate(timeout=DEADLINE_S)
        assert process.returncode == 1, stderr.decode()[-3000:]
        err = stderr.decode()
        assert f"error: cannot write {out / 'results.jsonl'}: File too large" in err, err[-3000:]
        assert "Traceback" not in err
        assert (out / "results.jsonl").read_bytes() == first, "cut back to the last whole record"
    capsys.readouterr()
    with serve_mock_sglang(_mock(qwen_tokenizer)) as url:  # the limited run used up the first server's script
        argv[argv.index("--policy-url") + 1] = url
        assert evaluate.main(argv) == 0
    records = _results(out)
    assert sorted(r["question"] for r in records) == sorted(q for q, _ in QUESTIONS)


def test_a_write_error_names_the_file(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    file = JsonLinesFile(Path("/dev/full"))
    with pytest.raises(ResultsWriteError, match=r"cannot write /dev/full: No space left on device"):
        file.append({"id": "x"})
    file.close()


# ---- sample ids ---------------------------------------------------------------------------------------------------


def test_same_file_names_in_different_folders_do_not_collide_and_old_results_still_resume(
    qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    (tmp_path / "nq").mkdir()
    (tmp_path / "tq").mkdir()
    nq = _write_set(tmp_path / "nq" / "test.parquet", "nq", QUESTIONS[:2])
    tq = _write_set(tmp_path / "tq" / "test.parquet", "triviaqa", QUESTIONS[2:])
    out = tmp_path / "both"
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    for q, gold in QUESTIONS:
        mock.script(q, [answer(gold), answer(gold)])  # once per run at most
    with serve_mock_sglang(mock) as url:
        assert evaluate.main(_argv([nq, tq], url, qwen_tokenizer_dir, retriever.url, out)) == 0
        records = _results(out)
        assert sorted(r["id"] for r in records) == [
            "test.parquet:0",
            "test.parquet:0",
            "test.parquet:1",
            "test.parquet:1",
        ]
        assert len({r["key"] for r in records}) == 4
        assert all(len(mock.requests_for(q)) == 1 for q, _ in QUESTIONS), "the second file was not skipped"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["nq"]["n"] == 2 and summary["triviaqa"]["n"] == 2

        # A results file of an older evaluate.py: ids were file name and row only, no key.
        legacy = tmp_path / "legacy"
        legacy.mkdir()
        old = [
            {k: v for k, v in r.items() if k not in ("key", "cover_em")} for r in records if r["data_source"] == "nq"
        ]
        (legacy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
        before = {q: len(mock.requests_for(q)) for q, _ in QUESTIONS}
        assert evaluate.main(_argv([nq, tq], url, qwen_tokenizer_dir, retriever.url, legacy)) == 0
    ran = {q: len(mock.requests_for(q)) - before[q] for q, _ in QUESTIONS}
    assert ran == {QUESTIONS[0][0]: 0, QUESTIONS[1][0]: 0, QUESTIONS[2][0]: 1, QUESTIONS[3][0]: 1}, (
        "old records resume the samples they are, not the same-named file's"
    )
    summary = json.loads((legacy / "summary.json").read_text())
    assert summary["nq"]["n"] == 2 and summary["triviaqa"]["n"] == 2 and summary["nq"]["cover_em"] == 1.0


# ---- --compare -----------------------------------------------------------------------------------------------------


def _summary(path: Path, rows: dict[str, dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_compare_shows_each_sides_n_and_warns_on_different_sets(tmp_path: Path, capsys) -> None:
    row = {"n": 10, "em": 0.2, "f1": 0.3}
    a = _summary(tmp_path / "a.json", {"nq": row, "hotpotqa": row, "all": {**row, "n": 20}})
    b = _summary(tmp_path / "b.json", {"nq": {**row, "n": 7, "em": 0.5}, "all": {**row, "n": 7, "em": 0.5}})
    assert evaluate.main(["--compare", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    line = next(line for line in captured.out.splitlines() if line.startswith("nq"))
    assert line.split()[1:3] == ["10", "7"], f"each side's n: {line}"
    assert "warning: A and B cover different samples" in captured.err
    assert "sets only in A: hotpotqa" in captured.err and "nq (10 vs 7)" in captured.err


@pytest.mark.parametrize(
    "content",
    ['{"id": "x.parquet:0", "em": 1.0}\n{"id": "x.parquet:1", "em": 0.0}\n', "[1, 2]", "not json", '{"nq": {"n": 1}}'],
)
def test_compare_on_a_file_that_is_not_a_summary_is_one_line(tmp_path: Path, content: str, capsys) -> None:
    good = _summary(tmp_path / "good.json", {"all": {"n": 1, "em": 1.0, "f1": 1.0}})
    bad = tmp_path / "results.jsonl"
    bad.write_text(content)
    assert evaluate.main(["--compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(bad) in err and "summary" in err, err


# ---- invalid Unicode ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _surrogate_policy(tokenizer):
    """The scripted policy, but its answer's content carries a lone surrogate (valid JSON: ``"\\ud800"``)."""
    app = scripted_policy_app(tokenizer)

    async def chat(request: Request) -> Response:
        reply = completion(tokenizer, await request.json())
        message = reply["choices"][0]["message"]
        if not message.get("tool_calls"):
            message["content"] = message["content"].replace("<answer>", "\ud800 <answer>")
        return Response(json.dumps(reply), media_type="application/json")  # ensure_ascii: "\ud800" as an escape

    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/chat/completions"]
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    with serve_app(app, name="surrogate-policy") as url:
        yield url


def test_a_lone_surrogate_in_a_reply_does_not_crash_the_run(
    qwen_tokenizer, qwen_tokenizer_dir, retriever, tmp_path: Path, capsys
) -> None:
    """The rollout may keep the reply (the surrogate becomes U+FFFD in the file) or refuse it as a bad value (a
    failed sample with its reason); either way every line written is valid UTF-8 and the run ends normally."""
    data = _write_set(tmp_path / "odd.parquet", "odd", QUESTIONS[:2])
    out = tmp_path / "odd"
    with _surrogate_policy(qwen_tokenizer) as url:
        status = evaluate.main(_argv([data], url, qwen_tokenizer_dir, retriever.url, out))
    records = [json.loads(line) for line in (out / "results.jsonl").read_bytes().decode("utf-8").splitlines()]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_bytes().decode("utf-8").splitlines()]
    assert len(records) + len(failures) == 2 and status == (1 if failures else 0)
    assert all(r["status"] == "COMPLETED" and "\ufffd <answer>" in r["messages"][-1]["content"] for r in records)
    assert all("surrogate" in f["error"] or "Unicode" in f["error"] for f in failures)
    if failures:
        assert "failed 2:" in capsys.readouterr().err
