"""Read the vectors of a FAISS IndexFlat file as a read-only ``numpy.memmap``, without FAISS and without a copy.

The torch backend needs the raw float32 block of the index, never all of it in anonymous memory: the wiki-18
file is 61 GB. ``faiss.write_index`` stores a flat index as

    fourcc (4 B: IxFI inner product, IxF2 L2, IxFl other metrics)
    d (int32) | ntotal (int64) | two int64 placeholders | is_trained (1 B) | metric_type (int32)
    [metric_arg (float32), only when metric_type > 1]
    number of floats (int64) = ntotal * d | ntotal * d float32 values, row-major

so the vectors start at byte 45 for the E5 index. Mapping that range with ``numpy.memmap`` costs page cache only
(the kernel can drop it), which tests/test_retriever_torch_backend.py checks by watching RssAnon. The header is
checked against the file size, so a truncated download or another index type stops with a message here
instead of returning garbage rows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# faiss MetricType values (faiss/MetricType.h).
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_FLAT_FOURCCS = {b"IxFI", b"IxF2", b"IxFl"}
_HEADER = struct.Struct("<4siqqq?i")  # fourcc, d, ntotal, 2 placeholders, is_trained, metric_type


@dataclass(frozen=True)
class FlatFileLayout:
    """Where the vector block of a flat index file lies."""

    dim: int
    ntotal: int
    metric_type: int
    offset: int  # byte offset of the first float32


def read_flat_layout(path: str | Path) -> FlatFileLayout:
    """Parse the header of ``path``; raise ``ValueError`` naming the fix when it is not a flat index file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index not found: {path}")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_HEADER.size + 4 + 8)
    if len(head) < _HEADER.size + 8:
        raise ValueError(f"{path} is too short ({size} bytes) to be a FAISS index")
    fourcc, dim, ntotal, _, _, _, metric_type = _HEADER.unpack_from(head)
    if fourcc not in _FLAT_FOURCCS:
        raise ValueError(
            f"{path} is a FAISS {fourcc.decode('latin-1')!r} index, not a flat one (IxFI/IxF2): --backend torch "
            "does exact search over flat indexes only; use --backend faiss for HNSW/IVF/PQ indexes"
        )
    offset = _HEADER.size + (4 if metric_type > 1 else 0)
    (count,) = struct.unpack_from("<q", head, offset)
    offset += 8
    expected = offset + 4 * ntotal * dim
    if count != ntotal * dim or size != expected:
        raise ValueError(
            f"{path}: the header says {ntotal} x {dim} float32 vectors ({expected} bytes) but the file has {size} "
            "bytes: truncated or corrupt, download or build it again"
        )
    return FlatFileLayout(dim=dim, ntotal=ntotal, metric_type=metric_type, offset=offset)


def open_flat_vectors(path: str | Path, layout: FlatFileLayout | None = None) -> np.ndarray:
    """The ``(ntotal, d)`` float32 vectors of ``path``, memory-mapped read-only (no bytes read yet).

    The mapping is not 4-byte aligned (offset 45), which numpy allows; readers copy a chunk into an aligned
    buffer before handing it to BLAS or to the GPU, exactly as index.py's CPU path does.
    """
    layout = layout or read_flat_layout(path)
    if layout.ntotal == 0:
        return np.empty((0, layout.dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", offset=layout.offset, shape=(layout.ntotal, layout.dim))
