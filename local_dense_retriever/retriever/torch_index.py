"""Exact inner-product search in torch (``--backend torch``): chunked matmul + running top-k, sharded over GPUs.

Why: FAISS's GPU flat index is loaded by copying every fp32 vector to the GPU before converting (61 GB for
wiki-18: an OOM on one 80 GB GPU next to anything else), and its fp16 search does not use tensor cores. Exact
search is one matrix product plus a top-k, which torch runs at tensor-core speed in fp16/bf16.

How: the vectors are read from the FAISS IndexFlatIP file through a ``numpy.memmap`` (flat_file.py; no fp32 copy
in RAM), streamed in fp32 chunks of ``GPU_LOAD_CHUNK_ROWS`` to each GPU and cast there into that GPU's resident
shard (no fp32 copy on the GPU either). A search multiplies the queries with ``chunk_rows`` rows at a time, keeps
a running top-k per shard, and merges the shards' top-k at the end. Kernel launches are asynchronous, so the
shards on different GPUs work at the same time. On CPU the same loop reads each chunk from the memory map into an
aligned float32 buffer instead (nothing resident), which is what the tests exercise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .flat_file import METRIC_INNER_PRODUCT, open_flat_vectors, read_flat_layout
from .torch_plan import ENCODER_RESERVE_BYTES, GIB, GPU_LOAD_CHUNK_ROWS, default_chunk_rows, plan_memory

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def visible_devices() -> list[str]:
    """Every visible CUDA device (CUDA_VISIBLE_DEVICES chooses them), else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def free_memory(device: str) -> int:
    """Bytes free on ``device`` now: cudaMemGetInfo for a GPU, MemAvailable of /proc/meminfo for the CPU."""
    if device != "cpu":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def resolve_dtype(name: str, devices: list[str]) -> str:
    """``auto`` is float16 on GPUs (FAISS's choice, 3 more mantissa bits than bf16 for unit vectors), float32 on CPU."""
    if name == "auto":
        return "float32" if all(device == "cpu" for device in devices) else "float16"
    if name not in TORCH_DTYPES:
        raise ValueError(f"--torch_dtype must be auto, float16, bfloat16 or float32, got {name!r}")
    return name


