"""How long one large request body holds the retriever's event loop: parsed on the loop vs in the worker process.

The body is what a broken or hostile client can send within ``--max_body_mb`` (default 64 MiB): ``{"queries":
[[], [], ...]}``, the shape json's C parser is slowest on, so it holds the GIL the longest. While the retriever
parses it, a ticker on the same event loop (standing in for /health and every other request) sleeps 1 ms at a time;
the longest gap between its ticks is how long everyone else waited. Same body, same machine, one run:

* on the loop: ``request_body.parse_body`` called by the handler (the design before the worker process);
* ours: ``request_body.BodyParser`` as the server uses it (bodies over 256 KiB go to one spawned worker; its
  start-up is paid once, before the measurement, as a running server has paid it at its first large body).

    .venv/bin/python -m bench.retriever_body [--mb 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from local_dense_retriever.retriever.api import RetrieveRequest
from local_dense_retriever.retriever.request_body import BodyParser, parse_body


def garbage_body(mib: float) -> bytes:
    """``{"queries": [[], [], ...]}`` of about ``mib`` MiB."""
    count = int(mib * 2**20) // 3
    return b'{"queries": [' + b"[]," * count + b"[]]}"


async def longest_stall(parse: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(seconds the parse took, longest gap between the ticker's 1 ms sleeps meanwhile)."""
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    result = await parse()
    took = time.perf_counter() - started
    done.set()
    await ticking
    assert result.__class__.__name__ == "BodyProblem", "the body must be refused"
    return took, max(gaps)


async def run(mib: float, repeats: int) -> None:
    body = garbage_body(mib)
    parser = BodyParser()
    await parser.parse(garbage_body(0.5), "application/json", RetrieveRequest)  # start the worker
    inline, ours = [], []
    try:
        for _ in range(repeats):

            async def on_loop() -> Any:
                return parse_body(body, "application/json", RetrieveRequest)

            inline.append(await longest_stall(on_loop))
            ours.append(await longest_stall(lambda: parser.parse(body, "application/json", RetrieveRequest)))
    finally:
        await parser.aclose()
    print(f"body: {len(body) / 2**20:.1f} MiB of empty lists (refused with 422); median of {repeats} runs")
    print(f"{'':34}{'parse s':>10}{'longest loop stall ms':>24}")
    rows = {"on the loop (parse_body)": inline, "ours (BodyParser, worker process)": ours}
    for name, runs in rows.items():
        took = statistics.median(t for t, _ in runs)
        stall = statistics.median(s for _, s in runs)
        print(f"{name:34}{took:>10.2f}{stall * 1000:>24.1f}")
    ratio = statistics.median(s for _, s in inline) / statistics.median(s for _, s in ours)
    print(f"ratio of the stalls, on the loop / ours: {ratio:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=64.0, help="body size in MiB (default: the server's 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each design (default 3)")
    args = parser.parse_args()
    asyncio.run(run(args.mb, args.repeats))


if __name__ == "__main__":
    main()
