"""Every server setting in one place: each field of :class:`Settings` carries its flag's help, type, bounds and
group, and the CLI is built from them (:func:`add_arguments`), so a setting is written once."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

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


@dataclass(frozen=True)
class Flag:
    """How one :class:`Settings` field appears on the command line (the flag is ``--<field name>``)."""

    help: str
    group: str
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    required: bool = False
    # A bool field is a store_true switch unless it names the two words its flag takes (--batching on|off).
    words: tuple[str, str] | None = None


DATA = "data and model"
NETWORK = "network"
DEVICES = "devices"
BATCHING = "batching"
LIMITS = "request limits (violations get 4xx with a message)"


def setting(default: Any = MISSING, **flag: Any) -> Any:
    """A field with its flag: one definition of the name, default, type, bounds and help."""
    metadata = {"flag": Flag(**flag)}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


@dataclass
class Settings:
    """What retrieval_server.py parses from its flags (one flag per field, see :func:`add_arguments`);
    create_app() and RetrievalEngine.load() need nothing else."""

    index_path: str = setting(
        group=DATA, required=True, type=existing_file, help="FAISS index file (memory-mapped, not read into RAM)"
    )
    corpus_path: str = setting(
        group=DATA,
        required=True,
        type=existing_file,
        help="jsonl corpus, line i = vector i ({id, contents} wiki-18 style)",
    )
    retriever_model: str = setting(
        DEFAULT_RETRIEVER_MODEL,
        group=DATA,
        help="HF model name or local dir of the query encoder; must be the one that built the index "
        "(default: %(default)s, the wiki-18 index's)",
    )
    retriever_name: str = setting(
        "e5",
        group=DATA,
        help="encoder family: e5 (query:/passage: prefixes, mean pooling), bge (instruction, CLS), gte, "
        "minilm, contriever (default: %(default)s)",
    )
    topk: int = setting(
        3,
        group=DATA,
        type=int,
        choices=range(1, MAX_TOPK + 1),
        metavar=f"1..{MAX_TOPK}",
        help="passages per query when a request gives no topk (default: %(default)s)",
    )
    cache_dir: str | None = setting(
        None, group=DATA, help="where the corpus line-offsets sidecar goes if not next to the corpus"
    )
    host: str = setting("127.0.0.1", group=NETWORK, help="interface to bind (default: %(default)s)")
    port: int = setting(8000, group=NETWORK, type=in_range(int, 0, 65535), help="TCP port (default: %(default)s)")
    log_level: str = setting("info", group=NETWORK, choices=["debug", "info", "warning", "error"], help="log level")
    access_log: bool = setting(False, group=NETWORK, help="log every HTTP request (costly under load)")
    max_connections: int = setting(
        1000,
        group=NETWORK,
        type=in_range(int, 1),
        help="open connections at once; one more is answered 503 and closed, counted in /health's refused "
        "(lowered at start to fit the open-file limit, ulimit -n) (default: %(default)s)",
    )
    keep_alive_timeout_s: float = setting(
        5.0,
        group=NETWORK,
        type=in_range(float, 0, exclude_low=True),
        help="an idle kept-alive connection is closed after this many seconds (default: %(default)s)",
    )
    header_timeout_s: float = setting(
        10.0,
        group=NETWORK,
        type=in_range(float, 0, exclude_low=True),
        help="a request's headers must be complete this many seconds after the connection opened or the next "
        "request's first byte arrived, else 408 and close; a connection that sends nothing is closed "
        "(default: %(default)s)",
    )
    body_timeout_s: float = setting(
        60.0,
        group=NETWORK,
        type=in_range(float, 0, exclude_low=True),
        help="a request's body must be complete this many seconds after its headers, else 408 and close "
        "(default: %(default)s)",
    )
    # search backend: faiss (default) or torch (torch_index.py; exact inner product, sharded over the GPUs)
    backend: str = setting(
        "faiss",
        group=DEVICES,
        choices=["faiss", "torch"],
        help="search engine: faiss (any index type; CPU, or GPUs with --faiss_gpu) or torch (exact inner-product "
        "search over a flat index: vectors memory-mapped from the file, streamed to every visible GPU in "
        "--torch_dtype, chunked matmul + top-k; float32 on CPU when no GPU is visible) (default: %(default)s)",
    )
    faiss_gpu: bool = setting(
        False,
        group=DEVICES,
        help="--backend faiss only: shard the index over all visible GPUs in fp16 (needs faiss-gpu-cu12)",
    )
    fp16: bool = setting(False, group=DEVICES, help="run the encoder in fp16 (CUDA only; ignored on CPU)")
    torch_dtype: str = setting(
        "auto",
        group=DEVICES,
        choices=["auto", "float16", "bfloat16", "float32"],
        help="--backend torch: precision the vectors are held and multiplied in; auto = float16 on GPUs "
        "(half the memory of fp32, tensor cores), float32 on CPU (default: %(default)s)",
    )
    torch_memory_gb: float | None = setting(
        None,
        group=DEVICES,
        type=in_range(float, 0, exclude_low=True),
        help="--backend torch: most GiB the retriever may use on each GPU (its share of a GPU shared with SGLang "
        "and Megatron); the start-up memory plan refuses to load, before allocating, when the shard plus the "
        "workspace exceed it or the free memory (default: free memory only)",
    )
    torch_chunk_rows: int = setting(
        0,
        group=DEVICES,
        type=in_range(int, 0),
        help="--backend torch: index rows multiplied per step; the score workspace is batch x rows; 0 = auto "
        "(262144 on GPU, 32 MiB of fp32 rows on CPU) (default: %(default)s)",
    )
    num_threads: int | None = setting(
        None, group=DEVICES, type=in_range(int, 1), help="CPU threads for torch and FAISS (default: all allowed)"
    )
    batching: bool = setting(
        True,
        group=BATCHING,
        words=("on", "off"),
        help="on: batch queries across requests; off: search each request alone (baseline, no cache)",
    )
    max_batch_size: int = setting(
        256, group=BATCHING, type=in_range(int, 1), help="most queries searched together (default: %(default)s)"
    )
    max_wait_ms: float = setting(
        5.0,
        group=BATCHING,
        type=in_range(float, 0),
        help="longest a query waits for others to join its batch when the worker is idle (default: %(default)s)",
    )
    cache_size: int = setting(
        10000,
        group=BATCHING,
        type=in_range(int, 0),
        help="LRU entries of (query, topk) -> passages; 0 disables (default: %(default)s)",
    )
    cache_mb: float = setting(
        256.0,
        group=BATCHING,
        type=in_range(float, 0),
        help="most MiB the result cache holds (estimated from the passages' sizes); whichever of this and "
        "--cache_size is reached first evicts; 0 disables (default: %(default)s)",
    )
    encode_batch_size: int = setting(
        256, group=BATCHING, type=in_range(int, 1), help="queries per encoder forward pass (default: %(default)s)"
    )
    query_max_length: int = setting(
        256, group=BATCHING, type=in_range(int, 1), help="query tokens kept by the encoder (default: %(default)s)"
    )
    max_queries: int = setting(
        512, group=LIMITS, type=in_range(int, 1), help="most queries in one request (default: %(default)s)"
    )
    max_query_chars: int = setting(
        4096, group=LIMITS, type=in_range(int, 1), help="longest query in characters (default: %(default)s)"
    )
    max_pending: int = setting(
        65536,
        group=LIMITS,
        type=in_range(int, 1),
        help="queries waiting at once before new requests get 503 (default: %(default)s)",
    )
    max_body_mb: float = setting(
        64.0,
        group=LIMITS,
        type=in_range(float, 0, exclude_low=True),
        help="largest request body in MiB, else 413 (default: %(default)s)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` flag per :class:`Settings` field, in argument groups, from the fields' metadata."""
    groups: dict[str, Any] = {}
    for f in fields(Settings):
        flag: Flag = f.metadata["flag"]
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        kwargs: dict[str, Any] = {"help": flag.help}
        if flag.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if f.type in ("bool", bool) and flag.words is None:
            kwargs["action"] = "store_true"
        elif flag.words is not None:
            kwargs["choices"] = list(flag.words)
            kwargs["default"] = flag.words[0] if f.default else flag.words[1]
        else:
            for name in ("type", "choices", "metavar"):
                if getattr(flag, name) is not None:
                    kwargs[name] = getattr(flag, name)
        groups[flag.group].add_argument(f"--{f.name}", **kwargs)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` of parsed flags (paths as strings, on/off words as bools)."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name)
        flag: Flag = f.metadata["flag"]
        if flag.words is not None:
            value = value == flag.words[0]
        elif isinstance(value, Path):
            value = str(value)
        values[f.name] = value
    return Settings(**values)
