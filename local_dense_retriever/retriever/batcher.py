"""Cross-request micro-batching in front of a single worker thread.

Encoding one query at a time wastes the encoder and re-reads the whole flat index per query (memory bound);
a batch of 256 queries costs little more than one. So every request's queries go into one queue, and a
batch loop on the event loop takes up to ``max_batch_size`` of them (waiting at most ``max_wait_ms`` after
the oldest arrived), searches each distinct query once in the worker thread and resolves the callers'
futures. Identical in-flight (query, topk) pairs share one future; finished ones are kept in an LRU cache
(bounded in entries and bytes), which GRPO groups (n samples of the same prompt) hit constantly. A failing batch
fails only its own callers.

A caller that goes away (its client hung up and the handler was cancelled) takes its queries with it: a query no
caller waits for any more is dropped from the queue before it is encoded, and a search function that takes
``still_wanted`` (RetrievalEngine.search) skips the rest of such queries inside a running batch. Without this a
client that sent 128 long queries and hung up kept the worker busy for ~10 s while the next request waited.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from .cache import LRUCache

logger = logging.getLogger(__name__)

Hits = list[Any]
SearchFn = Callable[[list[str], int], list[Hits]]
T = TypeVar("T")


class BatchFailedError(RuntimeError):
    """The batch holding this request failed inside the worker; other batches are unaffected."""


class OverloadedError(RuntimeError):
    """Too many queries are already waiting; the caller should back off and retry."""


@dataclass(eq=False)
class _Item:
    """One distinct (query, topk) waiting or being searched; ``waiters`` callers want it."""

    query: str
    topk: int
    future: asyncio.Future
    enqueued: float
    waiters: int = 1
    dropped: bool = False  # every caller went away: not to be searched
    started: bool = False  # taken into a batch


def hits_bytes(key: Any, hits: Hits) -> int:
    """Roughly what a cache entry holds in memory: its key and every passage of its hits (a passage shared by two
    entries is counted twice, so the estimate errs high)."""
    total = sys.getsizeof(key[0]) + 200 if isinstance(key, tuple) and key else 200
    for hit in hits:
        total += 120
        doc = hit[0] if isinstance(hit, tuple) and hit else hit
        if isinstance(doc, dict):
            total += sys.getsizeof(doc) + sum(sys.getsizeof(value) for value in doc.values())
        else:
            total += sys.getsizeof(doc)
    return total


@dataclass
class BatcherStats:
    """Counters shown by /health, so batching, dedup and caching are observable from outside."""

    requests: int = 0
    queries: int = 0
    cache_hits: int = 0
    coalesced: int = 0  # joined an identical query already waiting or running
    batch_duplicates: int = 0  # same text, different topk, in one batch: searched once
    batches: int = 0
    searched: int = 0  # distinct queries actually encoded and searched
    failed_batches: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0
    abandoned: int = 0  # requests whose caller went away before their answer
    dropped: int = 0  # queries nobody waited for any more, skipped before they were encoded

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["busy_s"] = round(self.busy_s, 3)
        data["mean_batch"] = round(self.searched / self.batches, 2) if self.batches else 0.0
        return data


class Batcher:
    """Owns the worker thread; ``retrieve`` is the only entry point requests use.

    With ``batching=False`` each request is searched alone on the same worker, no cache, no sharing: the
    common per-request design, kept as a mode so benchmarks compare like with like.
    """

    def __init__(
        self,
        max_batch_size: int = 256,
        max_wait_ms: float = 5.0,
        cache_size: int = 10000,
        batching: bool = True,
        max_pending: int = 65536,
        cache_bytes: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.batching = batching
        self.max_pending = max_pending
        self.stats = BatcherStats()
        self._cache: LRUCache[Hits] = LRUCache(cache_size, max_bytes=cache_bytes, size_of=hits_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever-worker")
        self._search: SearchFn | None = None
        self._search_checks = False  # the search function takes still_wanted=
        self._queue: deque[_Item] = deque()  # dropped items stay until they reach the front; _queued counts the rest
        self._queued = 0
        self._inflight: dict[tuple[str, int], _Item] = {}
        self._running = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="retriever-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.dropped and not item.future.done():
                item.future.set_exception(BatchFailedError("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the worker thread (used to load the engine, so that thread owns it)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def set_search(self, search: SearchFn) -> None:
        """Install the search function once the engine is loaded; it is only ever called on the worker."""
        self._search = search
        try:
            self._search_checks = "still_wanted" in inspect.signature(search).parameters
        except (TypeError, ValueError):
            self._search_checks = False

    @property
    def queue_depth(self) -> int:
        """Queries waiting for a batch plus those being searched right now."""
        return self._queued + self._running

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    @property
    def cache_bytes(self) -> int:
        """The cache's estimated size (see :func:`hits_bytes`)."""
        return self._cache.bytes

    # -- requests --------------------------------------------------------------------------------------
    async def retrieve(self, queries: list[str], topk: int) -> list[Hits]:
        """Hits for each query, in order. Raises BatchFailedError / OverloadedError."""
        if self._search is None:
            raise RuntimeError("retriever is not loaded yet")
        if self.queue_depth + len(queries) > self.max_pending:
            raise OverloadedError(f"{self.queue_depth} queries already waiting (limit {self.max_pending}); retry later")
        self.stats.requests += 1
        self.stats.queries += len(queries)
        if not self.batching:
            return await self._retrieve_alone(queries, topk)

        loop = asyncio.get_running_loop()
        results: list[Hits | None] = [None] * len(queries)
        waits: list[tuple[int, _Item]] = []
        for position, query in enumerate(queries):
            key = (query, topk)
            cached = self._cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                results[position] = cached
                continue
            item = self._inflight.get(key)
            if item is not None:
                self.stats.coalesced += 1
                item.waiters += 1
            else:
                item = _Item(query, topk, loop.create_future(), loop.time())
                self._inflight[key] = item
                self._queue.append(item)
                self._queued += 1
            waits.append((position, item))
        if waits:
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                # shield: a caller that goes away must not cancel a future other callers share.
                done = await asyncio.gather(*(asyncio.shield(item.future) for _, item in waits))
            except asyncio.CancelledError:
                self._abandon([item for _, item in waits])
                raise
            for (position, _), hits in zip(waits, done, strict=True):
                results[position] = hits
        return results  # type: ignore[return-value]

    def _abandon(self, items: list[_Item]) -> None:
        """The caller of ``items`` went away: drop each one no other caller waits for."""
        self.stats.abandoned += 1
        for item in items:
            item.waiters -= 1
            if item.waiters > 0 or item.future.done() or item.dropped:
                continue
            item.dropped = True
            self.stats.dropped += 1
            if self._inflight.get((item.query, item.topk)) is item:
                del self._inflight[(item.query, item.topk)]
            if not item.started:
                self._queued -= 1
            item.future.cancel()

    async def _retrieve_alone(self, queries: list[str], topk: int) -> list[Hits]:
        self._running += len(queries)
        try:
            return await self._run_search(queries, topk)
        finally:
            self._running -= len(queries)

    async def _run_search(
        self, queries: list[str], topk: int, still_wanted: Callable[[], list[bool]] | None = None
    ) -> list[Hits]:
        search = self._search
        assert search is not None

        def timed() -> tuple[list[Hits], float]:
            start = time.perf_counter()
            if still_wanted is not None and self._search_checks:
                out = search(queries, topk, still_wanted=still_wanted)  # type: ignore[call-arg]
            else:
                out = search(queries, topk)
            return out, time.perf_counter() - start

        self.stats.batches += 1
        self.stats.searched += len(queries)
        self.stats.largest_batch = max(self.stats.largest_batch, len(queries))
        try:
            hits, elapsed = await self.run_in_worker(timed)
        except Exception as exc:
            self.stats.failed_batches += 1
            logger.exception("search failed for a batch of %d queries", len(queries))
            raise BatchFailedError(f"retrieval failed for this batch: {type(exc).__name__}: {exc}") from exc
        self.stats.busy_s += elapsed
        if len(hits) != len(queries):
            self.stats.failed_batches += 1
            raise BatchFailedError(f"search returned {len(hits)} results for {len(queries)} queries")
        return hits

    # -- batch loop ------------------------------------------------------------------------------------
    def _trim(self) -> None:
        """Forget dropped items at the front of the queue."""
        while self._queue and self._queue[0].dropped:
            self._queue.popleft()

    async def _next_batch(self) -> list[_Item]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._trim()
            if self._queue:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        # Under load the oldest item has waited long enough already and this returns at once.
        deadline = self._queue[0].enqueued + self.max_wait_s
        while self._queued < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if not item.dropped:
                item.started = True
                batch.append(item)
        self._queued -= len(batch)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:  # every item was dropped while the batch was being formed
                continue
            self._running = len(batch)
            try:
                await self._execute(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die: it is the only consumer of the queue
                logger.exception("unexpected error in the batch loop")
                self.stats.failed_batches += 1
                self._fail(batch, f"batch aborted: {type(exc).__name__}: {exc}")
            finally:
                self._running = 0

    def _fail(self, batch: list[_Item], message: str) -> None:
        """Fail every caller of ``batch`` still waiting (no caller may wait forever)."""
        for item in batch:
            if self._inflight.get((item.query, item.topk)) is item:
                del self._inflight[(item.query, item.topk)]
            if not item.future.done():
                item.future.set_exception(BatchFailedError(message))

    async def _execute(self, batch: list[_Item]) -> None:
        by_text: dict[str, list[_Item]] = {}
        for item in batch:
            by_text.setdefault(item.query, []).append(item)
        distinct = list(by_text)
        self.stats.batch_duplicates += len(batch) - len(distinct)
        k = max(item.topk for item in batch)

        def still_wanted() -> list[bool]:  # read on the worker thread; a stale answer only costs some work
            return [not all(item.dropped for item in by_text[query]) for query in distinct]

        try:
            hits = await self._run_search(distinct, k, still_wanted)
        except BaseException as exc:
            self._fail(batch, str(exc) if isinstance(exc, BatchFailedError) else f"batch aborted: {exc!r}")
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        by_query = dict(zip(distinct, hits, strict=True))
        for item in batch:
            if item.dropped:
                continue  # nobody waits for it, and a skipped search has no hits worth caching
            key = (item.query, item.topk)
            result = by_query[item.query][: item.topk]
            self._cache.put(key, result)
            self._inflight.pop(key, None)
            if not item.future.done():
                item.future.set_result(result)
