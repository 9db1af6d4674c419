"""Text → L2-normalised vectors with a Hugging Face encoder (E5 by default).

One class serves the server (queries) and build_index.py (passages), so both sides of the index always
use the same prefixes, pooling and normalisation: a mismatch there silently ruins recall.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """How a model family expects its inputs and outputs."""

    query_prefix: str
    passage_prefix: str
    pooling: str  # "mean" or "cls"
    normalize: bool = True


ENCODER_SPECS: dict[str, EncoderSpec] = {
    "e5": EncoderSpec("query: ", "passage: ", "mean"),
    "bge": EncoderSpec("Represent this sentence for searching relevant passages: ", "", "cls"),
    "gte": EncoderSpec("", "", "mean"),
    "minilm": EncoderSpec("", "", "mean"),
    "contriever": EncoderSpec("", "", "mean", normalize=False),
}


def spec_for(retriever_name: str) -> EncoderSpec:
    """Spec of a model family; names like ``e5-base-v2`` or ``bge-large-en`` match their family."""
    name = retriever_name.lower()
    for family in sorted(ENCODER_SPECS, key=len, reverse=True):
        if name == family or name.startswith((family + "-", family + "_")):
            return ENCODER_SPECS[family]
    raise ValueError(f"unknown retriever_name {retriever_name!r}; known families: {', '.join(ENCODER_SPECS)}")


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` means the first CUDA device when there is one, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Encoder:
    """Batched text encoder. Not thread-safe by design: one worker thread owns it."""

    def __init__(
        self,
        model_name_or_path: str,
        retriever_name: str = "e5",
        device: str = "auto",
        fp16: bool = False,
        max_length: int = 256,
        batch_size: int = 256,
    ):
        self.model_name = model_name_or_path
        self.spec = spec_for(retriever_name)
        self.device = pick_device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        model = AutoModel.from_pretrained(model_name_or_path)
        self.fp16 = fp16 and self.device.type == "cuda"
        if fp16 and not self.fp16:
            logger.warning("--fp16 ignored: fp16 encoding needs CUDA, running on %s", self.device)
        if self.fp16:
            model = model.half()
        self.model = model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = pooled.float()
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()

    def encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        """``(len(texts), dim)`` float32 vectors, prefixes applied.

        Texts are sorted by length before micro-batching so padding stays small, then put back in order.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.spec.query_prefix if is_query else self.spec.passage_prefix
        prefixed = [prefix + text for text in texts]
        order = sorted(range(len(prefixed)), key=lambda i: len(prefixed[i]))
        out = np.empty((len(prefixed), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._encode_batch([prefixed[i] for i in chunk])
        return out

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode(queries, is_query=True)

    def encode_passages(self, passages: list[str]) -> np.ndarray:
        return self.encode(passages, is_query=False)


def set_cpu_threads(num_threads: int | None) -> int:
    """Use all CPUs we are allowed (or ``num_threads``) for torch and FAISS; return the count.

    torch defaults to physical cores and FAISS to OpenMP's choice; with one worker doing all the compute
    serially, both should use every allowed CPU, but never more (oversubscription slows both).
    """
    threads = num_threads or available_cpus()
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover - faiss is a hard dependency of the server
        pass
    return threads
