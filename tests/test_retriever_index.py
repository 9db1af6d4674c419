"""Encoder conventions, memory-mapped FAISS loading, the GPU guard and build_index.py (resume, index types)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

import build_index
from retriever import index as index_module
from retriever.encoder import Encoder, spec_for
from retriever.index import SearchIndex, faiss_gpu_count, load_index
from retriever_download.files import folder_lock


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.fixture(scope="module")
def minilm_e5(minilm_dir: Path) -> Encoder:
    return Encoder(str(minilm_dir), "e5", device="cpu")


def test_family_names_resolve_and_unknown_names_are_refused():
    assert spec_for("e5").query_prefix == "query: " and spec_for("e5-base-v2").pooling == "mean"
    assert spec_for("bge-large-en-v1.5").pooling == "cls"
    with pytest.raises(ValueError, match="unknown retriever_name 'colbert'"):
        spec_for("colbert")


def test_e5_prefixes_queries_and_passages_and_normalises(minilm_dir: Path, minilm_e5: Encoder):
    plain = Encoder(str(minilm_dir), "minilm", device="cpu")
    texts = ["Who wrote the novel Zorvath?", "a much longer second text so that padding is involved here"]
    queries = minilm_e5.encode_queries(texts)
    assert queries.shape == (2, 384) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(queries, plain.encode_queries([f"query: {t}" for t in texts]), atol=1e-5)
    np.testing.assert_allclose(
        minilm_e5.encode_passages(texts), plain.encode_passages([f"passage: {t}" for t in texts]), atol=1e-5
    )
    # Sorting by length for micro-batches must not reorder the output.
    np.testing.assert_allclose(minilm_e5.encode_queries(texts[::-1]), queries[::-1], atol=1e-5)


def test_fp16_is_ignored_without_cuda(minilm_dir: Path):
    encoder = Encoder(str(minilm_dir), "e5", device="cpu", fp16=True)
    assert not encoder.fp16 and encoder.encode_queries(["x"]).dtype == np.float32


def test_flat_index_is_memory_mapped_not_read(tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((60_000, 256), dtype=np.float32)  # 61 MB
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(256)
    flat.add(vectors)
    path = tmp_path / "flat.index"
    faiss.write_index(flat, str(path))
    del flat
    expected = vectors[[5, 123, 59_999]]
    del vectors
    gc.collect()

    before = _rss_anon_kb()
    index = SearchIndex(path)
    scores, ids = index.search(expected, 1)
    grown_mb = (_rss_anon_kb() - before) / 1024
    assert ids[:, 0].tolist() == [5, 123, 59_999]
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)
    assert grown_mb < 20, f"loading a 61 MB flat index grew anonymous memory by {grown_mb:.0f} MB"
    assert (index.ntotal, index.dim, index.kind) == (60_000, 256, "IndexFlatIP")
    plain = load_index(path, mmap=False)
    assert plain.search(expected, 1)[1][:, 0].tolist() == [5, 123, 59_999]


@pytest.mark.parametrize("nq", [1, 7, 8, 33])
@pytest.mark.parametrize("k", [1, 5, 1200])
def test_blas_flat_search_equals_faiss_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nq: int, k: int):
    rng = np.random.default_rng(nq * 1000 + k)
    vectors = rng.standard_normal((1000, 48), dtype=np.float32)
    flat = faiss.IndexFlatIP(48)
    flat.add(vectors)
    path = tmp_path / "flat.index"
    faiss.write_index(flat, str(path))
    monkeypatch.setattr(index_module, "_CHUNK_BYTES", 48 * 4 * 300)  # 300-row chunks: 4 chunks, last one short
    queries = rng.standard_normal((nq, 48), dtype=np.float32)
    scores, ids = SearchIndex(path).search(queries, k)
    expected_scores, expected_ids = flat.search(queries, k)
    np.testing.assert_array_equal(ids, expected_ids)  # k > ntotal pads with -1 like FAISS does
    np.testing.assert_allclose(scores[ids >= 0], expected_scores[expected_ids >= 0], rtol=1e-4, atol=1e-4)


def test_faiss_gpu_without_gpu_support_is_a_clear_error(tmp_path: Path):
    if faiss_gpu_count() > 0:
        pytest.skip("this machine has FAISS GPUs")
    path = tmp_path / "tiny.index"
    faiss.write_index(faiss.IndexFlatIP(4), str(path))
    with pytest.raises(RuntimeError, match=r"--faiss_gpu needs a GPU build of FAISS.*faiss-gpu"):
        SearchIndex(path, use_gpu=True)


def test_missing_index_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="FAISS index not found"):
        load_index(tmp_path / "missing.index")


def _build_argv(corpus: Path, model: Path, index: Path, *extra: str) -> list[str]:
    return ["--corpus_path", str(corpus), "--retriever_model", str(model), "--index_path", str(index), *extra]


@pytest.mark.e2e
def test_build_index_resumes_from_saved_shards_and_finds_facts(
    tmp_path: Path, toy_corpus_files: tuple[Path, Path], toy_facts, minilm_dir: Path, minilm_e5: Encoder
):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(toy_corpus_files[0].read_bytes())
    index_path = tmp_path / "toy.index"
    argv = _build_argv(corpus, minilm_dir, index_path, "--shard_size", "128", "--keep_shards", "--device", "cpu")
    assert build_index.main(argv) == 0
    shards = sorted((tmp_path / "toy.index.shards").glob("shard_*.npy"))
    assert [s.name for s in shards] == ["shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    first = faiss.read_index(str(index_path))
    assert first.ntotal == len(corpus.read_text().splitlines())

    # Simulate an interrupted run: the middle shard is missing; the others must not be re-encoded.
    kept = {s.name: s.stat().st_mtime_ns for s in shards if s.name != "shard_00001.npy"}
    shards[1].unlink()
    index_path.unlink()
    assert build_index.main(argv) == 0
    assert {s.name: s.stat().st_mtime_ns for s in shards if s.name in kept} == kept
    assert shards[1].exists()
    again = faiss.read_index(str(index_path))
    np.testing.assert_allclose(again.reconstruct_n(0, again.ntotal), first.reconstruct_n(0, first.ntotal), atol=1e-5)

    vectors = minilm_e5.encode_queries([fact.question for fact in toy_facts])
    _, ids = again.search(vectors, 3)
    found = [fact.passage_id in {str(i) for i in row} for fact, row in zip(toy_facts, ids.tolist(), strict=True)]
    assert all(found), f"{found.count(False)} facts not in top 3"

    hnsw = build_index.build_index(shards, 384, "HNSW32", train_size=1000)
    assert type(hnsw).__name__ == "IndexHNSWFlat" and hnsw.ntotal == again.ntotal
    build_index.set_search_params(hnsw, nprobe=5, ef_search=77)
    assert faiss.deserialize_index(faiss.serialize_index(hnsw)).hnsw.efSearch == 77
    ivf = build_index.build_index(shards, 384, "IVF8,Flat", train_size=1000)
    build_index.set_search_params(ivf, nprobe=5, ef_search=77)
    assert faiss.deserialize_index(faiss.serialize_index(ivf)).nprobe == 5 and ivf.ntotal == again.ntotal
    assert (hnsw.search(vectors[:20], 3)[1] == ids[:20]).mean() > 0.9

    # The kept shards hold e5-style vectors ("passage: " prefix); another encoding must not resume from them.
    other = _build_argv(corpus, minilm_dir, index_path, "--shard_size", "128", "--device", "cpu")
    with pytest.raises(SystemExit, match=r"holds shards of another run \(different encoder\)"):
        build_index.main([*other, "--retriever_name", "minilm"])


def test_build_index_encodes_split_records_in_the_wiki18_form(tmp_path: Path, minilm_dir: Path, minilm_e5: Encoder):
    corpus = tmp_path / "split.jsonl"
    corpus.write_text('{"id": "a", "title": "Zorvath", "text": "A novel."}\n{"id": "b", "contents": "\\"T\\"\\nx"}\n')
    assert build_index.main(_build_argv(corpus, minilm_dir, tmp_path / "s.index", "--device", "cpu")) == 0
    stored = faiss.read_index(str(tmp_path / "s.index")).reconstruct_n(0, 2)
    np.testing.assert_allclose(stored, minilm_e5.encode_passages(['"Zorvath"\nA novel.', '"T"\nx']), atol=1e-5)


def test_build_index_refuses_shards_of_another_run(tmp_path: Path, toy_corpus_files, minilm_dir: Path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "meta.json").write_text('{"passages": 1, "shard_size": 5, "dim": 384}')
    argv = _build_argv(toy_corpus_files[0], minilm_dir, tmp_path / "x.index", "--work_dir", str(work))
    with pytest.raises(SystemExit, match="holds shards of another run"):
        build_index.main(argv)


@pytest.mark.parametrize(
    "flag", ["--batch_size", "--max_length", "--shard_size", "--train_size", "--nprobe", "--ef_search"]
)
def test_build_index_refuses_non_positive_numbers(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str):
    (tmp_path / "c.jsonl").write_text('{"id": "0", "contents": "\\"T\\"\\nx"}\n')
    with pytest.raises(SystemExit) as exit_info:
        build_index.main(_build_argv(tmp_path / "c.jsonl", tmp_path, tmp_path / "x.index", flag, "0"))
    assert exit_info.value.code == 2 and f"{flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_build_index_names_a_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        build_index.main(_build_argv(tmp_path / "nope.jsonl", tmp_path, tmp_path / "x.index"))
    assert (
        exit_info.value.code == 2
        and f"argument --corpus_path: {tmp_path / 'nope.jsonl'} is not a file" in capsys.readouterr().err
    )
    assert not (tmp_path / "x.index").exists()


def test_build_index_help_explains_every_flag():
    text = build_index.build_parser().format_help()
    for flag in ("--corpus_path", "--retriever_model", "--index_path", "--retriever_name", "--batch_size",
                 "--index_type", "--shard_size", "--work_dir", "--train_size", "--nprobe", "--ef_search", "--fp16",
                 "--keep_shards"):  # fmt: skip
        assert flag in text
    assert "HNSW32" in text and "IVF4096" in text and "recall" in text


BUILD_INDEX = Path(build_index.__file__)


def _shards_appear(proc: subprocess.Popen, shard: Path, timeout_s: float) -> None:
    """Wait (bounded) until ``shard``'s fingerprint is written or the build has ended."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not shard.exists():
        assert time.monotonic() < deadline, f"{shard} not written within {timeout_s}s"
        time.sleep(0.05)


