"""The torch search backend (``--backend torch``) on CPU: same answers as FAISS Flat, no copy of the vectors,
a memory plan that refuses before allocating, the CLI/wrapper flags, and the GPU benchmark's CPU mode.

No GPU is used here: the CPU path streams chunks from the memory-mapped file; ``chunked_topk`` (what each GPU
shard runs over its resident vectors) is checked directly against FAISS, and several CPU "devices" stand in
for the GPU shards to check the cross-shard merge.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from retriever.encoder import Encoder
from retriever.engine import open_index
from retriever.flat_file import open_flat_vectors, read_flat_layout
from retriever.index import SearchIndex
from retriever.torch_index import TorchFlatIndex, chunked_topk
from retriever.torch_plan import GIB, MemoryPlanError, plan_memory

PROJECT = Path(__file__).resolve().parent.parent
BENCH = ["-m", "bench.gpu_search"]  # run from PROJECT
START_SERVER = PROJECT / "local_dense_retriever" / "start_server.sh"
WIKI18 = (21_015_324, 768)  # the e5_Flat.index download


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _write_flat(path: Path, vectors: np.ndarray, metric: int = faiss.METRIC_INNER_PRODUCT) -> Path:
    index = faiss.IndexFlat(vectors.shape[1], metric)
    index.add(vectors)
    faiss.write_index(index, str(path))
    return path


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def assert_same_ranking(scores, ids, expected_scores, expected_ids, atol: float) -> None:
    """Same neighbours as FAISS ties aside: scores match position by position, and the ids match except where
    two scores are within ``atol`` (summation order may swap them, or pick another one at the k-th place)."""
    np.testing.assert_allclose(scores, expected_scores, atol=atol)
    for row, (got, want, want_scores) in enumerate(zip(ids, expected_ids, expected_scores, strict=True)):
        clear = want_scores > want_scores[-1] + atol  # strictly above the k-th score: must all be present
        assert set(want[clear]) <= set(got.tolist()), f"row {row}: {got} lacks some of {want[clear]}"
        gaps = np.abs(np.diff(want_scores))
        isolated = clear & np.concatenate([[True], gaps > atol]) & np.concatenate([gaps > atol, [True]])
        np.testing.assert_array_equal(got[isolated], want[isolated], err_msg=f"row {row}")


@pytest.fixture(scope="module")
def random_flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    vectors = _unit(np.random.default_rng(0), 5003, 48)
    return _write_flat(tmp_path_factory.mktemp("flat") / "random.index", vectors), vectors


def test_header_parse_finds_the_vectors_faiss_wrote(random_flat):
    path, vectors = random_flat
    layout = read_flat_layout(path)
    assert (layout.ntotal, layout.dim, layout.metric_type, layout.offset) == (5003, 48, 0, 45)
    mapped = open_flat_vectors(path, layout)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, vectors)


def test_loading_a_flat_index_copies_no_vectors_into_memory(tmp_path: Path):
    path = _write_flat(tmp_path / "big.index", _unit(np.random.default_rng(1), 60_000, 256))  # 61 MB
    expected_rows = [7, 31_000, 59_999]
    queries = np.ascontiguousarray(open_flat_vectors(path)[expected_rows])
    gc.collect()
    before = _rss_anon_kb()
    index = TorchFlatIndex(path, max_queries=8)
    scores, ids = index.search(queries, 1)
    grown_mb = (_rss_anon_kb() - before) / 1024
    assert ids[:, 0].tolist() == expected_rows
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-5)
    assert grown_mb < 20, f"loading and searching a 61 MB flat index grew anonymous memory by {grown_mb:.0f} MB"


@pytest.mark.parametrize(("nq", "k", "devices"), [(1, 1, 1), (37, 10, 1), (37, 10, 3), (5, 100, 2)])
def test_torch_backend_returns_faiss_flat_ids_and_scores(random_flat, nq: int, k: int, devices: int):
    """Chunks of 700 rows, batches split at 16 queries, and 1-3 CPU shards: all merged as FAISS ranks them."""
    path, vectors = random_flat
    queries = _unit(np.random.default_rng(nq), nq, vectors.shape[1])
    expected_scores, expected_ids = faiss.read_index(str(path)).search(queries, k)
    index = TorchFlatIndex(path, chunk_rows=700, max_queries=16, devices=["cpu"] * devices)
    assert len(index.shards) == devices
    scores, ids = index.search(queries, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (nq, k)
    assert_same_ranking(scores, ids, expected_scores, expected_ids, atol=1e-5)


def test_resident_chunked_topk_equals_faiss(random_flat):
    """The GPU shards' search function, run on CPU tensors, with a row offset as a second shard has."""
    _, vectors = random_flat
    queries = _unit(np.random.default_rng(5), 9, vectors.shape[1])
    shard = faiss.IndexFlatIP(vectors.shape[1])
    shard.add(vectors[1000:])
    expected_scores, expected_ids = shard.search(queries, 10)
    scores, ids = chunked_topk(torch.from_numpy(queries), torch.from_numpy(vectors[1000:]), 10, 333, row_offset=1000)
    assert_same_ranking(scores.numpy(), ids.numpy(), expected_scores, expected_ids + 1000, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_finds_the_planted_neighbour_within_tolerance(random_flat, dtype: str):
    path, vectors = random_flat
    rng = np.random.default_rng(3)
    rows = rng.choice(len(vectors), 20, replace=False)
    queries = vectors[rows] + 0.05 * _unit(rng, 20, vectors.shape[1])
    expected_scores, _ = faiss.read_index(str(path)).search(queries, 5)
    scores, ids = TorchFlatIndex(path, dtype=dtype, chunk_rows=1000).search(queries, 5)
    assert ids[:, 0].tolist() == rows.tolist()
    np.testing.assert_allclose(scores, expected_scores, atol=3e-2)  # bf16 keeps 8 significant bits


def test_fewer_vectors_than_k_pads_with_minus_one(tmp_path: Path):
    path = _write_flat(tmp_path / "tiny.index", _unit(np.random.default_rng(2), 3, 8))
    scores, ids = TorchFlatIndex(path).search(_unit(np.random.default_rng(4), 2, 8), 5)
    assert (ids[:, 3:] == -1).all() and sorted(ids[0, :3].tolist()) == [0, 1, 2]
    assert np.isfinite(scores[:, :3]).all()


@pytest.mark.e2e
def test_toy_corpus_ranks_like_faiss(toy_index, minilm_dir: Path, toy_facts):
    index_path, _ = toy_index
    queries = Encoder(str(minilm_dir), "e5", device="cpu").encode_queries([f.question for f in toy_facts])
    expected_scores, expected_ids = SearchIndex(index_path).search(queries, 5)
    torch_index = open_index(index_path, backend="torch")
    scores, ids = torch_index.search(queries, 5)
    assert_same_ranking(scores, ids, expected_scores, expected_ids, atol=1e-5)
    assert torch_index.ntotal == SearchIndex(index_path).ntotal and "torch float32 on cpu" in torch_index.kind


def test_non_inner_product_and_non_flat_indexes_are_refused(tmp_path: Path):
    vectors = _unit(np.random.default_rng(6), 100, 16)
    l2 = _write_flat(tmp_path / "l2.index", vectors, faiss.METRIC_L2)
    with pytest.raises(ValueError, match=r"metric 1 \(1 = L2\).*use --backend faiss"):
        TorchFlatIndex(l2)
    hnsw = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    faiss.write_index(hnsw, str(tmp_path / "hnsw.index"))
    with pytest.raises(ValueError, match=r"not a flat one.*--backend faiss for HNSW"):
        TorchFlatIndex(tmp_path / "hnsw.index")
    flat = _write_flat(tmp_path / "cut.index", vectors)
    flat.write_bytes(flat.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        TorchFlatIndex(flat)
    with pytest.raises(ValueError, match="--faiss_gpu shards a FAISS index"):
        open_index(flat, backend="torch", faiss_gpu=True)


def test_memory_plan_for_wiki18_on_four_gpus_fits_and_names_each_share():
    plan = plan_memory(*WIKI18, [f"cuda:{i}" for i in range(4)], [70 * GIB] * 4, "float16", 1 << 18, 512)
    plan.check()
    assert [part.stop - part.start for part in plan.devices] == [5_253_831] * 4
    assert all(7.4 * GIB < part.resident_bytes < 7.6 * GIB for part in plan.devices)
    text = "\n".join(plan.describe())
    assert "21,015,324 x 768 vectors in float16 over 4 device(s)" in text
    assert text.count(": fits") == 4 and "cuda:3: rows 15,761,493..21,015,324 resident 7.52 GiB" in text


def test_memory_plan_refuses_before_allocating_when_a_gpu_is_too_small():
    one_gpu = plan_memory(*WIKI18, ["cuda:0"], [80 * GIB], "float16", 1 << 18, 512)
    assert one_gpu.devices[0].fits  # 30 GiB of fp16 fits one 80 GB GPU, unlike 61 GB of fp32
    capped = plan_memory(*WIKI18, ["cuda:0", "cuda:1"], [80 * GIB] * 2, "float16", 1 << 18, 512, limit_bytes=12 * GIB)
    assert "DOES NOT FIT" in "\n".join(capped.describe())
    with pytest.raises(MemoryPlanError, match=r"cuda:0 needs 1[56]\.\d\d GiB .*only 12.00 GiB.*at least 3 GPUs"):
        capped.check()
    roomy = plan_memory(*WIKI18, ["cuda:0"], [40 * GIB], "float16", 1 << 22, 4096)  # 64 GiB of scores
    with pytest.raises(MemoryPlanError, match="lower --torch_chunk_rows"):
        roomy.check()


def test_torch_index_checks_the_plan_before_loading(random_flat, caplog: pytest.LogCaptureFixture):
    path, _ = random_flat
    with caplog.at_level(logging.INFO), pytest.raises(MemoryPlanError, match="Nothing was allocated"):
        TorchFlatIndex(path, devices=["cpu"], free_bytes=[1 << 20], max_queries=1024, chunk_rows=4096)
    assert "torch backend memory plan: 5,003 x 48 vectors in float32" in caplog.text
    with pytest.raises(MemoryPlanError):
        TorchFlatIndex(path, memory_gb=0.001, max_queries=1024, chunk_rows=4096)


def _fake_python(tmp_path: Path) -> Path:
    """A RETRIEVER_PYTHON that prints the server command line it was given and exits."""
    script = tmp_path / "python"
    script.write_text('#!/usr/bin/env bash\necho "ARGS: $*"\n')
    script.chmod(0o755)
    return script


def _start_server_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """start_server.sh's environment with placeholder data files and the printing python, plus ``settings``."""
    (tmp_path / "e5.index").touch()
    (tmp_path / "c.jsonl").touch()
    inherited = {k: v for k, v in os.environ.items() if k not in {"FAISS_GPU", "FP16", "LOG_FILE", "RETRIEVER_ARGS"}}
    return {
        **inherited,
        "INDEX_PATH": str(tmp_path / "e5.index"),
        "CORPUS_PATH": str(tmp_path / "c.jsonl"),
        "RETRIEVER_PYTHON": str(_fake_python(tmp_path)),
        "RETRIEVER_MODEL": "m",
        **settings,
    }


@pytest.mark.parametrize(("backend", "expect"), [("torch", "--backend torch"), ("", None), ("cuvs", "must be")])
def test_start_server_passes_retriever_backend(tmp_path: Path, backend: str, expect: str | None):
    env = _start_server_env(tmp_path, RETRIEVER_BACKEND=backend)
    done = subprocess.run(["bash", str(START_SERVER)], env=env, capture_output=True, text=True, timeout=30)
    if expect == "must be":
        assert done.returncode == 1 and "RETRIEVER_BACKEND must be faiss or torch (got 'cuvs')" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    args = next(line for line in done.stdout.splitlines() if line.startswith("ARGS:"))
    assert (expect in args) if expect else "--backend" not in args
    help_text = subprocess.run(["bash", str(START_SERVER), "--help"], capture_output=True, text=True).stdout
    assert "RETRIEVER_BACKEND" in help_text


def test_start_server_passes_retriever_args_before_the_ones_after_dashes(tmp_path: Path):
    """The training wrapper cannot put flags after ``--``: RETRIEVER_ARGS carries them."""
    env = _start_server_env(tmp_path, RETRIEVER_ARGS="--backend torch  --torch_memory_gb 10")
    done = subprocess.run(
        ["bash", str(START_SERVER), "--", "--torch_memory_gb", "12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    args = next(line for line in done.stdout.splitlines() if line.startswith("ARGS:"))
    assert args.endswith("--backend torch --torch_memory_gb 10 --torch_memory_gb 12")  # the later flag wins


@pytest.mark.e2e
def test_gpu_bench_runs_on_cpu_and_reports_both_floors():
    done = subprocess.run(
        [sys.executable, *BENCH, "--device", "cpu", "--n", "3000", "--dim", "64", "--batches", "1,8",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("floors: copy bandwidth") and "float32 matmul" in line for line in lines)
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [int(row[0]) for row in rows] == [1, 8]
    assert all(row[5].strip().endswith("%") and row[6].strip().endswith("%") for row in rows)
    refused = subprocess.run([sys.executable, *BENCH, "--batches", "0"], capture_output=True, text=True, cwd=PROJECT)
    assert refused.returncode == 2 and "batch sizes must be >= 1" in refused.stderr
