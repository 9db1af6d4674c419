"""Encoder + index + corpus: queries in, ranked documents out. Owned by one worker thread."""

from __future__ import annotations

import logging
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

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` ``(doc, score)`` per query, best first."""
        if not queries:
            return []
        vectors = self.encoder.encode_queries(queries)
        scores, ids = self.index.search(vectors, k)
        docs: dict[int, dict[str, Any]] = {}
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            hits: list[Hit] = []
            for score, doc_id in zip(row_scores, row_ids, strict=True):
                if doc_id < 0:
                    continue
                if doc_id not in docs:
                    docs[doc_id] = self.corpus.doc(doc_id)
                hits.append((docs[doc_id], score))
            results.append(hits)
        return results

    def close(self) -> None:
        self.corpus.close()
