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


class SearchIndex:
    """Inner-product search over a loaded index; ids of missing neighbours (-1) are dropped."""

    def __init__(self, index_path: str | Path, use_gpu: bool = False, mmap: bool = True):
        cpu_index = load_index(index_path, mmap=mmap)
        self.ntotal = int(cpu_index.ntotal)
        self.dim = int(cpu_index.d)
        self.kind = type(cpu_index).__name__
        self.index = to_all_gpus(cpu_index) if use_gpu else cpu_index

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(n, k)``; ids are -1 where fewer than k neighbours exist."""
        if vectors.shape[1] != self.dim:
            raise ValueError(f"query vectors have dim {vectors.shape[1]} but the index has dim {self.dim}")
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
