"""Offline structural check of a downloaded FAISS flat index: its header says how long the file must be.

So a merge that lost or repeated bytes is caught without the Hub's metadata or loading FAISS. The header is parsed
by the retriever's own reader (``retriever/flat_file.py``, standard library only), so download.py accepts exactly
the files the server can read.
"""

from __future__ import annotations

from pathlib import Path

from retriever.flat_file import flat_layout, flat_size_problem


def flat_index_problem(path: Path) -> str | None:
    """A sentence describing why ``path`` cannot be a complete flat index, or None when it is consistent (or is
    another index type: nothing to check)."""
    layout = flat_layout(path)
    return None if layout is None else flat_size_problem(path, layout)
