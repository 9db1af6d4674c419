"""data_preprocess.py / search_r1_data: upstream-shaped parquet in, slime-readable parquet out, --check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_preprocess
from search_r1_data import check, convert, files
from search_r1_oai.prompts import SEARCH_TOOL, SYSTEM_PROMPT

REPO_ROOT = Path(__file__).resolve().parents[1]


def upstream_row(i: int, question: str, answers: Any, *, target: Any = "same", source: str = "nq") -> dict[str, Any]:
    """One row shaped like PeterJinGo/nq_hotpotqa_train (Search-R1's qa_search_train_merge.py output)."""
    target = answers if isinstance(target, str) and target == "same" else target
    return {
        "id": f"train_{i}",
        "question": question,
        "golden_answers": answers,
        "data_source": source,
        "prompt": [{"role": "user", "content": f"Answer the given question. ... Question: {question}\n"}],
        "ability": "fact-reasoning",
        "reward_model": {"ground_truth": {"target": target}, "style": "rule"},
        "extra_info": {"index": i, "split": "train"},
    }


def _plain(value: Any) -> Any:
    """numpy arrays (how pandas hands upstream list cells back) as the lists pyarrow writes them from."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def write_upstream(path: Path, rows: list[dict[str, Any]]) -> Path:
    """An upstream-shaped parquet file: list cells become parquet lists, a missing target a null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([_plain(row) for row in rows]), path)
    return path


def slime_read(path: Path) -> list[dict[str, Any]]:
    """What slime's Dataset does with each row (slime/utils/convert.py, without --apply-chat-template)."""
    samples = []
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            metadata = row.get("metadata") or {}
            tools = row["tools"]
            if isinstance(tools, str):
                tools = json.loads(tools)
            assert isinstance(tools, list)
            metadata["tools"] = tools
            samples.append({"prompt": row["prompt"], "label": row["reward_model"], "metadata": metadata, "row": row})
    return samples


@pytest.fixture
def upstream_dir(tmp_path: Path) -> Path:
    rows = [
        upstream_row(0, "who wrote the origin of species", np.array(["Charles Darwin", " Darwin ", "Charles Darwin"])),
        # reward_model has no target: the golden_answers must be used
        upstream_row(1, "when did apollo 11 land on the moon", np.array(["1969", "July 20, 1969"]), target=None),
        # nothing to score against: rejected, and reported
        upstream_row(2, "what is the colour of the sky", np.array([], dtype=object), target=np.array([], dtype=object)),
        upstream_row(3, "   ", np.array(["x"])),
        upstream_row(4, "Which band released Abbey Road?", np.array(["The Beatles", "the", "!"]), source="hotpotqa"),
    ]
    directory = tmp_path / "upstream"
    write_upstream(directory / "train.parquet", rows)
    write_upstream(directory / "test.parquet", rows[:2])
    return directory


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "data_preprocess.py"), "--no_progress", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_slime_ready(sample: dict[str, Any], question: str, targets: list[str], split: str, index: int) -> None:
    prompt = sample["prompt"]
    assert isinstance(prompt, list) and len(prompt) == 2
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert prompt[0]["content"] == SYSTEM_PROMPT
    assert question in prompt[1]["content"]
    assert sample["metadata"]["tools"] == [SEARCH_TOOL]
    assert sample["label"] == {"ground_truth": {"target": targets}, "style": "rule"}
    assert {k: sample["metadata"][k] for k in ("question", "split", "index")} == {
        "question": question,
        "split": split,
        "index": index,
    }
    assert not list(check._null_paths(sample["row"]))


