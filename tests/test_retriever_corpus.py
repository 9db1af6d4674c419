"""The memory-mapped corpus: exact line access, title/text split, sidecar reuse and staleness."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from retriever.corpus import Corpus, compute_line_offsets, make_doc, split_contents


def _write(path: Path, records: list[dict], trailer: str = "\n") -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + trailer, encoding="utf-8")
    return path


RECORDS = [
    {"id": "0", "contents": '"Zürich"\nA city in Switzerland. Ölçü 東京 🙂'},
    {"id": "1", "contents": '"Quoted "inner" title"\nline one'},
    {"id": "7", "contents": "no title line at all"},
    {"id": "9", "title": "Split", "text": "already split"},
]


@pytest.mark.parametrize("trailer", ["\n", "", "\n\n"], ids=["newline", "no-final-newline", "blank-last-line"])
def test_every_line_is_returned_exactly(tmp_path: Path, trailer: str):
    corpus = Corpus(_write(tmp_path / "c.jsonl", RECORDS, trailer), show_progress=False)
    assert len(corpus) == len(RECORDS)
    assert [corpus.record(i) for i in range(len(corpus))] == RECORDS
    with pytest.raises(IndexError, match="out of range"):
        corpus.raw(len(RECORDS))
    corpus.close()


def test_documents_have_id_contents_title_text(tmp_path: Path):
    corpus = Corpus(_write(tmp_path / "c.jsonl", RECORDS), show_progress=False)
    assert corpus.doc(0) == {
        "id": "0",
        "contents": '"Zürich"\nA city in Switzerland. Ölçü 東京 🙂',
        "title": "Zürich",
        "text": "A city in Switzerland. Ölçü 東京 🙂",
    }
    assert corpus.doc(1)["title"] == 'Quoted "inner" title'
    assert corpus.doc(2) == {"id": "7", "contents": "no title line at all", "title": "", "text": "no title line at all"}
    assert corpus.doc(3) == {"id": "9", "contents": '"Split"\nalready split', "title": "Split", "text": "already split"}
    corpus.close()


def test_split_contents_and_row_ids():
    assert split_contents('"T"\nbody\nmore') == ("T", "body\nmore")
    assert make_doc({"contents": '"T"\nx'}, row=42)["id"] == "42"


def test_offsets_match_python_line_starts(tmp_path: Path):
    path = _write(tmp_path / "c.jsonl", [{"id": str(i), "contents": "x" * (i % 7)} for i in range(1000)])
    data = path.read_bytes()
    expected = [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A]
    assert compute_line_offsets(path, show_progress=False).tolist() == expected


def test_second_open_reuses_the_sidecar_and_a_changed_corpus_rebuilds_it(tmp_path: Path):
    path = _write(tmp_path / "c.jsonl", RECORDS)
    Corpus(path, show_progress=False).close()
    sidecar = tmp_path / "c.jsonl.offsets.npy"
    assert sidecar.exists()
    first_mtime = sidecar.stat().st_mtime_ns

    reopened = Corpus(path, show_progress=False)
    assert sidecar.stat().st_mtime_ns == first_mtime
    assert isinstance(reopened._offsets, np.memmap)
    reopened.close()

    _write(path, [*RECORDS, {"id": "10", "contents": '"New"\npassage'}])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = Corpus(path, show_progress=False)
    assert len(changed) == len(RECORDS) + 1 and changed.doc(4)["title"] == "New"
    assert sidecar.stat().st_mtime_ns != first_mtime
    changed.close()


def test_sidecar_goes_to_cache_dir_when_given(tmp_path: Path):
    data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    path = _write(data_dir / "c.jsonl", RECORDS)
    Corpus(path, cache_dir=cache_dir, show_progress=False).close()
    assert not list(data_dir.glob("*.offsets.*"))
    assert len(list(cache_dir.glob("c.jsonl.*.offsets.npy"))) == 1
    corpus = Corpus(path, cache_dir=cache_dir, show_progress=False)
    assert corpus.doc(3)["id"] == "9"
    corpus.close()


def test_missing_corpus_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        Corpus(tmp_path / "nope.jsonl")
