"""data_preprocess.py --eval_sets: FlashRAG jsonl -> eval/<set>.parquet in the training rows' form. Offline only: the
inputs are small FlashRAG-layout files in tmp_path, and the Hub download is a monkeypatched hf_hub_download."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import data_preprocess
from search_r1_data import check, convert, eval_sets
from search_r1_oai.prompts import SEARCH_TOOL, SYSTEM_PROMPT

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_SETS = {"hotpotqa", "2wikimultihopqa", "musique"}


def flashrag_lines(name: str, split: str) -> list[dict[str, Any]]:
    """Three FlashRAG-shaped records per set and split, the question naming both (so a wrong split shows)."""
    return [
        {
            "id": f"{split}_{i}",
            "question": f"{name} {split} question {i}",
            "golden_answers": [f"{name} answer {i}", f"alias {i}"],
            "metadata": {"type": "bridge"},
        }
        for i in range(3)
    ]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture
def flashrag_dir(tmp_path: Path) -> Path:
    """Every set in FlashRAG's layout, with both a test and a dev file: only Search-R1's split may be read."""
    root = tmp_path / "flashrag"
    for name in eval_sets.EVAL_SETS:
        for split in ("test", "dev"):
            write_jsonl(root / name / f"{split}.jsonl", flashrag_lines(name, split))
    return root


def expected_rows(name: str, split: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training conversion applied to each record, with data_source = the set's name."""
    return [
        convert.convert_row(
            {"question": r["question"], "golden_answers": r["golden_answers"], "data_source": name},
            split=split,
            index=i,
        ).row
        for i, r in enumerate(records)
    ]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_cli_writes_every_set_in_the_training_form(flashrag_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "data_preprocess.py"),
            "--no_progress",
            "--eval_sets",
            "nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle",
            "--input_dir",
            str(flashrag_dir),
            "--local_dir",
            str(out_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # --eval_sets alone: no training split is converted
    assert sorted(p.name for p in out_dir.iterdir()) == ["eval"]
    assert sorted(p.name for p in (out_dir / "eval").iterdir()) == sorted(f"{n}.parquet" for n in eval_sets.EVAL_SETS)

    for name in eval_sets.EVAL_SETS:
        split = "dev" if name in DEV_SETS else "test"
        assert eval_sets.EVAL_SETS[name] == split
        path = out_dir / "eval" / f"{name}.parquet"
        assert check.check_file(path) == []
        rows = pq.read_table(path).to_pylist()
        assert rows == expected_rows(name, split, flashrag_lines(name, split))
        assert {row["data_source"] for row in rows} == {name}
        first = rows[0]
        assert first["prompt"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Question: {name} {split} question 0?"},
        ]
        assert json.loads(first["tools"]) == [SEARCH_TOOL]
        assert first["reward_model"] == {"ground_truth": {"target": [f"{name} answer 0", "alias 0"]}, "style": "rule"}
        assert first["metadata"] == {
            "question": f"{name} {split} question 0",
            "split": split,
            "index": 0,
            "data_source": name,
        }
        assert f"[{name}/{split}] {flashrag_dir / name / f'{split}.jsonl'} -> {path}" in result.stdout
        assert f"{path}: OK" in result.stdout
    assert "rows in: 3  rows out: 3  rejected: 0" in result.stdout
    # eval labels come from golden_answers by design: no "reward_model had none" line
    assert "reward_model had none" not in result.stdout

    checked = data_preprocess.main(["--check", *(str(p) for p in sorted((out_dir / "eval").iterdir()))])
    assert checked == 0


def test_bad_lines_are_rejected_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in" / "popqa" / "test.jsonl"
    path.parent.mkdir(parents=True)
    good = {"id": "0", "question": "Who painted the Mona Lisa", "golden_answers": ["Leonardo da Vinci"]}
    lines = [
        json.dumps(good).encode(),
        b"{not json",
        b"",  # blank: not a row
        b'["a", "list"]',
        json.dumps({"id": "3", "golden_answers": ["x"]}).encode(),
        json.dumps({"id": "4", "question": "q4", "golden_answers": []}).encode(),
        b'{"question": "caf\xe9", "golden_answers": ["x"]}',
        json.dumps({"id": "6", "question": "what year", "golden_answers": [1969, "the"]}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    argv = ["--eval_sets", "popqa", "--input_dir", str(tmp_path / "in"), "--local_dir", str(tmp_path / "out")]
    code = data_preprocess.main([*argv, "--no_progress", "--batch_size", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "rows in: 7  rows out: 2  rejected: 5" in out
    for reason in (
        "line is not valid JSON",
        "line is a JSON list, not an object",
        "missing question",
        "no answers in reward_model or golden_answers",
        "line is not UTF-8 text",
    ):
        assert f"rejected ({reason}): 1" in out
    assert "row 1: line is not valid JSON: {not json" in out

    rows = pq.read_table(tmp_path / "out" / "eval" / "popqa.parquet").to_pylist()
    assert [r["metadata"]["index"] for r in rows] == [0, 6]
    assert [r["reward_model"]["ground_truth"]["target"] for r in rows] == [["Leonardo da Vinci"], ["1969"]]


def test_hub_download_asks_for_each_sets_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flashrag_dir: Path
) -> None:
    import huggingface_hub

    calls: list[tuple[str, str, str]] = []

    def fake_download(*, repo_id: str, filename: str, repo_type: str) -> str:
        calls.append((repo_id, filename, repo_type))
        return str(flashrag_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out_dir = tmp_path / "out"
    code = data_preprocess.main(["--eval_sets", "hotpotqa,bamboogle", "--local_dir", str(out_dir), "--no_progress"])
    assert code == 0
    assert calls == [
        ("RUC-NLPIR/FlashRAG_datasets", "hotpotqa/dev.jsonl", "dataset"),
        ("RUC-NLPIR/FlashRAG_datasets", "bamboogle/test.jsonl", "dataset"),
    ]
    rows = pq.read_table(out_dir / "eval" / "hotpotqa.parquet").to_pylist()
    assert rows == expected_rows("hotpotqa", "dev", flashrag_lines("hotpotqa", "dev"))

    calls.clear()
    argv = ["--eval_sets", "musique", "--eval_hf_repo_id", "me/mirror", "--local_dir", str(out_dir), "--no_progress"]
    assert data_preprocess.main(argv) == 0
    assert calls == [("me/mirror", "musique/dev.jsonl", "dataset")]


def test_hub_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*, repo_id: str, filename: str, repo_type: str) -> str:
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and\noutgoing traffic is off")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert data_preprocess.main(["--eval_sets", "nq", "--local_dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not download nq/test.jsonl from dataset RUC-NLPIR/FlashRAG_datasets" in line
    assert "--input_dir" in line and "DIR/<set>/<split>.jsonl" in line
    assert not (tmp_path / "out").exists()


def test_unknown_set_is_one_line_listing_the_known(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_preprocess.main(["--eval_sets", "nq,squad", "--local_dir", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unknown set(s) squad" in line
    assert "nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa, musique, bamboogle" in line
    assert not (tmp_path / "out").exists()
    assert eval_sets.parse_eval_sets(" NQ , musique") == ["nq", "musique"]
    assert eval_sets.parse_eval_sets("all") == list(eval_sets.EVAL_SETS)
    for text in ("nq,,popqa", "nq,nq"):
        with pytest.raises(convert.DataError):
            eval_sets.parse_eval_sets(text)


def test_missing_jsonl_names_path_and_layout(
    flashrag_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (flashrag_dir / "musique" / "dev.jsonl").unlink()
    out_dir = tmp_path / "out"
    argv = ["--eval_sets", "nq,musique", "--input_dir", str(flashrag_dir), "--local_dir", str(out_dir)]
    assert data_preprocess.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{flashrag_dir / 'musique' / 'dev.jsonl'} not found" in line
    assert "FlashRAG layout DIR/<set>/<split>.jsonl" in line and "dev: hotpotqa, 2wikimultihopqa, musique" in line
    # every input is resolved before anything is converted
    assert not out_dir.exists()


def test_eval_max_samples_and_training_splits_together(
    flashrag_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_data_preprocess import upstream_row, write_upstream

    write_upstream(flashrag_dir / "train.parquet", [upstream_row(i, f"train q{i}", [f"a{i}"]) for i in range(4)])
    out_dir = tmp_path / "out"
    common = ["--input_dir", str(flashrag_dir), "--local_dir", str(out_dir), "--no_progress"]
    code = data_preprocess.main([*common, "--splits", "train", "--eval_sets", "nq", "--eval_max_samples", "2"])
    assert code == 0
    assert pq.read_metadata(out_dir / "train.parquet").num_rows == 4
    rows = pq.read_table(out_dir / "eval" / "nq.parquet").to_pylist()
    assert rows == expected_rows("nq", "test", flashrag_lines("nq", "test")[:2])
    assert not (out_dir / "test.parquet").exists()
    assert not list(out_dir.rglob("*.tmp")), "every file was renamed into place"
    capsys.readouterr()

    # --max_samples limits training splits only: alone with --eval_sets it is a mistake, said in one line
    assert data_preprocess.main([*common, "--eval_sets", "nq", "--max_samples", "2"]) == 2
    assert "--eval_max_samples" in one_error_line(capsys.readouterr().err)


def test_check_flags_a_broken_eval_file(flashrag_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    argv = ["--eval_sets", "bamboogle", "--input_dir", str(flashrag_dir), "--local_dir", str(out_dir), "--no_progress"]
    assert data_preprocess.main(argv) == 0
    path = out_dir / "eval" / "bamboogle.parquet"
    table = pq.read_table(path)
    broken = tmp_path / "broken.parquet"
    pq.write_table(table.drop_columns(["tools"]), broken)
    capsys.readouterr()
    assert data_preprocess.main(["--check", str(path), str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: OK" in out
    assert f"{broken}: file: tools: column is missing" in out


def test_help_names_the_eval_flags_and_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        data_preprocess.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--eval_sets", "--eval_hf_repo_id", "--eval_max_samples", "--input_dir", "--local_dir"):
        assert flag in text
    assert "DIR/<set>/<split>.jsonl" in text
    assert "hotpotqa=dev" in text and "nq=test" in text
    assert "eval/<set>.parquet" in text
