"""Encoder + index + corpus: queries in, ranked documents out. Owned by one worker thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .corpus import Corpus
from .encoder import Encoder
from .index import SearchIndex
from .settings import Settings

BACKENDS = ("faiss", "torch")

logger = logging.getLogger(__name__)

Hit = tuple[dict[str, Any], float]

# With ``still_wanted``, queries are encoded in pieces of about this many characters (each query counted up to the
# characters its token limit keeps), asking between pieces which are still wanted: 128 long queries are 4 pieces,
# while a batch of short queries stays one piece.
CHECK_EVERY_CHARS = 32768


class VectorIndex(Protocol):
    """What the engine needs of an index: SearchIndex (FAISS) and TorchFlatIndex (torch) both provide it."""

    ntotal: int
    dim: int
    kind: str

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def open_index(
    index_path: str | Path,
    backend: str = "faiss",
    faiss_gpu: bool = False,
    mmap: bool = True,
    torch_dtype: str = "auto",
    torch_memory_gb: float | None = None,
    torch_chunk_rows: int = 0,
    max_queries: int = 1024,
) -> VectorIndex:
    """The index of ``backend``; torch is imported only for it, and refuses --faiss_gpu (a FAISS-only flag)."""
    if backend == "faiss":
        return SearchIndex(index_path, use_gpu=faiss_gpu, mmap=mmap)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if faiss_gpu:
        raise ValueError("--faiss_gpu shards a FAISS index; --backend torch uses every visible GPU itself: drop one")
    from .torch_index import TorchFlatIndex

    return TorchFlatIndex(
        index_path, dtype=torch_dtype, memory_gb=torch_memory_gb, chunk_rows=torch_chunk_rows, max_queries=max_queries
    )


class RetrievalEngine:
    """The whole retrieval path, synchronous and single-threaded (GPU FAISS and torch are not shared)."""

    def __init__(self, encoder: Encoder, index: VectorIndex, corpus: Corpus, model_name: str = ""):
        if index.ntotal > len(corpus):
            raise ValueError(
                f"index has {index.ntotal} vectors but the corpus only {len(corpus)} lines: "
                "they do not belong together (vector i must be corpus line i)"
            )
        if index.ntotal < len(corpus):
            logger.warning("corpus has %d lines but the index only %d vectors", len(corpus), index.ntotal)
        if encoder.dim != index.dim:
            raise ValueError(f"encoder dim {encoder.dim} != index dim {index.dim}: wrong --retriever_model?")
        self.encoder = encoder
        self.index = index
        self.corpus = corpus
        self.model_name = model_name

    @classmethod
    def load(cls, settings: Settings, mmap: bool = True) -> RetrievalEngine:
        """Open every part the server's settings name; the index is memory-mapped (unless ``mmap`` is false) and
        the corpus offsets sidecar reused when fresh.

        The torch backend plans its workspace for the largest batch the server can form: the larger of
        ``max_batch_size`` and ``max_queries`` (larger ones are split).
        """
        index = open_index(
            settings.index_path,
            backend=settings.backend,
            faiss_gpu=settings.faiss_gpu,
            mmap=mmap,
            torch_dtype=settings.torch_dtype,
            torch_memory_gb=settings.torch_memory_gb,
            torch_chunk_rows=settings.torch_chunk_rows,
            max_queries=max(settings.max_batch_size, settings.max_queries),
        )
        logger.info("index %s: %s, %d x %d", settings.index_path, index.kind, index.ntotal, index.dim)
        corpus = Corpus(settings.corpus_path, cache_dir=settings.cache_dir)
        logger.info("corpus %s: %d passages", settings.corpus_path, len(corpus))
        encoder = Encoder(
            settings.retriever_model,
            settings.retriever_name,
            fp16=settings.fp16,
            max_length=settings.query_max_length,
            batch_size=settings.encode_batch_size,
        )
        logger.info("encoder %s (%s) on %s", settings.retriever_model, settings.retriever_name, encoder.device)
        # Warm the encoder only: a warm-up search would scan the whole memory-mapped index (61 GB for
        # wiki-18) before the server reports ready; the first real query pays that page-in instead.
        encoder.encode_queries(["warm up"])
        return cls(encoder, index, corpus, model_name=settings.retriever_model)

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(
        self, queries: list[str], k: int, still_wanted: Callable[[], list[bool]] | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` ``(doc, score)`` per query, best first.

        ``still_wanted`` (one flag per query) is asked between encoding pieces and before the index search; a
        query no longer wanted is skipped and gets no hits (its caller went away: see batcher.py).
        """
        if not queries:
            return []
        if still_wanted is None:
            kept, vectors = list(range(len(queries))), self.encoder.encode_queries(queries)
        else:
            kept, vectors = self._encode_wanted(queries, still_wanted)
            wanted = still_wanted()
            rows = [row for row, position in enumerate(kept) if wanted[position]]
            kept, vectors = [kept[row] for row in rows], vectors[rows]
        results: list[list[Hit]] = [[] for _ in queries]
        if not kept:
            return results
        scores, ids = self.index.search(vectors, k)
        docs: dict[int, dict[str, Any]] = {}
        for position, row_scores, row_ids in zip(kept, scores.tolist(), ids.tolist(), strict=True):
            hits: list[Hit] = []
            for score, doc_id in zip(row_scores, row_ids, strict=True):
                if doc_id < 0:
                    continue
                if doc_id not in docs:
                    docs[doc_id] = self.corpus.doc(doc_id)
                hits.append((docs[doc_id], score))
            results[position] = hits
        return results

    def _encode_wanted(self, queries: list[str], still_wanted: Callable[[], list[bool]]) -> tuple[list[int], Any]:
        """Positions of the queries encoded and their vectors, encoding in pieces of :data:`CHECK_EVERY_CHARS`
        (shortest first, so a piece pads little) and only what ``still_wanted`` still wants."""
        longest = self.encoder.max_length * 4  # characters the tokenizer keeps, roughly
        order = sorted(range(len(queries)), key=lambda i: len(queries[i]))
        kept: list[int] = []
        parts: list[np.ndarray] = []
        piece: list[int] = []
        cost = 0
        for count, position in enumerate(order, start=1):
            piece.append(position)
            cost += min(len(queries[position]), longest)
            if cost < CHECK_EVERY_CHARS and len(piece) < self.encoder.batch_size and count < len(order):
                continue
            wanted = still_wanted()
            chosen = [i for i in piece if wanted[i]]
            if chosen:
                parts.append(self.encoder.encode_queries([queries[i] for i in chosen]))
                kept.extend(chosen)
            piece, cost = [], 0
        if not parts:
            return [], np.zeros((0, self.encoder.dim), dtype=np.float32)
        return kept, np.concatenate(parts)

    def close(self) -> None:
        self.corpus.close()
