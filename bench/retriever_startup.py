"""Start-up cost vs index size: our server (memory-mapped index + offsets sidecar) vs read-everything-into-RAM.

For each size (default 1M and 4M passages) this writes a synthetic flat index of random 768-d unit vectors and
a wiki-18-shaped corpus of the same length, then measures, from process spawn:
  * time until /health is 200 and until /retrieve answers a query (the first query pays one full flat scan),
  * peak anonymous memory (RssAnon from /proc, sampled every 20 ms until that first answer; mmapped file pages
    are reclaimable page cache and are not counted, so VmHWM would mislead).
"ours" is the second start of retrieval_server.py (the first builds the offsets sidecar; its time is shown
too). "read-all" is the common design, run by this script itself: faiss.read_index without mmap, every
corpus line read into a Python list, then serve. Both use the same 768-d BERT-base-shaped encoder (random
weights, E5-base's architecture and size), so model loading costs the same in both.

    .venv/bin/python -m bench.retriever_startup                        # 1M and 4M, ~19 GB of temp files
    .venv/bin/python -m bench.retriever_startup --sizes 200000,800000  # smaller machines
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench._retriever_common import (
    PeakSampler,
    Server,
    distinct_queries,
    minilm_dir,
    our_server_argv,
    write_corpus,
    write_flat_index,
)

DIM = 768
WIKI18_PASSAGES = 21_015_324
WIKI18_INDEX_GB = 64.6


@dataclass
class Startup:
    health_s: float
    first_answer_s: float
    peak_anon_mb: float


def make_encoder(out: Path) -> Path:
    """A BERT-base-shaped encoder (E5-base's size: 12 layers, 768-d) with random weights, saved once."""
    if (out / "config.json").exists():
        return out
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=DIM, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072)  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    BertModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def serve_read_all(index_path: str, corpus_path: str, model: str, port: int) -> None:
    """The common design: load everything into memory first, then open the port; one request at a time."""
    import faiss
    import uvicorn
    from fastapi import FastAPI

    from local_dense_retriever.retriever.corpus import make_doc
    from local_dense_retriever.retriever.encoder import Encoder, set_cpu_threads

    set_cpu_threads(None)
    index = faiss.read_index(index_path)
    with open(corpus_path, "rb") as handle:
        lines = list(handle)
    encoder = Encoder(model, "e5")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "index_size": index.ntotal}

    @app.post("/retrieve")
    def retrieve(body: dict) -> dict:
        import json

        _, ids = index.search(encoder.encode_queries(body["queries"]), body.get("topk", 3))
        return {"result": [[make_doc(json.loads(lines[i]), i) for i in row if i >= 0] for row in ids.tolist()]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def measure(argv: list[str], port: int, log: Path, query: str, timeout: float) -> Startup:
    """Spawn, wait for /health and for the first /retrieve answer while sampling RssAnon, stop."""
    server = Server(argv, port, log)
    try:
        with PeakSampler(server.pid) as sampler:
            health = server.wait_health(timeout)
            first = server.wait_retrieve(query, timeout)
    finally:
        server.stop()
    return Startup(health, first, sampler.peak_kb / 1024)


def median_startup(runs: list[Startup]) -> Startup:
    """Median times (start-up on a shared 2-core machine jitters by ~1 s), worst peak memory."""
    return Startup(
        statistics.median(r.health_s for r in runs),
        statistics.median(r.first_answer_s for r in runs),
        max(r.peak_anon_mb for r in runs),
    )


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default="1000000,4000000", help="comma-separated passage counts (default: %(default)s)"
    )
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/retriever_bench_startup"), help="temp data dir")
    parser.add_argument("--keep", action="store_true", help="keep the generated files (default: delete at the end)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="second starts of ours per size; medians reported (default: 3)"
    )
    parser.add_argument("--port", type=int, default=18941, help="port for the servers under test")
    parser.add_argument("--timeout", type=float, default=600, help="longest wait for one start, seconds")
    parser.add_argument("--serve_read_all", nargs=3, metavar=("INDEX", "CORPUS", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_read_all:
        serve_read_all(*args.serve_read_all, port=args.port)
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 2 or sizes[0] == sizes[-1] or args.repeats < 1:
        parser.error("--sizes needs two different sizes (start-up is compared across them) and --repeats >= 1")
    need_gb = sum(n * (DIM * 4 + 700) for n in sizes) / 1e9
    free_gb = shutil.disk_usage(args.work_dir.parent).free / 1e9
    if free_gb < need_gb + 5:
        raise SystemExit(
            f"need ~{need_gb:.0f} GB free in {args.work_dir.parent}, have {free_gb:.0f} GB: use smaller --sizes"
        )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = str(make_encoder(args.work_dir / "bert-base-768-random"))
    query = distinct_queries(1)[0]
    results: dict[tuple[str, int], Startup | str] = {}
    first_start: dict[int, float] = {}
    try:
        for n in sizes:
            index = write_flat_index(args.work_dir / f"flat_{n}x{DIM}.index", n, DIM)
            corpus = write_corpus(args.work_dir / f"corpus_{n}.jsonl", n)
            for sidecar in args.work_dir.glob(f"corpus_{n}.jsonl.offsets.*"):
                sidecar.unlink()
            argv = our_server_argv(index, corpus, args.port, "--retriever_model", model)
            log = args.work_dir / f"ours_{n}.log"
            first_start[n] = measure(argv, args.port, log, query, args.timeout).first_answer_s
            runs = [measure(argv, args.port, log, query, args.timeout) for _ in range(args.repeats)]
            results["ours", n] = median_startup(runs)
            print(f"ours      n={n:>9,}: {results['ours', n]}  (first start {first_start[n]:.1f} s)", flush=True)

            needed = (index.stat().st_size + 1.1 * corpus.stat().st_size) / (1 << 30) + 1.5
            if mem_available_gb() < needed + 1:
                results["read-all", n] = f"skipped: needs ~{needed:.0f} GiB RAM, {mem_available_gb():.0f} available"
            else:
                argv = ["-m", "bench.retriever_startup", "--port", str(args.port), "--serve_read_all", str(index),
                        str(corpus), model]  # fmt: skip
                results["read-all", n] = measure(argv, args.port, args.work_dir / f"read_all_{n}.log", query,
                                                 args.timeout)  # fmt: skip
            print(f"read-all  n={n:>9,}: {results['read-all', n]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)

    report(sizes, results, first_start)
    return 0


def report(sizes: list[int], results: dict, first_start: dict[int, float]) -> None:
    print(f"\nflat index of random {DIM}-d unit vectors + wiki-18-shaped corpus; times from process spawn")
    header = f"{'passages':>10} | {'design':>8} | {'health s':>8} | {'/retrieve s':>11} | {'1st query s':>11} | "
    header += f"{'peak RssAnon MB':>15}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        for design in ("ours", "read-all"):
            r = results[design, n]
            if isinstance(r, str):
                print(f"{n:>10,} | {design:>8} | {r}")
            else:
                query_s = r.first_answer_s - r.health_s  # one full flat scan: a per-query cost, not a start-up one
                print(f"{n:>10,} | {design:>8} | {r.health_s:>8.1f} | {r.first_answer_s:>11.1f} | {query_s:>11.2f} | "
                      f"{r.peak_anon_mb:>15,.0f}")  # fmt: skip
        print(f"{'':>10} | ours first start (builds the offsets sidecar): {first_start[n]:.1f} s to first answer")
    small, large = sizes[0], sizes[-1]
    ours_small, ours_large = results["ours", small], results["ours", large]
    print(f"\nours, {small:,} -> {large:,}: /health +{ours_large.health_s - ours_small.health_s:.2f} s, "
          f"/retrieve +{ours_large.first_answer_s - ours_small.first_answer_s:.2f} s (target < 1 s)")  # fmt: skip
    read_all = results["read-all", large]
    if not isinstance(read_all, str):
        print(f"peak RssAnon at {large:,}: ours {ours_large.peak_anon_mb:,.0f} MB = "
              f"{ours_large.peak_anon_mb / read_all.peak_anon_mb:.1%} of read-all's {read_all.peak_anon_mb:,.0f} MB "
              f"(target <= 25%)")  # fmt: skip
    extrapolate(small, large, results)


def extrapolate(small: int, large: int, results: dict) -> None:
    """Linear fit per design through the two sizes, evaluated at wiki-18 (21M x 768, 64.6 GB)."""
    print(f"\nlinear extrapolation to wiki-18 ({WIKI18_PASSAGES:,} x {DIM}, {WIKI18_INDEX_GB} GB):")
    for design in ("ours", "read-all"):
        a, b = results[design, small], results[design, large]
        if isinstance(a, str) or isinstance(b, str):
            print(f"  {design:>8}: not measured at both sizes")
            continue

        def at(y0: float, y1: float) -> float:
            return y0 + (y1 - y0) * (WIKI18_PASSAGES - small) / (large - small)

        print(f"  {design:>8}: /health {at(a.health_s, b.health_s):.1f} s, first /retrieve "
              f"{at(a.first_answer_s, b.first_answer_s):.1f} s, peak RssAnon {at(a.peak_anon_mb, b.peak_anon_mb) / 1024:.1f} GB")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