def test_cli_converts_upstream_rows_as_slime_reads_them(upstream_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    result = run_cli("--input_dir", upstream_dir, "--local_dir", out_dir)
    assert result.returncode == 0, result.stderr

    train = slime_read(out_dir / "train.parquet")
    assert len(train) == 3
    assert_slime_ready(train[0], "who wrote the origin of species", ["Charles Darwin", "Darwin"], "train", 0)
    assert_slime_ready(train[1], "when did apollo 11 land on the moon", ["1969", "July 20, 1969"], "train", 1)
    assert_slime_ready(train[2], "Which band released Abbey Road?", ["The Beatles"], "train", 4)
    assert [s["row"]["data_source"] for s in train] == ["nq", "nq", "hotpotqa"]
    assert train[0]["prompt"][1]["content"].endswith("who wrote the origin of species?")
    assert len(slime_read(out_dir / "test.parquet")) == 2

    out = result.stdout
    assert "rows in: 5  rows out: 3  rejected: 2" in out
    assert "rows in: 2  rows out: 2  rejected: 0" in out
    assert "data_source hotpotqa: 1" in out and "data_source nq: 2" in out
    assert "rejected (no answers in reward_model or golden_answers): 1" in out
    assert "rejected (empty question): 1" in out
    assert "row 2: no answers" in out and "what is the colour of the sky" in out
    assert "targets taken from golden_answers (reward_model had none): 1" in out
    assert f"{out_dir / 'train.parquet'}: OK" in out

    checked = run_cli("--check", out_dir / "train.parquet", out_dir / "test.parquet")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.count(": OK") == 2


def test_in_process_run_uses_system_prompt_file_and_limits_rows(upstream_dir: Path, tmp_path: Path) -> None:
    prompt_file = tmp_path / "system.txt"
    prompt_file.write_text("  Answer briefly; use search.\n")
    out_dir = tmp_path / "out"
    argv = ["--input_dir", str(upstream_dir), "--local_dir", str(out_dir), "--splits", "train"]
    code = data_preprocess.main(
        [*argv, "--system_prompt_file", str(prompt_file), "--max_samples", "2", "--no_progress"]
    )
    assert code == 0
    assert not (out_dir / "test.parquet").exists()
    samples = slime_read(out_dir / "train.parquet")
    assert [s["metadata"]["index"] for s in samples] == [0, 1]
    assert all(s["prompt"][0]["content"] == "Answer briefly; use search." for s in samples)


def test_small_batches_stream_every_row_in_order(tmp_path: Path) -> None:
    rows = [upstream_row(i, f"question number {i}", np.array([f"answer {i}"])) for i in range(53)]
    rows[17] = upstream_row(17, "", np.array(["lost"]))
    source = write_upstream(tmp_path / "train.parquet", rows)

    summary = convert.convert_file(source, tmp_path / "out.parquet", split="train", batch_size=5, progress=False)

    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (53, 52, 1)
    assert summary.rejected_examples[0][:2] == (17, "empty question")
    out = pq.ParquetFile(tmp_path / "out.parquet")
    assert out.metadata.num_row_groups > 1
    samples = slime_read(tmp_path / "out.parquet")
    expected = [i for i in range(53) if i != 17]
    assert [s["metadata"]["index"] for s in samples] == expected
    assert [s["label"]["ground_truth"]["target"] for s in samples] == [[f"answer {i}"] for i in expected]
    assert check.check_file(tmp_path / "out.parquet") == []


def test_interrupted_run_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_upstream(tmp_path / "train.parquet", [upstream_row(i, f"q{i}", np.array(["ans"])) for i in range(9)])

    def fail(writer: pq.ParquetWriter, rows: list[dict[str, Any]]) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert, "_write", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert.convert_file(source, tmp_path / "out" / "train.parquet", split="train", batch_size=4, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array(["Paris", " Paris ", "paris"]), ["Paris", "paris"]),
        (("a dog", "the cat"), ["a dog", "the cat"]),
        ("  Lisbon ", ["Lisbon"]),
        (1969, ["1969"]),
        (np.int64(7), ["7"]),
        (3.0, ["3"]),
        (2.5, ["2.5"]),
        ([["x", ["y"]], np.array(["x"])], ["x", "y"]),
        ([None, "", "   ", "the", "!!", "An"], []),
        (None, []),
    ],
)
def test_normalise_targets(value: Any, expected: list[str]) -> None:
    assert convert.normalise_targets(value) == expected


