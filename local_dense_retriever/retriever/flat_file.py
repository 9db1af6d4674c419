"""The FAISS index file header, parsed in one place, and the vectors of an IndexFlat file as a read-only memmap.

Who reads it: the torch backend (the raw float32 block of a flat index, never all of it in anonymous memory: the
wiki-18 file is 61 GB), ``start_server.sh --check`` (the row count of any index, against the corpus) and
download.py (a merged index whose size disagrees with its header lost or repeated bytes). Every FAISS index file
starts with fourcc (4 B), d (int32), ntotal (int64); ``faiss.write_index`` continues a flat index with

    two int64 placeholders | is_trained (1 B) | metric_type (int32)
    [metric_arg (float32), only when metric_type > 1]
    number of floats (int64) = ntotal * d | ntotal * d float32 values, row-major

(fourcc IxFI inner product, IxF2 L2, IxFl other metrics), so the vectors start at byte 45 for the E5 index.
Mapping that range with ``numpy.memmap`` costs page cache only (the kernel can drop it), which
tests/test_retriever_torch_backend.py checks by watching RssAnon. Only the standard library is imported here (numpy
when vectors are opened), so the downloader can use the parser without the retriever's heavier dependencies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# faiss MetricType values (faiss/MetricType.h).
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
_FLAT_FOURCCS = {b"IxFI", b"IxF2", b"IxFl"}
_PREFIX = struct.Struct("<4siq")  # fourcc, d, ntotal: every index type
_FLAT = struct.Struct("<4siqqq?i")  # the prefix, 2 placeholders, is_trained, metric_type
_COUNT = struct.Struct("<q")
_METRIC_ARG_BYTES = 4
_HEAD_BYTES = _FLAT.size + _METRIC_ARG_BYTES + _COUNT.size


@dataclass(frozen=True)
class IndexHeader:
    """What every FAISS index file declares first, whatever its type."""

    fourcc: bytes
    dim: int
    ntotal: int


@dataclass(frozen=True)
class FlatFileLayout:
    """Where the vector block of a flat index file lies."""

    dim: int
    ntotal: int
    metric_type: int
    offset: int  # byte offset of the first float32
    count: int  # the float count stored before the vectors; ntotal * dim in a sound file

    @property
    def expected_size(self) -> int:
        """The file size the header implies."""
        return self.offset + 4 * self.ntotal * self.dim


def read_index_header(path: str | Path) -> IndexHeader:
    """The fourcc, d and ntotal of any FAISS index file; ``ValueError`` when the file cannot be one."""
    with Path(path).open("rb") as handle:
        head = handle.read(_PREFIX.size)
    if len(head) < _PREFIX.size:
        raise ValueError(f"{path} is too short ({len(head)} bytes) to be a FAISS index")
    fourcc, dim, ntotal = _PREFIX.unpack(head)
    if not (fourcc.isascii() and fourcc.isalnum()) or dim <= 0 or ntotal < 0:
        raise ValueError(f"{path} is not a FAISS index (it starts with {fourcc!r}): download or build it again")
    return IndexHeader(fourcc=fourcc, dim=dim, ntotal=ntotal)


def parse_flat_header(head: bytes) -> FlatFileLayout | None:
    """The layout declared by the first bytes of a file, or None when they are not a flat index's header."""
    if len(head) < _FLAT.size + _COUNT.size:
        return None
    fourcc, dim, ntotal, _, _, _, metric_type = _FLAT.unpack_from(head)
    if fourcc not in _FLAT_FOURCCS:
        return None
    offset = _FLAT.size + (_METRIC_ARG_BYTES if metric_type > 1 else 0)
    if len(head) < offset + _COUNT.size:
        return None
    (count,) = _COUNT.unpack_from(head, offset)
    return FlatFileLayout(dim=dim, ntotal=ntotal, metric_type=metric_type, offset=offset + _COUNT.size, count=count)


def flat_layout(path: str | Path) -> FlatFileLayout | None:
    """The layout of ``path``'s header, or None when the file is not a flat index (another type, or too short)."""
    with Path(path).open("rb") as handle:
        return parse_flat_header(handle.read(_HEAD_BYTES))


def flat_size_problem(path: str | Path, layout: FlatFileLayout) -> str | None:
    """A sentence saying why ``path`` cannot be the complete file ``layout`` describes, or None when it can."""
    if layout.dim <= 0 or layout.ntotal < 0 or layout.count != layout.ntotal * layout.dim:
        return f"{path} has an inconsistent flat index header (d={layout.dim}, ntotal={layout.ntotal}, {layout.count} floats)"
    size = Path(path).stat().st_size
    if size == layout.expected_size:
        return None
    return (
        f"{path} declares {layout.ntotal} vectors of dim {layout.dim} ({layout.expected_size} bytes) but holds "
        f"{size} bytes"
    )


def read_flat_layout(path: str | Path) -> FlatFileLayout:
    """Parse the header of ``path``; raise ``ValueError`` naming the fix when it is not a sound flat index file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index not found: {path}")
    layout = flat_layout(path)
    if layout is None:
        fourcc = read_index_header(path).fourcc
        raise ValueError(
            f"{path} is a FAISS {fourcc.decode('latin-1')!r} index, not a flat one (IxFI/IxF2): --backend torch "
            "does exact search over flat indexes only; use --backend faiss for HNSW/IVF/PQ indexes"
        )
    problem = flat_size_problem(path, layout)
    if problem:
        raise ValueError(f"{problem}: truncated or corrupt, download or build it again")
    return layout


def open_flat_vectors(path: str | Path, layout: FlatFileLayout | None = None) -> np.ndarray:
    """The ``(ntotal, d)`` float32 vectors of ``path``, memory-mapped read-only (no bytes read yet).

    The mapping is not 4-byte aligned (offset 45), which numpy allows; readers copy a chunk into an aligned
    buffer before handing it to BLAS or to the GPU, exactly as index.py's CPU path does.
    """
    import numpy as np

    layout = layout or read_flat_layout(path)
    if layout.ntotal == 0:
        return np.empty((0, layout.dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", offset=layout.offset, shape=(layout.ntotal, layout.dim))
