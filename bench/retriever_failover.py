"""Searches that fail for good with one retriever replica of two down: a shared counter vs the shared ReplicaSet.

The issue's setup: many concurrent rollouts search through ``SearchClient`` against two replicas, one a port
nobody serves (or, with ``--fault 503``, a server answering 503), the other a healthy fake retriever that takes
``--delay_ms`` per search. Each rollout runs ``--searches`` searches one after another, with the default retry
settings (3 retries, 0.5 s first backoff). Two client behaviours are compared:

* counter: every attempt takes the next replica from one counter shared by all rollouts (the client before the
  fix): an attempt lands on the bad replica about half the time, independently of the search's earlier attempts.
* replicas: the shared ``ReplicaSet``: each search steps through the replicas, and one that refused or answered
  503 is skipped by every search for a few seconds.

Prints, per behaviour: searches, failed searches, attempts per search, requests the bad replica got, wall time.
Run from the project root: ``.venv/bin/python -m bench.retriever_failover`` (``--rollouts 512 --searches 4 --fault down``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Iterator

from search_r1_oai.config import Settings
from search_r1_oai.httpclients import aclose_clients
from search_r1_oai.replicas import ReplicaSet
from search_r1_oai.search_client import SearchClient, SearchError
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.live_server import free_port


class SharedCounter(ReplicaSet):
    """The behaviour before the fix: each attempt takes the next replica of one process-wide counter."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(urls)
        self._counter = itertools.count()

    def plan(self):  # type: ignore[override]
        return lambda _attempt: self.urls[next(self._counter) % len(self.urls)]

    def record_failure(self, url: str, exc: BaseException) -> None:
        pass

    def record_success(self, url: str) -> None:
        pass


@contextlib.contextmanager
def bad_replica(fault: str) -> Iterator[tuple[str, FakeRetriever | None]]:
    """A replica that cannot serve: a dead port, or a server that answers every request with 503."""
    if fault == "down":
        yield f"http://127.0.0.1:{free_port()}", None
        return
    fake = FakeRetriever(fail_next=10**9, fail_status=503)
    with serve_fake_retriever(fake) as url:
        yield url, fake


async def run(behaviour: str, args: argparse.Namespace) -> dict[str, object]:
    live = FakeRetriever(delay_s=args.delay_ms / 1000)
    with bad_replica(args.fault) as (bad_url, bad_fake), serve_fake_retriever(live) as live_url:
        urls = [bad_url, live_url]
        settings = Settings(retrieval_urls=tuple(urls), concurrency=args.rollouts)
        replicas = SharedCounter(urls) if behaviour == "counter" else ReplicaSet(urls)
        attempts: Counter[int] = Counter()
        failed = 0

        async def rollout(number: int) -> None:
            nonlocal failed
            client = SearchClient(settings, replicas=replicas)
            for turn in range(args.searches):
                try:
                    attempts[(await client.retrieve([f"rollout {number} turn {turn}"])).attempts] += 1
                except SearchError as exc:
                    failed += 1
                    attempts[exc.attempts] += 1

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(rollout(n) for n in range(args.rollouts))), timeout=600)
        wall = time.perf_counter() - started
        await aclose_clients()
    searches = args.rollouts * args.searches
    return {
        "behaviour": behaviour,
        "searches": searches,
        "failed": f"{failed} ({100 * failed / searches:.2f}%)",
        "attempts/search": f"{sum(k * v for k, v in attempts.items()) / searches:.3f}",
        "attempts histogram": dict(sorted(attempts.items())),
        "bad replica requests": len(bad_fake.requests) if bad_fake else "(dead port)",
        "wall s": f"{wall:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=512, help="concurrent rollouts (default 512)")
    parser.add_argument("--searches", type=int, default=4, help="searches per rollout, one after another (4)")
    parser.add_argument("--delay_ms", type=float, default=50.0, help="the live replica's time per search (50)")
    parser.add_argument("--fault", choices=["down", "503"], default="down", help="what the bad replica does")
    args = parser.parse_args()
    defaults = dataclasses.asdict(Settings())
    print(
        f"{args.rollouts} rollouts x {args.searches} searches, replicas: one {args.fault}, one live "
        f"({args.delay_ms:g} ms); retries {defaults['retrieval_retries']}, first backoff "
        f"{defaults['retry_initial_wait_s']} s"
    )
    for behaviour in ("counter", "replicas"):
        print(asyncio.run(run(behaviour, args)))


if __name__ == "__main__":
    main()
