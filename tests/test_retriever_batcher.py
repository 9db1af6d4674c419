"""The batcher: cross-request batching, dedup, cache, failure isolation, overload, per-request mode.

The search function is a small recording fake so each property is observable exactly; the real engine
behind it is exercised over HTTP in test_retriever_server.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from retriever.batcher import Batcher, BatchFailedError, OverloadedError
from retriever.cache import LRUCache


class RecordingSearch:
    """Returns ``topk`` fake hits ``(query, rank)``; records every batch; can hold the worker on a gate."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[list[str], int]] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, queries: list[str], k: int) -> list[list[tuple[str, int]]]:
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        self.calls.append((list(queries), k))
        if self.fail_on is not None and self.fail_on in queries:
            raise ValueError(f"cannot search {self.fail_on!r}")
        return [[(query, rank) for rank in range(k)] for query in queries]


async def _started(search: RecordingSearch, **kwargs) -> Batcher:
    batcher = Batcher(**kwargs)
    await batcher.start()
    batcher.set_search(search)
    return batcher


async def _hold_worker(batcher: Batcher, search: RecordingSearch) -> asyncio.Task:
    """Occupy the worker with one blocked batch so that later requests pile up in the queue."""
    search.gate.clear()
    search.entered.clear()
    first = asyncio.create_task(batcher.retrieve(["warm"], 1))
    assert await asyncio.to_thread(search.entered.wait, 10)
    return first


async def test_concurrent_requests_share_one_batch_in_order():
    search = RecordingSearch()
    batcher = await _started(search, max_wait_ms=1, cache_size=0)
    try:
        first = await _hold_worker(batcher, search)
        requests = [[f"q{i}a", f"q{i}b"] for i in range(20)]
        tasks = [asyncio.create_task(batcher.retrieve(queries, 2)) for queries in requests]
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 1 + 40  # the held query plus all queued ones
        search.gate.set()
        results = await asyncio.gather(*tasks)
        await first
    finally:
        await batcher.stop()
    assert len(search.calls) == 2  # the held batch, then all 20 requests together
    assert sorted(search.calls[1][0]) == sorted(q for queries in requests for q in queries)
    for queries, result in zip(requests, results, strict=True):
        assert result == [[(q, 0), (q, 1)] for q in queries]
    assert batcher.stats.batches == 2 and batcher.stats.largest_batch == 40


async def test_max_batch_size_bounds_each_batch():
    search = RecordingSearch()
    batcher = await _started(search, max_batch_size=8, max_wait_ms=1, cache_size=0)
    try:
        first = await _hold_worker(batcher, search)
        task = asyncio.create_task(batcher.retrieve([f"q{i}" for i in range(30)], 1))
        await asyncio.sleep(0.02)
        search.gate.set()
        result = await task
        await first
    finally:
        await batcher.stop()
    assert [len(queries) for queries, _ in search.calls[1:]] == [8, 8, 8, 6]
    assert [hits[0][0] for hits in result] == [f"q{i}" for i in range(30)]


async def test_identical_queries_are_searched_once_and_cached():
    search = RecordingSearch()
    batcher = await _started(search, max_wait_ms=1, cache_size=100)
    try:
        first = await _hold_worker(batcher, search)
        # A GRPO group: 5 rollouts ask the same thing at once, one also with a larger topk.
        same = [asyncio.create_task(batcher.retrieve(["who wrote x", "other"], 2)) for _ in range(5)]
        wider = asyncio.create_task(batcher.retrieve(["who wrote x"], 3))
        await asyncio.sleep(0.02)
        search.gate.set()
        results = await asyncio.gather(*same)
        assert (await wider) == [[("who wrote x", 0), ("who wrote x", 1), ("who wrote x", 2)]]
        await first
        assert all(r == [[("who wrote x", 0), ("who wrote x", 1)], [("other", 0), ("other", 1)]] for r in results)
        assert search.calls[1] == (["who wrote x", "other"], 3)  # searched once, with the largest topk
        assert batcher.stats.coalesced == 8 and batcher.stats.batch_duplicates == 1

        calls_before = len(search.calls)
        again = await batcher.retrieve(["who wrote x", "other"], 2)
    finally:
        await batcher.stop()
    assert again == results[0]
    assert len(search.calls) == calls_before
    assert batcher.stats.cache_hits == 2


async def test_a_failing_batch_fails_only_its_callers():
    search = RecordingSearch(fail_on="poison")
    batcher = await _started(search, max_wait_ms=1, cache_size=0)
    try:
        with pytest.raises(BatchFailedError, match="ValueError: cannot search 'poison'"):
            await batcher.retrieve(["fine", "poison"], 1)
        assert await batcher.retrieve(["fine"], 1) == [[("fine", 0)]]
    finally:
        await batcher.stop()
    assert batcher.stats.failed_batches == 1


async def test_a_caller_that_goes_away_does_not_cancel_shared_work():
    search = RecordingSearch()
    batcher = await _started(search, max_wait_ms=1, cache_size=0)
    try:
        first = await _hold_worker(batcher, search)
        leaver = asyncio.create_task(batcher.retrieve(["shared"], 1))
        stayer = asyncio.create_task(batcher.retrieve(["shared"], 1))
        await asyncio.sleep(0.02)
        leaver.cancel()
        search.gate.set()
        assert await stayer == [[("shared", 0)]]
        await first
    finally:
        await batcher.stop()


async def test_overload_is_refused_with_a_message():
    search = RecordingSearch()
    batcher = await _started(search, max_wait_ms=1, max_pending=10, cache_size=0)
    try:
        first = await _hold_worker(batcher, search)
        queued = asyncio.create_task(batcher.retrieve([f"q{i}" for i in range(9)], 1))
        await asyncio.sleep(0.02)
        with pytest.raises(OverloadedError, match="limit 10"):
            await batcher.retrieve(["one too many"], 1)
        search.gate.set()
        assert len(await queued) == 9
        await first
    finally:
        await batcher.stop()


async def test_per_request_mode_searches_each_request_alone():
    search = RecordingSearch()
    batcher = await _started(search, batching=False, cache_size=100)
    try:
        results = await asyncio.gather(*(batcher.retrieve([f"q{i}", "same"], 1) for i in range(6)))
        await batcher.retrieve(["same"], 1)
    finally:
        await batcher.stop()
    assert sorted(len(queries) for queries, _ in search.calls) == [1] + [2] * 6
    assert [r[0][0][0] for r in results] == [f"q{i}" for i in range(6)]
    assert batcher.stats.cache_hits == 0


async def test_retrieve_before_load_is_an_error():
    batcher = Batcher()
    await batcher.start()
    try:
        with pytest.raises(RuntimeError, match="not loaded"):
            await batcher.retrieve(["x"], 1)
    finally:
        await batcher.stop()


def test_lru_cache_evicts_least_recently_used():
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    disabled: LRUCache[int] = LRUCache(0)
    disabled.put("a", 1)
    assert disabled.get("a") is None and len(disabled) == 0