def test_convert_row_rejects_with_reason() -> None:
    with pytest.raises(convert.RowRejected, match="missing question"):
        convert.convert_row({"golden_answers": ["a"]}, split="train", index=0)
    with pytest.raises(convert.RowRejected, match="not text"):
        convert.convert_row({"question": 12, "golden_answers": ["a"]}, split="train", index=0)
    with pytest.raises(convert.RowRejected, match="no answers"):
        convert.convert_row({"question": "q", "golden_answers": ["the"]}, split="train", index=0)
    row = convert.convert_row({"question": "q", "golden_answers": ["a b"]}, split="dev", index=3).row
    assert row["data_source"] == convert.UNKNOWN_SOURCE
    assert row["metadata"] == {"question": "q", "split": "dev", "index": 3, "data_source": convert.UNKNOWN_SOURCE}


# ---------------------------------------------------------------------------------------------------------------------
# --check


@pytest.fixture
def good_table(tmp_path: Path) -> pa.Table:
    rows = [upstream_row(i, f"question {i}", np.array([f"answer {i}"])) for i in range(4)]
    source = write_upstream(tmp_path / "in.parquet", rows)
    convert.convert_file(source, tmp_path / "good.parquet", split="train", progress=False)
    return pq.read_table(tmp_path / "good.parquet")


def test_check_flags_null_tools_cell(good_table: pa.Table, tmp_path: Path) -> None:
    tools = good_table.column("tools").to_pylist()
    tools[2] = None
    bad = tmp_path / "null_tools.parquet"
    pq.write_table(good_table.set_column(1, "tools", pa.array(tools, pa.string())), bad)

    assert [str(p) for p in check.check_file(bad, batch_size=1)] == ["row 2: tools: is null"]
    result = run_cli("--check", bad)
    assert result.returncode == 1
    assert f"{bad}: row 2: tools: is null" in result.stdout
    assert "1 problem(s)" in result.stdout


def test_check_flags_list_of_struct_tools_column(good_table: pa.Table, tmp_path: Path) -> None:
    other_tool = {"type": "function", "function": {"name": "lookup", "strict": True, "parameters": {"type": "object"}}}
    tools = [[SEARCH_TOOL] if i % 2 else [other_tool] for i in range(good_table.num_rows)]
    bad = tmp_path / "struct_tools.parquet"
    pq.write_table(good_table.set_column(1, "tools", pa.array(tools)), bad)

    problems = check.check_file(bad)
    assert any(p.row is None and p.column == "tools" and "JSON string" in p.message for p in problems)
    # schema unification gave every row the other row's properties as nulls: each row is reported
    assert {p.row for p in problems if p.row is not None and "null" in p.message} == {0, 1, 2, 3}
    result = run_cli("--check", bad)
    assert result.returncode == 1
    assert "row 0: tools: holds a null at" in result.stdout


def test_check_flags_json_string_metadata(good_table: pa.Table, tmp_path: Path) -> None:
    index = good_table.schema.get_field_index("metadata")
    as_json = [json.dumps(m) for m in good_table.column("metadata").to_pylist()]
    bad = tmp_path / "json_metadata.parquet"
    pq.write_table(good_table.set_column(index, "metadata", pa.array(as_json)), bad)

    problems = check.check_file(bad)
    assert [p.row for p in problems if p.column == "metadata" and "is a string" in p.message] == [0, 1, 2, 3]
    assert any(p.row is None and p.column == "metadata" for p in problems)
    assert run_cli("--check", bad).returncode == 1


def test_check_reports_every_problem_with_row_and_column(good_table: pa.Table, tmp_path: Path) -> None:
    rows = good_table.to_pylist()
    rows[0]["prompt"] = [{"role": "user", "content": ""}]
    rows[1]["reward_model"]["ground_truth"]["target"] = []
    rows[3]["tools"] = "[]"
    rows[3]["data_source"] = ""
    bad = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=good_table.schema), bad)

    found = {(p.row, p.column) for p in check.check_file(bad)}
    assert found == {(0, "prompt"), (1, "reward_model"), (3, "tools"), (3, "data_source")}


