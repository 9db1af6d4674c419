"""Every server setting in one place, with the defaults the CLI shows in --help."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOPK = 100


@dataclass
class Settings:
    """What retrieval_server.py parses from its flags; create_app() needs nothing else."""

    index_path: str
    corpus_path: str
    retriever_model: str
    retriever_name: str = "e5"
    topk: int = 3
    host: str = "127.0.0.1"
    port: int = 8000
    faiss_gpu: bool = False
    fp16: bool = False
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
