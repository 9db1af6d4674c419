"""Throughput under many concurrent single-query clients: batched server vs per-request mode, and the limit.

Same encoder (MiniLM, real), same flat index (random unit vectors, 384-d, >= 100k passages), same server
code: ``--batching on`` (ours) against ``--batching off`` (each request encoded and searched alone, the
common design). C clients each send one distinct query at a time for a fixed duration. The serving limit
is the same server's throughput on one big request (--big_batch queries per request, back to back).
Caching is off in both modes and every query is distinct, so only batching differs.

    .venv/bin/python -m bench.retriever_load             # full run, ~4 minutes
    .venv/bin/python -m bench.retriever_load --duration 5   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench._retriever_common import (
    RawHTTPConnection,
    Server,
    distinct_queries,
    our_server_argv,
    write_corpus,
    write_flat_index,
)


@dataclass
class Result:
    qps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_clients(port: int, clients: int, warmup: float, duration: float, queries: Iterator[str]) -> Result:
    """C closed-loop clients, one query per request; only requests finishing inside the window count."""
    latencies: list[float] = []
    errors = 0
    start = time.monotonic() + warmup
    end = start + duration

    async def client() -> None:
        nonlocal errors
        connection = RawHTTPConnection("127.0.0.1", port)
        try:
            while (now := time.monotonic()) < end:
                try:
                    body = {"queries": [next(queries)], "topk": 3}
                    status, _ = await asyncio.wait_for(connection.post_json("/retrieve", body), timeout=120)
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    status = 0
                    await connection.close()
                    connection = RawHTTPConnection("127.0.0.1", port)
                done = time.monotonic()
                if start <= done <= end:
                    if status == 200:
                        latencies.append(done - now)
                    else:
                        errors += 1
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    return Result(len(latencies) / duration, p50 * 1e3, p99 * 1e3, errors)


def measure_limit(url: str, batch: int, duration: float) -> float:
    """Queries per second when the server gets one big request at a time (no HTTP concurrency)."""
    queries = distinct_queries(batch * 1000, seed=7)
    done, start, offset = 0, time.monotonic(), 0
    with httpx.Client(base_url=url, timeout=300) as http:
        while time.monotonic() - start < duration:
            body = {"queries": queries[offset : offset + batch], "topk": 3}
            offset += batch
            response = http.post("/retrieve", json=body)
            response.raise_for_status()
            done += batch
    return done / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000, help="index and corpus size (default: %(default)s)")
    parser.add_argument("--clients", default="32,128,256", help="comma-separated client counts (default: %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=15.0, help="measured seconds per point (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default: %(default)s)")
    parser.add_argument("--big_batch", type=int, default=512, help="queries per request for the limit (default: 512)")
    parser.add_argument(
        "--work_dir", type=Path, default=Path("/tmp/retriever_bench_load"), help="cached synthetic data"
    )
    parser.add_argument("--port", type=int, default=18931, help="port for the server under test")
    parser.add_argument("--server_args", default="", help="extra flags for both servers, e.g. '--num_threads 2'")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    args.work_dir.mkdir(parents=True, exist_ok=True)
    index = write_flat_index(args.work_dir / f"flat_{args.passages}x384.index", args.passages, 384)
    corpus = write_corpus(args.work_dir / f"corpus_{args.passages}.jsonl", args.passages)
    counter = itertools.cycle(distinct_queries(300_000))
    extra = args.server_args.split()
    rows: dict[tuple[str, int], Result] = {}
    limit = 0.0
    for mode in ("on", "off"):
        argv = our_server_argv(index, corpus, args.port, "--batching", mode, "--cache_size", "0", *extra)
        server = Server(argv, args.port, args.work_dir / f"server_{mode}.log")
        try:
            server.wait_health(timeout=300)
            measure_limit(server.url, 64, 2)  # page the index in and warm the encoder
            if mode == "on":
                limit = measure_limit(server.url, args.big_batch, args.duration)
                print(f"limit: one {args.big_batch}-query request at a time: {limit:.0f} q/s", flush=True)
            for c in clients:
                rows[mode, c] = asyncio.run(run_clients(args.port, c, args.warmup, args.duration, counter))
                r = rows[mode, c]
                print(f"batching={mode} C={c}: {r.qps:.0f} q/s p50 {r.p50_ms:.0f} ms p99 {r.p99_ms:.0f} ms", flush=True)
        finally:
            server.stop()

    print(f"\n{args.passages} passages x 384-d flat index, MiniLM queries, {args.duration:.0f} s per point")
    print(f"serving limit (same server, one {args.big_batch}-query request at a time): {limit:.0f} q/s\n")
    header = f"{'C':>5} | {'batched q/s':>11} {'p50 ms':>8} {'p99 ms':>8} | {'per-req q/s':>11} {'p50 ms':>8}"
    header += f" {'p99 ms':>8} | {'QPS ratio':>9} {'p99 ratio':>9} | {'batched/limit':>13} {'per-req/limit':>13}"
    print(header)
    print("-" * len(header))
    for c in clients:
        ours, naive = rows["on", c], rows["off", c]
        print(
            f"{c:>5} | {ours.qps:>11.0f} {ours.p50_ms:>8.0f} {ours.p99_ms:>8.0f} | {naive.qps:>11.0f} "
            f"{naive.p50_ms:>8.0f} {naive.p99_ms:>8.0f} | {ours.qps / naive.qps:>8.1f}x "
            f"{naive.p99_ms / ours.p99_ms:>8.1f}x | {ours.qps / limit:>13.0%} {naive.qps / limit:>13.0%}"
        )
        if ours.errors or naive.errors:
            print(f"      errors: batched {ours.errors}, per-request {naive.errors}")
    last = clients[-1]
    ours, naive = rows["on", last], rows["off", last]
    print(
        f"\ntargets at C={last}: >= 4x per-request QPS: {ours.qps / naive.qps:.1f}x; >= 70% of limit: "
        f"{ours.qps / limit:.0%}; p99 lower: {ours.p99_ms:.0f} ms vs {naive.p99_ms:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