def test_check_missing_columns_and_unreadable_file(tmp_path: Path) -> None:
    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": "hi"}]]}), partial)
    missing = {p.column for p in check.check_file(partial) if p.row is None}
    assert missing == {"tools", "reward_model", "data_source", "metadata"}

    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    [problem] = check.check_file(garbage)
    assert problem.column == "<file>" and "cannot be read" in problem.message


# ---------------------------------------------------------------------------------------------------------------------
# inputs and flags


def test_missing_split_is_a_clear_error(upstream_dir: Path, tmp_path: Path) -> None:
    result = run_cli("--input_dir", upstream_dir, "--local_dir", tmp_path / "out", "--splits", "train,dev")
    assert result.returncode == 2
    assert "dev.parquet not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_flags_are_clear_errors(upstream_dir: Path, tmp_path: Path) -> None:
    common = ["--input_dir", str(upstream_dir), "--local_dir", str(tmp_path / "o"), "--no_progress"]
    assert data_preprocess.main([*common, "--splits", "train,,test"]) == 2
    assert data_preprocess.main([*common, "--batch_size", "0"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    assert data_preprocess.main([*common, "--system_prompt_file", str(empty)]) == 2


def test_download_uses_hub_dataset_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream_dir: Path) -> None:
    import huggingface_hub

    calls = []

    def fake_download(*, repo_id: str, filename: str, repo_type: str) -> str:
        calls.append((repo_id, filename, repo_type))
        return str(upstream_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    summaries = convert.preprocess(["test"], tmp_path / "out", hf_repo_id="someone/qa", progress=False)
    assert calls == [("someone/qa", "test.parquet", "dataset")]
    assert summaries[0].rows_out == 2


def test_download_failure_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "data_preprocess.py", "--hf_repo_id", "nobody/not-a-dataset-xyz", "--local_dir", tmp_path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    assert "could not download train.parquet from dataset nobody/not-a-dataset-xyz" in result.stderr


def test_help_explains_every_flag() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--local_dir",
        "--hf_repo_id",
        "--input_dir",
        "--splits",
        "--max_samples",
        "--system_prompt_file",
        "--batch_size",
        "--no_progress",
        "--check",
    ):
        assert flag in result.stdout


# ---------------------------------------------------------------------------------------------------------------------
# newcomer mistakes: one `error:` line saying what to do, exit 2, no traceback


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_non_parquet_input_is_one_line(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "train.parquet").write_text('{"question": "a jsonl, renamed"}\n')
    result = run_cli("--input_dir", inputs, "--splits", "train", "--local_dir", tmp_path / "out")
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert f"{inputs / 'train.parquet'} cannot be read as parquet" in line
    assert "<split>.parquet" in line
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_damaged_parquet_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [upstream_row(i, f"question {i}", [f"answer {i}"]) for i in range(200)]
    source = tmp_path / "in" / "train.parquet"
    source.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([_plain(r) for r in rows]), source, row_group_size=50)
    data = source.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    # the footer stays and the pages after the first third are zeroed: the file opens, then reading fails
    damaged = data[: footer // 3] + b"\0" * (footer - footer // 3) + data[footer:]
    source.write_bytes(damaged)
    argv = ["--input_dir", str(source.parent), "--splits", "train", "--local_dir", str(tmp_path / "out")]
    assert data_preprocess.main([*argv, "--no_progress"]) == 2
    assert f"{source} is damaged: reading failed after" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out" / "train.parquet").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max_samples", "0"),
        ("--max_samples", "-3"),
        ("--max_samples", "ten"),
        ("--batch_size", "0"),
        ("--eval_max_samples", "0"),
    ],
)
def test_numeric_flags_are_bounded_at_parse_time(
    flag: str, value: str, upstream_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--input_dir", str(upstream_dir), "--local_dir", str(tmp_path / "out"), "--no_progress", flag, value]
    assert data_preprocess.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"argument {flag}: must be an integer >= 1" in line and "--help" in line
    assert not (tmp_path / "out").exists()


def test_check_on_a_missing_file_says_it_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "data" / "train.parquet"
    assert data_preprocess.main(["--check", str(missing)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{missing} does not exist" in line and "cannot be read as parquet" not in line
    assert [str(p) for p in check.check_file(missing)] == ["file: <file>: does not exist"]
    assert [str(p) for p in check.check_file(tmp_path)] == ["file: <file>: is a folder, not a parquet file"]


def test_misuse_through_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = run_cli("--max_samples", "0", "--local_dir", tmp_path / "out")
    assert result.returncode == 2
    assert "--max_samples: must be an integer >= 1, got 0" in _one_error_line(result.stderr)


# ---------------------------------------------------------------------------------------------------------------------
# damaged files and concurrent runs


def _converted(tmp_path: Path, rows: int = 3000) -> Path:
    source = write_upstream(
        tmp_path / "in" / "train.parquet", [upstream_row(i, f"question {i}", [f"answer {i}"]) for i in range(rows)]
    )
    out = tmp_path / "out" / "train.parquet"
    convert.convert_file(source, out, split="train", batch_size=500, progress=False)
    return out


@pytest.mark.parametrize("damage", ["zeroed_middle", "four_flipped_bytes", "truncated", "truncated_but_ends_in_PAR1"])
def test_check_on_a_damaged_file_is_one_line_and_status_2(tmp_path: Path, damage: str) -> None:
    good = _converted(tmp_path)
    data = good.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    middle = footer // 2
    damaged = {
        # what two writers sharing one temporary file left: PAR1 at both ends, the pages between broken
        "zeroed_middle": data[: footer // 3] + b"\0" * (footer - footer // 3) + data[footer:],
        "four_flipped_bytes": data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 4]) + data[middle + 4 :],
        "truncated": data[: len(data) // 2],
        "truncated_but_ends_in_PAR1": data[: len(data) // 2] + b"PAR1",
    }[damage]
    if damage != "truncated":
        assert damaged[:4] == damaged[-4:] == b"PAR1"
    bad = tmp_path / f"{damage}.parquet"
    bad.write_bytes(damaged)

    result = run_cli("--check", good, bad)

    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith(f"error: {bad} ") and "write it again with data_preprocess.py" in line
    assert ("is damaged" in line) or ("cannot be read as parquet" in line)
    assert f"{good}: OK" in result.stdout, "the other files are still checked"
    [problem] = check.check_file(bad)
    assert problem.damaged and problem.column == "<file>"


def test_two_runs_into_one_folder_never_leave_a_corrupt_file(tmp_path: Path) -> None:
    rows = 40_000
    write_upstream(tmp_path / "in" / "train.parquet", [upstream_row(i, f"q {i}", [f"a {i}"]) for i in range(rows)])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".train.parquet.killed00.tmp").write_bytes(b"PAR1 left by a SIGKILLed run")
    argv = [sys.executable, str(REPO_ROOT / "data_preprocess.py"), "--no_progress", "--splits", "train"]
    argv += ["--input_dir", str(tmp_path / "in"), "--local_dir", str(out), "--batch_size", "256"]
    procs = [subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        results.append((proc.returncode, stdout, stderr))

    assert 0 in [code for code, _, _ in results], results
    for code, _, stderr in results:
        if code != 0:  # the second run refused: one clear line
            assert code == 2, stderr
            assert f"another data_preprocess.py is writing into {out}" in _one_error_line(stderr)
    assert check.check_file(out / "train.parquet") == []
    assert pq.read_metadata(out / "train.parquet").num_rows == rows
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"], "no temporary file is left"


def test_outputs_get_the_mode_of_a_plain_new_file(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        out = _converted(tmp_path, rows=3)
        with files.atomic_path(tmp_path / "plain.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: other users of a shared data folder read it
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def test_a_folder_that_cannot_be_locked_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def nfs_flock(fd: int, operation: int) -> None:
        raise OSError(9, "Bad file descriptor")  # what NFS answers for a folder's read-only descriptor

    monkeypatch.setattr(files.fcntl, "flock", nfs_flock)
    with files.folder_lock(tmp_path, "another run is writing"):
        pass
    assert "cannot lock" in caplog.text and "will not be detected" in caplog.text
