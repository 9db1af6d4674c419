"""The real ``SearchClient`` against the real retriever app (``retriever.api.create_app``) with a stub engine.

No model, no index: the stub engine answers deterministic passages (or raises), and everything between it and the
client is production code: the app's request validation and limits, its batcher, its error mapping, uvicorn on a
free 127.0.0.1 port, the client's pooled httpx, retries and reply parsing. So a change to either side of the
``/retrieve`` contract fails here in well under a second, without the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from retriever.api import create_app
from retriever.settings import Settings as RetrieverSettings
from search_r1_oai.config import Settings
from search_r1_oai.httpclients import aclose_clients
from search_r1_oai.replicas import ReplicaSet
from search_r1_oai.search_client import Passage, SearchClient, SearchError
from tests.support.live_server import serve_app

MAX_QUERY_CHARS = 40
MAX_QUERIES = 4


@dataclass
class StubEngine:
    """What the app needs from an engine: ``size``, ``model_name`` and ``search``; records every search call.

    Passage ``i`` of query ``q`` is ``Title i of q``; ``failures`` makes that many next calls raise.
    """

    size: int = 1000
    model_name: str = "stub-encoder"
    failures: int = 0
    calls: list[tuple[list[str], int]] = field(default_factory=list)

    def search(self, queries: list[str], k: int) -> list[list[tuple[dict[str, Any], float]]]:
        self.calls.append((list(queries), k))
        if self.failures:
            self.failures -= 1
            raise RuntimeError("index shard 3 is unreadable")
        return [[(document(query, i), 1.0 - i / 100) for i in range(k)] for query in queries]


def document(query: str, i: int) -> dict[str, str]:
    title, text = f"Title {i} of {query}", f"Passage {i} about {query}."
    return {"id": f"{query}#{i}", "contents": f'"{title}"\n{text}', "title": title, "text": text}


def passage(query: str, i: int) -> Passage:
    return Passage(title=f"Title {i} of {query}", text=f"Passage {i} about {query}.")


@contextlib.contextmanager
def serve_retriever(load_engine: Callable[[], Any], *, wait_ready: bool = True) -> Iterator[str]:
    """The real app on a free port; with ``wait_ready``, yielded once /health says the engine is loaded."""
    settings = RetrieverSettings(
        index_path="unused.index",
        corpus_path="unused.jsonl",
        topk=3,
        max_wait_ms=1.0,
        max_query_chars=MAX_QUERY_CHARS,
        max_queries=MAX_QUERIES,
    )
    with serve_app(create_app(settings, load_engine=load_engine), name="retriever", lifespan="on") as url:
        if wait_ready:
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/health", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "the retriever app did not load its stub engine within 10 s"
                time.sleep(0.005)
        yield url


def client_for(url: str, **overrides: Any) -> SearchClient:
    """A client with fast retries and its own replica set (no state shared with other tests)."""
    options: dict[str, Any] = {
        "retry_initial_wait_s": 0.01,
        "retry_max_wait_s": 0.05,
        "retrieval_retries": 1,
        "retrieval_timeout_s": 10.0,
    }
    settings = Settings(retrieval_urls=(url,), **(options | overrides))
    return SearchClient(settings, replicas=ReplicaSet(settings.retrieval_urls))


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await aclose_clients()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[StubEngine, str]]:
    """One app for the module (a uvicorn stop costs ~0.2 s); every test searches queries of its own, so the app's
    cache never answers for another test."""
    engine = StubEngine()
    with serve_retriever(lambda: engine) as base:
        yield engine, base


@pytest.fixture
def engine(served: tuple[StubEngine, str]) -> StubEngine:
    """The served stub engine, with no recorded calls and no pending failures."""
    stub = served[0]
    stub.calls.clear()
    stub.failures = 0
    return stub


@pytest.fixture
def url(served: tuple[StubEngine, str]) -> str:
    return served[1]


# -- answers --------------------------------------------------------------------------------------------------------


async def test_passages_come_back_per_query_in_order(engine: StubEngine, url: str) -> None:
    queries = ["who wrote dune", "capital of peru", "boiling point of water"]
    result = await client_for(url, topk=3).retrieve(queries)
    assert result.passages == [[passage(q, i) for i in range(3)] for q in queries]
    assert result.attempts == 1
    assert result.replica == url
    assert 0 < result.latency_s < 5
    assert engine.calls == [(queries, 3)]


@pytest.mark.parametrize("topk", [1, 2, 5])
async def test_topk_is_sent_and_respected(engine: StubEngine, url: str, topk: int) -> None:
    result = await client_for(url, topk=topk).retrieve(["alpha", "beta"])
    assert [len(found) for found in result.passages] == [topk, topk]
    assert result.passages[1] == [passage("beta", i) for i in range(topk)]
    assert engine.calls == [(["alpha", "beta"], topk)]


async def test_repeated_query_is_answered_in_every_position(engine: StubEngine, url: str) -> None:
    result = await client_for(url, topk=2).retrieve(["same", "other", "same"])
    assert result.passages == [[passage(q, i) for i in range(2)] for q in ["same", "other", "same"]]
    # The app's batcher searches each distinct query once; the client still gets one list per position.
    assert engine.calls == [(["same", "other"], 2)]


async def test_second_search_is_served_from_the_app_cache(engine: StubEngine, url: str) -> None:
    client = client_for(url, topk=2)
    first = await client.retrieve(["cached query"])
    second = await client.retrieve(["cached query"])
    assert first.passages == second.passages == [[passage("cached query", 0), passage("cached query", 1)]]
    assert len(engine.calls) == 1


# -- refusals: 4xx is the request's fault, never retried --------------------------------------------------------------


async def test_too_long_query_is_a_422_with_the_server_message(engine: StubEngine, url: str) -> None:
    query = "x" * (MAX_QUERY_CHARS + 1)
    with pytest.raises(SearchError) as caught:
        await client_for(url).retrieve(["fine", query])
    error = caught.value
    assert str(error).startswith("retriever failed after 1 attempt(s): it answered HTTP 422: ")
    assert str(error).endswith(
        f"has {MAX_QUERY_CHARS + 1} characters; the limit is {MAX_QUERY_CHARS} (--max_query_chars)"
    )
    assert f"queries[1] has {MAX_QUERY_CHARS + 1} characters" in error.detail
    assert error.attempts == 1
    assert error.replicas_tried == (url,)
    assert engine.calls == []


async def test_server_message_keeps_the_position_of_the_bad_query(url: str) -> None:
    with pytest.raises(SearchError) as caught:
        await client_for(url).retrieve(["fine", "x" * (MAX_QUERY_CHARS + 1)])
    assert f"queries[1] has {MAX_QUERY_CHARS + 1} characters" in str(caught.value)


async def test_too_many_queries_is_a_422_with_the_server_message(engine: StubEngine, url: str) -> None:
    queries = [f"q{i}" for i in range(MAX_QUERIES + 1)]
    with pytest.raises(SearchError, match=rf"HTTP 422: too many queries: {MAX_QUERIES + 1} > {MAX_QUERIES}"):
        await client_for(url).retrieve(queries)
    assert engine.calls == []


async def test_empty_query_list_never_reaches_the_server(engine: StubEngine, url: str) -> None:
    with pytest.raises(SearchError, match="no queries to search") as caught:
        await client_for(url).retrieve([])
    assert caught.value.attempts == 0
    assert engine.calls == []


async def test_topk_over_the_app_maximum_is_refused_by_validation(engine: StubEngine, url: str) -> None:
    with pytest.raises(SearchError, match=r"HTTP 422: topk: Input should be less than or equal to 100") as caught:
        await client_for(url, topk=101).retrieve(["q"])
    assert caught.value.attempts == 1


# -- server failures: 5xx is retried, then reported -------------------------------------------------------------------


async def test_engine_exception_is_a_500_retried_then_a_search_error(engine: StubEngine, url: str) -> None:
    engine.failures = 3
    client = client_for(url, retrieval_retries=2)
    with pytest.raises(SearchError) as caught:
        await client.retrieve(["unlucky query"])
    error = caught.value
    assert error.attempts == 3
    assert str(error) == (
        "retriever failed after 3 attempt(s): it answered HTTP 500: "
        "retrieval failed for this batch: RuntimeError: index shard 3 is unreadable"
    )
    assert "127.0.0.1" not in str(error)  # the policy never reads addresses...
    assert f"tried {url}, {url}, {url}" in error.detail  # ...the logs and metadata do
    assert engine.calls == [(["unlucky query"], 3)] * 3
    # A failed batch is not cached: the next search of the same query reaches the engine and succeeds.
    assert (await client.retrieve(["unlucky query"])).passages == [[passage("unlucky query", i) for i in range(3)]]


async def test_engine_failure_then_success_is_retried(engine: StubEngine, url: str) -> None:
    engine.failures = 1
    result = await client_for(url, retrieval_retries=1, topk=1).retrieve(["flaky query"])
    assert result.attempts == 2
    assert result.passages == [[passage("flaky query", 0)]]
    assert len(engine.calls) == 2


async def test_engine_still_loading_is_a_503_with_the_server_message() -> None:
    release = threading.Event()

    def slow_load() -> StubEngine:
        release.wait(10)
        return StubEngine()

    try:
        with serve_retriever(slow_load, wait_ready=False) as base:
            with pytest.raises(SearchError) as caught:
                await client_for(base, retrieval_retries=1).retrieve(["q"])
            release.set()
    finally:
        release.set()
    assert str(caught.value) == (
        "retriever failed after 2 attempt(s): it answered HTTP 503: retriever not ready: still loading"
    )