@pytest.mark.e2e
def test_interrupted_build_rerun_on_a_changed_corpus_reencodes_what_changed(
    tmp_path: Path, toy_corpus_files: tuple[Path, Path], minilm_dir: Path, minilm_e5: Encoder
):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(toy_corpus_files[0].read_text().splitlines(keepends=True)[:100]))  # 4 shards
    index_path = tmp_path / "toy.index"
    argv = [sys.executable, str(BUILD_INDEX), *_build_argv(corpus, minilm_dir, index_path)]
    argv += ["--shard_size", "32", "--keep_shards", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = tmp_path / "toy.index.shards"

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _shards_appear(first, work / "shard_00001.json", timeout_s=240)
    finally:
        first.kill()  # SIGKILL mid-build (or just after it finished: the shards are kept either way)
        first.communicate(timeout=60)
    assert (work / "shard_00001.npy").exists()

    # Same line count, one passage replaced in shard 0; shard 1's fingerprint says another dtype.
    lines = corpus.read_text().splitlines()
    new_passage = '"Quxlerbine"\nQuxlerbine is a violet lighthouse that was built on the moon Ferrovia in 1321.'
    lines[5] = json.dumps({"id": "5", "contents": new_passage})
    corpus.write_text("\n".join(lines) + "\n")
    fingerprint = json.loads((work / "shard_00001.json").read_text())
    fingerprint["encoding"]["dtype"] = "float16"
    (work / "shard_00001.json").write_text(json.dumps(fingerprint))
    kept = {
        s.name: s.stat().st_mtime_ns
        for s in work.glob("shard_*.npy")
        if s.name not in {"shard_00000.npy", "shard_00001.npy"}
    }

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = [line for line in rerun.stderr.splitlines() if "re-encoding" in line]
    assert len(said) == 2, said
    assert said[0].endswith("shard 0: built from other lines (the corpus changed since) - re-encoding")
    assert said[1].endswith("shard 1: encoded with other settings (dtype 'float16' -> 'float32') - re-encoding")
    assert {name: (work / name).stat().st_mtime_ns for name in kept} == kept, "unchanged shards are reused"

    index = faiss.read_index(str(index_path))
    assert index.ntotal == len(lines)
    np.testing.assert_allclose(index.reconstruct(5), minilm_e5.encode_passages([new_passage])[0], atol=1e-5)
    _, ids = index.search(minilm_e5.encode_queries(["Which lighthouse was built on the moon Ferrovia?"]), 1)
    assert ids[0, 0] == 5
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"


def test_shard_fingerprint_names_what_differs(tmp_path: Path):
    shard = tmp_path / "shard_00000.npy"
    np.save(shard, np.zeros((2, 4), dtype=np.float32))
    encoding = {"model": "m", "encoder": {}, "max_length": 8, "dtype": "float32", "dim": 4}
    fingerprint = {"rows": [0, 2], "lines_sha256": build_index.lines_digest(["a", "b"]), "encoding": encoding}
    assert build_index.shard_mismatch(shard, fingerprint).startswith("has no fingerprint")
    shard.with_suffix(".json").write_text(json.dumps(fingerprint))
    assert build_index.shard_mismatch(shard, fingerprint) is None
    assert build_index.lines_digest(["ab", ""]) != build_index.lines_digest(["a", "b"])
    other = {**fingerprint, "lines_sha256": build_index.lines_digest(["a", "c"])}
    assert build_index.shard_mismatch(shard, other) == "built from other lines (the corpus changed since)"
    longer = {**fingerprint, "encoding": {**encoding, "max_length": 16}}
    assert build_index.shard_mismatch(shard, longer) == "encoded with other settings (max_length 8 -> 16)"
    np.save(shard, np.zeros((1, 4), dtype=np.float32))
    assert build_index.shard_mismatch(shard, fingerprint) == "holds vectors of shape (1, 4), not (2, 4)"
    shard.write_bytes(b"PK not numpy")
    assert build_index.shard_mismatch(shard, fingerprint).startswith("its vectors are unreadable")


def test_a_second_build_into_the_same_work_dir_is_refused(tmp_path: Path, toy_corpus_files, minilm_dir: Path):
    work = tmp_path / "work"
    work.mkdir()
    argv = _build_argv(toy_corpus_files[0], minilm_dir, tmp_path / "x.index", "--work_dir", str(work))
    with folder_lock(work, "held by the test"), pytest.raises(SystemExit, match=r"another build_index\.py is writing"):
        build_index.main([*argv, "--device", "cpu"])
    assert not (tmp_path / "x.index").exists()
