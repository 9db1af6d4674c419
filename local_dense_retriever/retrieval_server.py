"""Serve a FAISS passage index over HTTP: POST /retrieve, GET /health, /docs.

The port opens at once and the index, corpus and encoder load in the background; poll /health until it
answers 200. Example:

    python local_dense_retriever/retrieval_server.py --index_path e5_Flat.index \\
        --corpus_path wiki-18.jsonl --topk 3 --retriever_name e5 --retriever_model intfloat/e5-base-v2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from retriever.api import create_app
from retriever.settings import MAX_TOPK, Settings, existing_file, in_range

logger = logging.getLogger("retrieval_server")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings(index_path="", corpus_path="")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    data = parser.add_argument_group("data and model")
    data.add_argument(
        "--index_path", required=True, type=existing_file, help="FAISS index file (memory-mapped, not read into RAM)"
    )
    data.add_argument(
        "--corpus_path",
        required=True,
        type=existing_file,
        help="jsonl corpus, line i = vector i ({id, contents} wiki-18 style)",
    )
    data.add_argument(
        "--retriever_model",
        default=defaults.retriever_model,
        help="HF model name or local dir of the query encoder; must be the one that built the index "
        "(default: %(default)s, the wiki-18 index's)",
    )
    data.add_argument(
        "--retriever_name",
        default=defaults.retriever_name,
        help="encoder family: e5 (query:/passage: prefixes, mean pooling), bge (instruction, CLS), gte, "
        "minilm, contriever (default: %(default)s)",
    )
    data.add_argument(
        "--topk", type=int, default=defaults.topk, choices=range(1, MAX_TOPK + 1), metavar=f"1..{MAX_TOPK}",
        help="passages per query when a request gives no topk (default: %(default)s)",
    )  # fmt: skip
    data.add_argument(
        "--cache_dir", default=None, help="where the corpus line-offsets sidecar goes if not next to the corpus"
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=defaults.host, help="interface to bind (default: %(default)s)")
    net.add_argument(
        "--port", type=in_range(int, 0, 65535), default=defaults.port, help="TCP port (default: %(default)s)"
    )
    net.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    net.add_argument("--access_log", action="store_true", help="log every HTTP request (costly under load)")
    dev = parser.add_argument_group("devices")
    dev.add_argument(
        "--backend", choices=["faiss", "torch"], default=defaults.backend,
        help="search engine: faiss (any index type; CPU, or GPUs with --faiss_gpu) or torch (exact inner-product "
        "search over a flat index: vectors memory-mapped from the file, streamed to every visible GPU in "
        "--torch_dtype, chunked matmul + top-k; float32 on CPU when no GPU is visible) (default: %(default)s)",
    )  # fmt: skip
    dev.add_argument(
        "--faiss_gpu", action="store_true",
        help="--backend faiss only: shard the index over all visible GPUs in fp16 (needs faiss-gpu-cu12)",
    )  # fmt: skip
    dev.add_argument("--fp16", action="store_true", help="run the encoder in fp16 (CUDA only; ignored on CPU)")
    dev.add_argument(
        "--torch_dtype", choices=["auto", "float16", "bfloat16", "float32"], default=defaults.torch_dtype,
        help="--backend torch: precision the vectors are held and multiplied in; auto = float16 on GPUs "
        "(half the memory of fp32, tensor cores), float32 on CPU (default: %(default)s)",
    )  # fmt: skip
    dev.add_argument(
        "--torch_memory_gb", type=in_range(float, 0, exclude_low=True), default=defaults.torch_memory_gb,
        help="--backend torch: most GiB the retriever may use on each GPU (its share of a GPU shared with SGLang "
        "and Megatron); the start-up memory plan refuses to load, before allocating, when the shard plus the "
        "workspace exceed it or the free memory (default: free memory only)",
    )  # fmt: skip
    dev.add_argument(
        "--torch_chunk_rows", type=in_range(int, 0), default=defaults.torch_chunk_rows,
        help="--backend torch: index rows multiplied per step; the score workspace is batch x rows; 0 = auto "
        "(262144 on GPU, 32 MiB of fp32 rows on CPU) (default: %(default)s)",
    )  # fmt: skip
    dev.add_argument(
        "--num_threads",
        type=in_range(int, 1),
        default=None,
        help="CPU threads for torch and FAISS (default: all allowed)",
    )
    batch = parser.add_argument_group("batching")
    batch.add_argument(
        "--batching", choices=["on", "off"], default="on",
        help="on: batch queries across requests; off: search each request alone (baseline, no cache)",
    )  # fmt: skip
    batch.add_argument(
        "--max_batch_size", type=in_range(int, 1), default=defaults.max_batch_size,
        help="most queries searched together (default: %(default)s)",
    )  # fmt: skip
    batch.add_argument(
        "--max_wait_ms", type=in_range(float, 0), default=defaults.max_wait_ms,
        help="longest a query waits for others to join its batch when the worker is idle (default: %(default)s)",
    )  # fmt: skip
    batch.add_argument(
        "--cache_size", type=in_range(int, 0), default=defaults.cache_size,
        help="LRU entries of (query, topk) -> passages; 0 disables (default: %(default)s)",
    )  # fmt: skip
    batch.add_argument(
        "--encode_batch_size", type=in_range(int, 1), default=defaults.encode_batch_size,
        help="queries per encoder forward pass (default: %(default)s)",
    )  # fmt: skip
    batch.add_argument(
        "--query_max_length", type=in_range(int, 1), default=defaults.query_max_length,
        help="query tokens kept by the encoder (default: %(default)s)",
    )  # fmt: skip
    limits = parser.add_argument_group("request limits (violations get 4xx with a message)")
    limits.add_argument(
        "--max_queries", type=in_range(int, 1), default=defaults.max_queries,
        help="most queries in one request (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max_query_chars", type=in_range(int, 1), default=defaults.max_query_chars,
        help="longest query in characters (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max_pending", type=in_range(int, 1), default=defaults.max_pending,
        help="queries waiting at once before new requests get 503 (default: %(default)s)",
    )  # fmt: skip
    limits.add_argument(
        "--max_body_mb", type=in_range(float, 0, exclude_low=True), default=defaults.max_body_mb,
        help="largest request body in MiB, else 413 (default: %(default)s)",
    )  # fmt: skip
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        index_path=str(args.index_path),
        corpus_path=str(args.corpus_path),
        retriever_model=args.retriever_model,
        retriever_name=args.retriever_name,
        topk=args.topk,
        host=args.host,
        port=args.port,
        faiss_gpu=args.faiss_gpu,
        fp16=args.fp16,
        backend=args.backend,
        torch_dtype=args.torch_dtype,
        torch_memory_gb=args.torch_memory_gb,
        torch_chunk_rows=args.torch_chunk_rows,
        batching=args.batching == "on",
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        cache_size=args.cache_size,
        encode_batch_size=args.encode_batch_size,
        query_max_length=args.query_max_length,
        num_threads=args.num_threads,
        max_queries=args.max_queries,
        max_query_chars=args.max_query_chars,
        max_pending=args.max_pending,
        max_body_mb=args.max_body_mb,
        cache_dir=args.cache_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.faiss_gpu and args.backend == "torch":
        parser.error("--faiss_gpu is for --backend faiss; --backend torch already uses every visible GPU")
    # torch and FAISS each bring their own OpenMP runtime; with the default busy-wait policy the idle pool
    # spins on the cores the other one needs (a 1-query encode measured 485 ms instead of 24 ms on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    settings = settings_from_args(args)

    server: uvicorn.Server | None = None
    failed: list[BaseException] = []

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=stop_on_load_error)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=args.access_log
    )
    server = uvicorn.Server(config)
    server.run()
    if failed:
        logger.error("exiting: the retriever could not be loaded (%s)", failed[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