def merge_topk(
    scores: torch.Tensor | None, ids: torch.Tensor | None, new_scores: torch.Tensor, new_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of two ``(scores, ids)`` candidate sets per row (the running top-k step)."""
    if scores is None or ids is None:
        return new_scores, new_ids
    both_scores = torch.cat([scores, new_scores], dim=1)
    both_ids = torch.cat([ids, new_ids], dim=1)
    best, where = torch.topk(both_scores, min(k, both_scores.shape[1]), dim=1)
    return best, torch.gather(both_ids, 1, where)


@dataclass
class Shard:
    """Rows ``[start, stop)`` on ``device``: resident in ``vectors`` on a GPU, read per chunk on the CPU."""

    device: torch.device
    start: int
    stop: int
    vectors: torch.Tensor | None = None


class TorchFlatIndex:
    """Drop-in for SearchIndex (``ntotal``, ``dim``, ``kind``, ``search``) over a FAISS IndexFlatIP file."""

    def __init__(
        self,
        index_path: str | Path,
        dtype: str = "auto",
        memory_gb: float | None = None,
        chunk_rows: int = 0,
        max_queries: int = 1024,
        devices: list[str] | None = None,
        free_bytes: list[int] | None = None,
    ):
        layout = read_flat_layout(index_path)
        if layout.metric_type != METRIC_INNER_PRODUCT:
            raise ValueError(
                f"{index_path} uses FAISS metric {layout.metric_type} (1 = L2), but --backend torch ranks by inner "
                "product like the E5 IndexFlatIP: use --backend faiss for this index, or rebuild it with "
                "build_index.py (inner product)"
            )
        self.ntotal, self.dim = layout.ntotal, layout.dim
        self._vectors = open_flat_vectors(index_path, layout)
        device_names = devices or visible_devices()
        self.dtype_name = resolve_dtype(dtype, device_names)
        self.dtype = TORCH_DTYPES[self.dtype_name]
        self.chunk_rows = chunk_rows or default_chunk_rows(device_names[0], self.dim)
        self.max_queries = max_queries
        self.kind = f"IndexFlatIP (torch {self.dtype_name} on {', '.join(device_names)})"
        self.plan = plan_memory(
            self.ntotal,
            self.dim,
            device_names,
            free_bytes if free_bytes is not None else [free_memory(d) for d in device_names],
            self.dtype_name,
            self.chunk_rows,
            max_queries,
            limit_bytes=None if memory_gb is None else int(memory_gb * GIB),
            reserve_bytes=ENCODER_RESERVE_BYTES if device_names[0].startswith("cuda") else 0,
        )
        for line in self.plan.describe():
            logger.info("%s", line)
        self.plan.check()
        self.shards = [self._load_shard(part.device, part.start, part.stop) for part in self.plan.devices]

    def _load_shard(self, name: str, start: int, stop: int) -> Shard:
        device = torch.device(name)
        if device.type == "cpu":
            return Shard(device, start, stop)
        resident = torch.empty((stop - start, self.dim), dtype=self.dtype, device=device)
        rows = min(GPU_LOAD_CHUNK_ROWS, max(1, stop - start))
        host = torch.empty((rows, self.dim), dtype=torch.float32, pin_memory=True)
        staging = torch.empty((rows, self.dim), dtype=torch.float32, device=device)
        host_view = host.numpy()
        for begin in range(start, stop, rows):
            count = min(rows, stop - begin)
            np.copyto(host_view[:count], self._vectors[begin : begin + count])
            staging[:count].copy_(host[:count])  # synchronous: the pinned buffer is refilled next
            resident[begin - start : begin - start + count].copy_(staging[:count])  # cast on the GPU
        del staging
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        logger.info(
            "%s: loaded rows %d..%d (%.2f GiB)", name, start, stop, resident.numel() * resident.element_size() / GIB
        )
        return Shard(device, start, stop, resident)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(n, k)``, best first, float32/int64; ids -1 where fewer than k exist."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {vectors.shape} but the index has dim {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if self.ntotal == 0:
            return scores, ids
        # Batches above the planned size are split, so the workspace stays what the plan checked.
        for begin in range(0, len(queries), self.max_queries):
            part = slice(begin, begin + self.max_queries)
            best_scores, best_ids = self._search_batch(queries[part], k)
            found = best_scores.shape[1]
            scores[part, :found] = best_scores.float().numpy()
            ids[part, :found] = best_ids.numpy()
        return scores, ids

    @torch.inference_mode()
    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        host_queries = torch.from_numpy(queries)
        # Launch every shard before reading any result back: the GPUs then run concurrently.
        partial = [self._search_shard(shard, host_queries, k) for shard in self.shards]
        best_scores: torch.Tensor | None = None
        best_ids: torch.Tensor | None = None
        for shard_scores, shard_ids in partial:
            best_scores, best_ids = merge_topk(best_scores, best_ids, shard_scores.float().cpu(), shard_ids.cpu(), k)
        assert best_scores is not None and best_ids is not None
        return best_scores, best_ids

    def _search_shard(self, shard: Shard, host_queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = host_queries.to(shard.device, dtype=self.dtype, non_blocking=True)
        if shard.vectors is not None:
            return chunked_topk(queries, shard.vectors, k, self.chunk_rows, row_offset=shard.start)
        return self._stream_topk(queries, shard, k)

    def _stream_topk(self, queries: torch.Tensor, shard: Shard, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPU form of chunked_topk: each chunk is copied from the memory map into one aligned buffer."""
        buffer = np.empty((min(self.chunk_rows, shard.stop - shard.start), self.dim), dtype=np.float32)
        best_scores: torch.Tensor | None = None
        best_ids: torch.Tensor | None = None
        for begin in range(shard.start, shard.stop, self.chunk_rows):
            count = min(self.chunk_rows, shard.stop - begin)
            np.copyto(buffer[:count], self._vectors[begin : begin + count])
            block = torch.from_numpy(buffer[:count]).to(self.dtype)
            best_scores, best_ids = _topk_step(queries, block, begin, k, best_scores, best_ids)
        assert best_scores is not None and best_ids is not None
        return best_scores, best_ids


def _topk_step(
    queries: torch.Tensor,
    block: torch.Tensor,
    first_row: int,
    k: int,
    best_scores: torch.Tensor | None,
    best_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score one block of rows and fold its top-k into the running top-k."""
    chunk_scores = queries @ block.T
    top_scores, top_rows = torch.topk(chunk_scores, min(k, block.shape[0]), dim=1)
    return merge_topk(best_scores, best_ids, top_scores, top_rows + first_row, k)


def chunked_topk(
    queries: torch.Tensor, vectors: torch.Tensor, k: int, chunk_rows: int, row_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` ``(scores, ids)`` of ``queries @ vectors.T``, ``chunk_rows`` rows at a time (bounded workspace).

    Ids are row numbers plus ``row_offset`` (the shard's first row). Used by the GPU shards and by
    bench/gpu_search.py, so the benchmark measures the code that serves.
    """
    best_scores: torch.Tensor | None = None
    best_ids: torch.Tensor | None = None
    for begin in range(0, vectors.shape[0], chunk_rows):
        block = vectors[begin : begin + chunk_rows]
        best_scores, best_ids = _topk_step(queries, block, begin + row_offset, k, best_scores, best_ids)
    if best_scores is None or best_ids is None:
        raise ValueError("chunked_topk needs at least one vector")
    return best_scores, best_ids
