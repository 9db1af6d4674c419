"""Every server setting in one place, with the defaults the CLI shows in --help, and the bounds checks of the CLIs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

MAX_TOPK = 100
# The encoder of the wiki-18 index that download.py fetches; other indexes need the model they were built with.
DEFAULT_RETRIEVER_MODEL = "intfloat/e5-base-v2"

Number = TypeVar("Number", int, float)


def in_range(
    kind: Callable[[str], Number], low: Number, high: Number | None = None, *, exclude_low: bool = False
) -> Callable[[str], Number]:
    """An argparse ``type`` that refuses numbers outside ``[low, high]`` (``(low, high]`` with ``exclude_low``).

    Out-of-range flags then stop at parse time with ``--flag: must be >= low, got x`` instead of failing later
    (a zero shard size divides by zero, a negative cache size raises deep in the batcher).
    """

    def parse(text: str) -> Number:
        value = kind(text)
        if value < low or (exclude_low and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if exclude_low else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


def existing_file(text: str) -> Path:
    """An argparse ``type`` for input files, so a wrong path stops at parse time, before any model is loaded."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return path


@dataclass
class Settings:
    """What retrieval_server.py parses from its flags; create_app() needs nothing else."""

    index_path: str
    corpus_path: str
    retriever_model: str = DEFAULT_RETRIEVER_MODEL
    retriever_name: str = "e5"
    topk: int = 3
    host: str = "127.0.0.1"
    port: int = 8000
    faiss_gpu: bool = False
    fp16: bool = False
    # search backend: faiss (default) or torch (torch_index.py; exact inner product, sharded over the GPUs)
    backend: str = "faiss"
    torch_dtype: str = "auto"
    torch_memory_gb: float | None = None
    torch_chunk_rows: int = 0
    # batching
    batching: bool = True
    max_batch_size: int = 256
    max_wait_ms: float = 5.0
    cache_size: int = 10000
    encode_batch_size: int = 256
    query_max_length: int = 256
    num_threads: int | None = None
    # request limits
    max_queries: int = 512
    max_query_chars: int = 4096
    max_pending: int = 65536
    max_body_mb: float = 64.0
    # files
    cache_dir: str | None = None
