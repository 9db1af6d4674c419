"""Load a FAISS index without copying it into RAM, optionally shard it over all GPUs.

FAISS 1.15 memory-maps the code arrays of flat storage (IndexFlat*, also the storage inside HNSW and the
inverted lists of IVF) with ``IO_FLAG_MMAP_IFC``. Loading is then O(1) and the 61 GB wiki-18 index lives
in the page cache, which the kernel can reclaim, instead of in anonymous memory. Note that the older
``IO_FLAG_MMAP`` only applies to on-disk IVF lists: for a flat index it still reads everything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def faiss_gpu_count() -> int:
    """GPUs FAISS can use; 0 for CPU-only builds (faiss-cpu has no StandardGpuResources)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def load_index(index_path: str | Path, mmap: bool = True) -> faiss.Index:
    """Read an index; memory-mapped when ``mmap`` (falls back to a full read if FAISS refuses)."""
    path = Path(index_path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index not found: {path}")
    if mmap:
        try:
            return faiss.read_index(str(path), MMAP_FLAGS)
        except RuntimeError as exc:
            logger.warning("cannot memory-map %s (%s); reading it into memory", path, exc)
    return faiss.read_index(str(path))


def to_all_gpus(index: faiss.Index) -> faiss.Index:
    """Shard ``index`` over every visible GPU in fp16 (halves GPU memory; wiki-18 fits 4x80 GB easily).

    GPU indexes are not thread-safe: the caller must search from one thread only (our worker does).
    """
    gpus = faiss_gpu_count()
    if gpus == 0:
        raise RuntimeError(
            "--faiss_gpu needs a GPU build of FAISS and a visible GPU, but this FAISS "
            f"({faiss.__version__}) sees none; install faiss-gpu-cu12 instead of faiss-cpu, or drop --faiss_gpu"
        )
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    logger.info("sharding the index over %d GPU(s) in fp16", gpus)
    return faiss.index_cpu_to_all_gpus(index, co=options)


# Below this many queries a batch is memory bound (one pass over the vectors either way): FAISS is fine.
BLAS_MIN_QUERIES = 8
_CHUNK_BYTES = 32 << 20


class SearchIndex:
    """Inner-product search over a loaded index; ids of missing neighbours (-1) are dropped by the caller.

    Batches of queries against a CPU flat inner-product index are scored with numpy's BLAS over aligned
    chunks instead of ``index.search``: the faiss-cpu 1.15.1 wheel bundles an OpenBLAS that falls back to
    generic (Prescott) kernels on current Xeons, ~10x slower than numpy's, and the memory-mapped vectors
    start at file offset 45, so they are not float-aligned and numpy cannot use them in place. Each chunk
    is copied into a small aligned buffer, multiplied, and pushed through FAISS' own top-k heaps.
    """

    def __init__(self, index_path: str | Path, use_gpu: bool = False, mmap: bool = True):
        cpu_index = load_index(index_path, mmap=mmap)
        self.ntotal = int(cpu_index.ntotal)
        self.dim = int(cpu_index.d)
        self.kind = type(cpu_index).__name__
        self.index = to_all_gpus(cpu_index) if use_gpu else cpu_index
        self._vectors: np.ndarray | None = None
        flat_ip = isinstance(cpu_index, faiss.IndexFlat) and cpu_index.metric_type == faiss.METRIC_INNER_PRODUCT
        if flat_ip and not use_gpu and self.ntotal > 0:
            flat_view = faiss.rev_swig_ptr(cpu_index.get_xb(), self.ntotal * self.dim)
            self._vectors = flat_view.reshape(self.ntotal, self.dim)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(n, k)``, best first; ids are -1 where fewer than k neighbours exist."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors have shape {vectors.shape} but the index has dim {self.dim}")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._vectors is not None and len(queries) >= BLAS_MIN_QUERIES and self.ntotal > 0:
            return self._blas_flat_ip(queries, k)
        return self.index.search(queries, k)

    def _blas_flat_ip(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._vectors is not None
        nq = len(queries)
        scores = np.empty((nq, k), dtype=np.float32)
        ids = np.empty((nq, k), dtype=np.int64)
        heaps = faiss.float_minheap_array_t()  # a min-heap keeps the k largest
        heaps.k, heaps.nh = k, nq
        heaps.val, heaps.ids = faiss.swig_ptr(scores), faiss.swig_ptr(ids)
        heaps.heapify()
        rows = max(1024, _CHUNK_BYTES // (4 * self.dim))
        chunk = np.empty((rows, self.dim), dtype=np.float32)
        chunk_scores = np.empty((nq, rows), dtype=np.float32)
        for start in range(0, self.ntotal, rows):
            count = min(rows, self.ntotal - start)
            np.copyto(chunk[:count], self._vectors[start : start + count])
            block = chunk_scores if count == rows else np.empty((nq, count), dtype=np.float32)
            np.matmul(queries, chunk[:count].T, out=block)
            heaps.addn(count, faiss.swig_ptr(block), start, 0, nq)
        heaps.reorder()
        return scores, ids
