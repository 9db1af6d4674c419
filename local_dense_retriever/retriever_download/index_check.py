"""Offline structural check of a FAISS flat index file: its header says how long the file must be.

A flat index (IndexFlatIP ``IxFI`` / IndexFlatL2 ``IxF2``) is a 37-byte header (fourcc, d, ntotal, two
legacy int64 fields, is_trained, metric) followed by a vector of ``ntotal * d`` float32 (an int64 count,
then the data). So a merge that lost or repeated bytes is caught without the Hub's metadata or loading FAISS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_FLAT_FOURCCS = {b"IxFI", b"IxF2"}
_HEADER = struct.Struct("<4siqqq?iq")  # fourcc, d, ntotal, dummy, dummy, is_trained, metric, vector count


@dataclass(frozen=True)
class FlatIndexInfo:
    """What the header of a flat index declares."""

    dim: int
    ntotal: int
    expected_size: int


def read_flat_header(path: Path) -> FlatIndexInfo | None:
    """The header of a flat index file, or None when the file is another index type (nothing to check)."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size or head[:4] not in _FLAT_FOURCCS:
        return None
    _, dim, ntotal, _, _, _, metric, count = _HEADER.unpack(head)
    if dim <= 0 or ntotal < 0 or metric not in (0, 1) or count != dim * ntotal:
        return None
    return FlatIndexInfo(dim=dim, ntotal=ntotal, expected_size=_HEADER.size + 4 * count)


def flat_index_problem(path: Path) -> str | None:
    """A sentence describing why ``path`` cannot be a complete flat index, or None when it is consistent."""
    info = read_flat_header(path)
    if info is None:
        return None
    actual = path.stat().st_size
    if actual == info.expected_size:
        return None
    return (
        f"{path} declares {info.ntotal} vectors of dim {info.dim} ({info.expected_size} bytes) but holds {actual} bytes"
    )
