"""Random access to a jsonl corpus without loading it: a line-offsets sidecar plus a memory map.

wiki-18 is 21M lines / 14 GB. Reading it into Python objects costs minutes and tens of GB; instead the
start offset of every line is computed once (one streaming pass, progress bar) and saved as a uint64
``.npy`` next to the corpus (or in a cache dir). Later starts memory-map both files and slice a line only
when a search returns it. The sidecar is rebuilt when the corpus size or mtime changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 << 20
_SIDECAR_VERSION = 1


def split_contents(contents: str) -> tuple[str, str]:
    """Split wiki-18 ``"Title"\\ntext`` into ``(title, text)``, quotes stripped from the title."""
    title, sep, text = contents.partition("\n")
    if not sep:
        return "", contents
    return title.strip().strip('"'), text


def make_doc(record: dict[str, Any], row: int) -> dict[str, Any]:
    """Normalise one corpus record to the API's ``{id, contents, title, text}``.

    Corpora that already carry ``title``/``text`` keep them; wiki-18 only has ``contents``.
    """
    contents = record.get("contents")
    if contents is None:
        title, text = str(record.get("title", "")), str(record.get("text", ""))
        contents = f'"{title}"\n{text}' if title else text
    else:
        contents = str(contents)
        title, text = split_contents(contents)
        title, text = str(record.get("title", title)), str(record.get("text", text))
    doc_id = record.get("id", row)
    return {"id": str(doc_id), "contents": contents, "title": title, "text": text}


def _sidecar_paths(corpus_path: Path, cache_dir: Path | None) -> tuple[Path, Path]:
    if cache_dir is None:
        base = corpus_path.with_name(corpus_path.name + ".offsets")
    else:
        # One cache dir can serve several corpora: key the file by the corpus' absolute path.
        digest = hashlib.sha1(str(corpus_path.resolve()).encode()).hexdigest()[:16]
        base = cache_dir / f"{corpus_path.name}.{digest}.offsets"
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def _fingerprint(corpus_path: Path) -> dict[str, int]:
    stat = corpus_path.stat()
    return {"version": _SIDECAR_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def compute_line_offsets(corpus_path: Path, show_progress: bool = True) -> np.ndarray:
    """Return uint64 offsets of length ``lines + 1``: line i is ``[off[i], off[i+1])`` (newline excluded).

    One sequential pass in large chunks; numpy finds the newlines, so the pass runs at disk speed.
    """
    size = corpus_path.stat().st_size
    pieces: list[np.ndarray] = [np.zeros(1, dtype=np.uint64)]
    with (
        corpus_path.open("rb") as handle,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"indexing lines of {corpus_path.name}",
            disable=not show_progress,
        ) as bar,
    ):
        base = 0
        while chunk := handle.read(_CHUNK_BYTES):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 0x0A).astype(np.uint64)
            pieces.append(newlines + np.uint64(base + 1))
            base += len(chunk)
            bar.update(len(chunk))
    starts = np.concatenate(pieces)
    if size and starts[-1] != size:
        # The last line has no trailing newline: close it at EOF.
        starts = np.append(starts, np.uint64(size + 1))
    # starts[i] is where line i begins; its end (without the newline) is starts[i+1] - 1.
    return starts


def record_count(offsets: np.ndarray) -> int:
    """Records in a corpus with these line offsets: a trailing empty line (file ends in "\\n\\n") is not one."""
    count = len(offsets) - 1
    while count and offsets[count] - offsets[count - 1] <= 1:
        count -= 1
    return count


def _candidates(cache_dir: Path | None) -> list[Path | None]:
    if cache_dir is not None:
        return [cache_dir]
    try:
        return [None, Path.home() / ".cache" / "search_r1_retriever"]
    except (RuntimeError, KeyError):  # no home directory
        return [None]


def fresh_offsets(corpus_path: Path, cache_dir: Path | None = None) -> np.ndarray | None:
    """The memory-mapped sidecar when one matches the corpus' size and mtime, else None (reads no corpus byte)."""
    fingerprint = _fingerprint(corpus_path)
    for directory in _candidates(cache_dir):
        npy, meta = _sidecar_paths(corpus_path, directory)
        try:
            if npy.exists() and meta.exists() and json.loads(meta.read_text()) == fingerprint:
                return np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            pass
    return None


def load_or_build_offsets(corpus_path: Path, cache_dir: Path | None = None, show_progress: bool = True) -> np.ndarray:
    """Memory-map the offsets sidecar, building (or rebuilding when stale) it first if needed.

    Falls back to ``cache_dir`` (or ``~/.cache/search_r1_retriever``) when the corpus folder is read-only.
    """
    fingerprint = _fingerprint(corpus_path)
    candidates = _candidates(cache_dir)
    for directory in candidates:
        npy, meta = _sidecar_paths(corpus_path, directory)
        if npy.exists() and meta.exists():
            try:
                if json.loads(meta.read_text()) == fingerprint:
                    logger.info("reusing line offsets %s", npy)
                    return np.load(npy, mmap_mode="r")
            except (OSError, ValueError):
                pass
            logger.info("line offsets %s are stale; rebuilding", npy)

    offsets = compute_line_offsets(corpus_path, show_progress)
    last_error: OSError | None = None
    for directory in candidates:
        npy, meta = _sidecar_paths(corpus_path, directory)
        try:
            npy.parent.mkdir(parents=True, exist_ok=True)
            tmp = npy.with_name(npy.name + f".tmp{os.getpid()}")
            with tmp.open("wb") as handle:
                np.save(handle, offsets)
            os.replace(tmp, npy)
            meta.write_text(json.dumps(fingerprint))
            logger.info("saved line offsets for %d lines to %s", len(offsets) - 1, npy)
            return np.load(npy, mmap_mode="r")
        except OSError as exc:
            last_error = exc
            logger.warning("cannot write line offsets to %s: %s", npy, exc)
    logger.warning("keeping line offsets in memory only (%s)", last_error)
    return offsets


class Corpus:
    """Read-only, memory-mapped jsonl corpus; row ``i`` is line ``i`` (the FAISS id)."""

    def __init__(self, corpus_path: str | Path, cache_dir: str | Path | None = None, show_progress: bool = True):
        self.path = Path(corpus_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"corpus not found: {self.path}")
        self._offsets = load_or_build_offsets(self.path, Path(cache_dir) if cache_dir else None, show_progress)
        self._file = self.path.open("rb")
        size = self.path.stat().st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._len = record_count(self._offsets)

    def __len__(self) -> int:
        return self._len

    def raw(self, row: int) -> bytes:
        """The bytes of line ``row`` without its newline."""
        if not 0 <= row < self._len:
            raise IndexError(f"corpus row {row} out of range 0..{self._len - 1}")
        start, end = int(self._offsets[row]), int(self._offsets[row + 1]) - 1
        return self._map[start:end]

    def record(self, row: int) -> dict[str, Any]:
        """Line ``row`` parsed as JSON."""
        return json.loads(self.raw(row))

    def doc(self, row: int) -> dict[str, Any]:
        """Line ``row`` as an API document ``{id, contents, title, text}``."""
        return make_doc(self.record(row), row)

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._file.close()
