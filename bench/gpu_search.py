"""Exact-search throughput of the torch backend against the two hardware floors, measured in the same run.

    .venv/bin/python -m bench.gpu_search                      # GPU: 8M x 768 bf16, batches 1, 32, 256, 1024
    .venv/bin/python -m bench.gpu_search --device cpu --n 200000   # CPU: float32, small N

Synthetic unit vectors (N x dim) are created directly on the device in --dtype, and queries are searched with
``chunked_topk``, the function the retriever's GPU shards run (the score of random vectors does not change the
cost). The floors are measured on the same device, just before:
  bandwidth: a device-to-device copy of a large buffer (read + write bytes / time). A search must read all
             N x dim vectors once per batch, so N x dim x bytes / bandwidth is its fastest possible time;
             small batches (1-32) are bound by it.
  compute:   a large square matmul in --dtype (bf16 on GPU uses tensor cores); 2 x batch x N x dim flops /
             that rate is the fastest possible time for the batch's matrix product; large batches (256+) are
             bound by it.
For each batch the table gives queries/s, ms per batch, and the fraction of each floor achieved (floor time /
measured time; 100% = at the floor). The binding floor is the larger of the two floor times.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

# Run from the project root: the retriever package is imported from its folder (its imports are relative).
from local_dense_retriever.retriever.torch_index import TORCH_DTYPES, chunked_topk
from local_dense_retriever.retriever.torch_plan import default_chunk_rows


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def batch_list(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of batch sizes, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return batches


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu; auto = cuda:0 if present (default)")
    parser.add_argument(
        "--n", type=positive_int, default=None,
        help="vectors in the synthetic index (default: 8,000,000 on GPU, 200,000 on CPU); 8M x 768 bf16 = 12.3 GB",
    )  # fmt: skip
    parser.add_argument("--dim", type=positive_int, default=768, help="vector dimension (default: %(default)s, E5)")
    parser.add_argument(
        "--dtype", choices=["auto", *TORCH_DTYPES], default="auto",
        help="precision of vectors, queries and the compute floor's matmul; auto = bfloat16 on GPU, float32 on CPU",
    )  # fmt: skip
    parser.add_argument(
        "--batches", type=batch_list, default=[1, 32, 256, 1024],
        help="comma-separated query batch sizes (default: 1,32,256,1024)",
    )  # fmt: skip
    parser.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: %(default)s)")
    parser.add_argument(
        "--chunk_rows", type=int, default=0,
        help="rows per matmul step, as the server's --torch_chunk_rows; 0 = the server's auto value (default)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed searches per batch (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (seconds): the floor-like figure for each side."""
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth_floor(device: torch.device, repeats: int) -> float:
    """Bytes/s of a device-to-device copy (read + write), the memory bandwidth a search can hope for."""
    nbytes = (2 << 30) if device.type == "cuda" else (256 << 20)
    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = best_time(lambda: target.copy_(source), device, repeats)
    return 2 * nbytes / seconds


def compute_floor(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Flop/s of a large square matmul in ``dtype`` (tensor cores for bf16/fp16 on GPU)."""
    size = 8192 if device.type == "cuda" else 2048
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    seconds = best_time(lambda: left @ right, device, repeats)
    return 2 * size**3 / seconds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.device if args.device != "auto" else ("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {name}: this torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda"
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    dtype = TORCH_DTYPES[dtype_name]
    n = args.n or (8_000_000 if on_gpu else 200_000)
    chunk_rows = args.chunk_rows or default_chunk_rows("cuda" if on_gpu else "cpu", args.dim)
    torch.manual_seed(args.seed)
    label = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {label}; {n:,} x {args.dim} {dtype_name}, k={args.k}, chunk {chunk_rows:,} rows")

    bandwidth = bandwidth_floor(device, args.repeats)
    flops = compute_floor(device, dtype, args.repeats)
    print(f"floors: copy bandwidth {bandwidth / 1e9:.1f} GB/s, {dtype_name} matmul {flops / 1e12:.2f} TFLOP/s")

    vectors = torch.empty((n, args.dim), dtype=dtype, device=device)
    for begin in range(0, n, 1 << 20):  # fill in slices: no full fp32 temporary
        block = torch.randn(min(1 << 20, n - begin), args.dim, device=device)
        vectors[begin : begin + len(block)] = torch.nn.functional.normalize(block, dim=1).to(dtype)
    index_bytes = vectors.numel() * vectors.element_size()

    print(
        "| batch | queries/s | ms/batch | bandwidth floor ms | compute floor ms | of bandwidth floor | of compute floor |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        queries = torch.nn.functional.normalize(torch.randn(batch, args.dim, device=device), dim=1).to(dtype)
        seconds = best_time(
            lambda queries=queries: chunked_topk(queries, vectors, args.k, chunk_rows), device, args.repeats
        )
        bw_s = index_bytes / bandwidth
        compute_s = 2 * batch * n * args.dim / flops
        print(
            f"| {batch} | {batch / seconds:,.0f} | {seconds * 1e3:.2f} | {bw_s * 1e3:.2f} | {compute_s * 1e3:.2f} | "
            f"{bw_s / seconds:.0%} | {compute_s / seconds:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
