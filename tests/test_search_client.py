"""The retriever client against a real HTTP fake on 127.0.0.1: results, retries, replicas, failures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from search_r1_oai import search_client
from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.httpclients import aclose_clients, shared_client
from search_r1_oai.replicas import ReplicaSet
from search_r1_oai.search_client import (
    Passage,
    RetrievalResult,
    SearchClient,
    SearchError,
    format_passages,
    format_search_results,
    passage_from_item,
    scrub_addresses,
)
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.live_server import free_port, serve_app

FAST = Settings(retry_initial_wait_s=0.01, retry_max_wait_s=0.05, retrieval_retries=2, retrieval_timeout_s=5)


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await aclose_clients()


def settings_for(*urls: str, **overrides) -> Settings:
    return dataclasses.replace(FAST, retrieval_urls=tuple(urls), **overrides)


async def test_results_come_back_per_query_in_order(toy_corpus_files) -> None:
    corpus = [json.loads(line) for line in toy_corpus_files[0].read_text().splitlines()]
    fake = FakeRetriever(corpus=corpus)
    with serve_fake_retriever(fake) as url:
        result = await SearchClient(settings_for(url, topk=2)).retrieve(["alpha query", "beta query", "gamma"])
    assert len(result.passages) == 3
    assert all(len(found) == 2 for found in result.passages)
    assert fake.requests == [{"queries": ["alpha query", "beta query", "gamma"], "topk": 2, "return_scores": False}]
    expected = [[_passage(row) for row in fake.passages(q, 2)] for q in ["alpha query", "beta query", "gamma"]]
    assert result.passages == expected
    assert result.attempts == 1 and result.latency_s > 0
    assert result.replica == url


def _passage(row: dict) -> Passage:
    return Passage(title=row["title"], text=row["text"])


async def test_5xx_then_ok_is_retried() -> None:
    fake = FakeRetriever(fail_next=2, fail_status=503)
    with serve_fake_retriever(fake) as url:
        result = await SearchClient(settings_for(url)).retrieve(["q"])
    assert result.attempts == 3
    assert len(fake.requests) == 3
    assert result.passages[0][0].title == "Title 0 of q"


async def test_429_is_retried_too() -> None:
    fake = FakeRetriever(fail_next=1, fail_status=429)
    with serve_fake_retriever(fake) as url:
        result = await SearchClient(settings_for(url)).retrieve(["q"])
    assert result.attempts == 2


async def test_5xx_beyond_the_retry_budget_fails_with_the_status() -> None:
    fake = FakeRetriever(fail_next=10, fail_status=500)
    with serve_fake_retriever(fake) as url, pytest.raises(SearchError, match=r"after 3 attempt.*HTTP 500.*scripted"):
        await SearchClient(settings_for(url)).retrieve(["q"])
    assert len(fake.requests) == 3


async def test_4xx_is_not_retried_and_carries_the_detail() -> None:
    fake = FakeRetriever(fail_next=5, fail_status=400)
    with serve_fake_retriever(fake) as url, pytest.raises(SearchError, match=r"after 1 attempt.*HTTP 400.*scripted"):
        await SearchClient(settings_for(url)).retrieve(["q"])
    assert len(fake.requests) == 1


async def test_validation_error_of_the_server_is_reported() -> None:
    with serve_fake_retriever(FakeRetriever()) as url, pytest.raises(SearchError, match=r"HTTP 422"):
        await SearchClient(settings_for(url, topk=0)).retrieve(["q"])


async def test_down_server_fails_after_bounded_attempts() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SearchError, match=r"after 3 attempt.*cannot reach"):
        await SearchClient(settings_for(url)).retrieve(["q"])


async def test_slow_server_times_out() -> None:
    fake = FakeRetriever(delay_s=1.0)
    with serve_fake_retriever(fake) as url, pytest.raises(SearchError, match=r"timed out"):
        await SearchClient(settings_for(url, retrieval_timeout_s=0.2, retrieval_retries=1)).retrieve(["q"])
    assert len(fake.requests) == 2


async def test_replicas_are_balanced_and_a_down_one_is_skipped() -> None:
    first, second = FakeRetriever(), FakeRetriever()
    with serve_fake_retriever(first) as url_a, serve_fake_retriever(second) as url_b:
        client = SearchClient(settings_for(url_a, url_b))
        for i in range(6):
            await client.retrieve([f"q{i}"])
        assert len(first.requests) == 3 and len(second.requests) == 3

        dead = f"http://127.0.0.1:{free_port()}"
        client = SearchClient(settings_for(dead, url_a))
        for i in range(4):
            result = await client.retrieve([f"r{i}"])
            assert result.passages[0][0].text == f"Passage 0 about r{i}."
        assert len(first.requests) == 3 + 4


async def test_many_concurrent_requests_are_spread_over_small_pools() -> None:
    """httpcore's pool rescans every connection for each idle or queued one on every request start and end
    (encode/httpx#3215): one client holding hundreds of connections burns a CPU core. Requests must be spread over
    clients that each see only a few of them, and still all succeed."""
    fake = FakeRetriever(delay_s=0.2)
    with serve_fake_retriever(fake) as url:
        settings = settings_for(url, concurrency=64)
        clients = {id(shared_client("retriever", settings, settings.retrieval_timeout_s)) for _ in range(64)}
        assert len(clients) == 8
        results = await asyncio.gather(*(SearchClient(settings).retrieve([f"q{i}"]) for i in range(64)))
    assert [r.passages[0][0].text for r in results] == [f"Passage 0 about q{i}." for i in range(64)]
    small = dataclasses.replace(FAST, concurrency=8)
    assert shared_client("retriever", small, 5.0) is shared_client("retriever", small, 5.0), "a small pool: one client"


async def test_empty_query_list_is_refused_locally() -> None:
    with pytest.raises(SearchError, match="no queries"):
        await SearchClient(FAST).retrieve([])


def test_passage_from_contents_only() -> None:
    assert passage_from_item({"id": "1", "contents": '"Paris"\nParis is the capital.'}) == Passage(
        "Paris", "Paris is the capital."
    )
    with pytest.raises(SearchError):
        passage_from_item({"id": "1"})


def test_formatting_numbers_docs_with_titles() -> None:
    docs = [Passage("A", "alpha text"), Passage("B", "beta text")]
    assert format_passages(docs) == "Doc 1 (Title: A) alpha text\nDoc 2 (Title: B) beta text"
    assert format_passages([]) == "No passages found."
    two = format_search_results(["x", "y"], [docs[:1], docs[1:]])
    assert two == 'Results for "x":\nDoc 1 (Title: A) alpha text\n\nResults for "y":\nDoc 1 (Title: B) beta text'


# -- failover between replicas --------------------------------------------------------------------------------------

CONCURRENT_SEARCHES = 200


async def _search_all(client: SearchClient, count: int) -> list[RetrievalResult | BaseException]:
    """``count`` concurrent one-query searches, bounded in time; failures come back as exceptions."""
    searches = (client.retrieve([f"q{i}"]) for i in range(count))
    return await asyncio.wait_for(asyncio.gather(*searches, return_exceptions=True), timeout=120)


async def test_with_one_replica_of_two_dead_no_search_fails() -> None:
    """The issue's case: every retry of a search used to draw the replica from one shared counter, so four coin flips
    failed a few percent of searches for good. Now a search that meets the dead replica moves to the live one."""
    live = FakeRetriever()
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_fake_retriever(live) as url:
        results = await _search_all(SearchClient(settings_for(dead, url, retrieval_retries=3)), CONCURRENT_SEARCHES)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert [r.passages[0][0].text for r in results] == [f"Passage 0 about q{i}." for i in range(CONCURRENT_SEARCHES)]
    assert {r.replica for r in results} == {url}
    assert {r.attempts for r in results} <= {1, 2}, "one failed attempt at most: the next goes to the live replica"
    assert len(live.requests) == CONCURRENT_SEARCHES


async def test_with_one_replica_answering_503_no_search_fails() -> None:
    overloaded, live = FakeRetriever(fail_next=10**9, fail_status=503), FakeRetriever()
    with serve_fake_retriever(overloaded) as bad_url, serve_fake_retriever(live) as url:
        results = await _search_all(SearchClient(settings_for(bad_url, url, retrieval_retries=3)), CONCURRENT_SEARCHES)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert {r.replica for r in results} == {url} and {r.attempts for r in results} <= {1, 2}
    assert len(overloaded.requests) == sum(r.attempts - 1 for r in results)
    assert len(live.requests) == CONCURRENT_SEARCHES


async def test_a_dead_replica_is_skipped_by_every_later_search_and_client() -> None:
    """One ReplicaSet per process and replica list: what one search learned saves every other search (and every
    other SearchClient) the attempt. The clock is frozen so the skip cannot run out during the test."""
    live = FakeRetriever()
    dead = f"http://127.0.0.1:{free_port()}"
    with serve_fake_retriever(live) as url:
        frozen = ReplicaSet([dead, url], clock=lambda: 0.0)
        settings = settings_for(dead, url)
        first = await SearchClient(settings, replicas=frozen).retrieve(["first"])
        assert (first.attempts, first.replica) == (2, url), "the rotation starts at the dead replica"
        later = [await SearchClient(settings, replicas=frozen).retrieve([f"q{i}"]) for i in range(10)]
        assert [r.attempts for r in later] == [1] * 10 and {r.replica for r in later} == {url}

        shared = settings_for(f"http://127.0.0.1:{free_port()}", url)
        context = RolloutContext(shared, None, "http://unused")
        search = context.tools["search"].client
        await search.retrieve(["learn"])
        await search.retrieve(["learn"])
        assert search.replicas.is_skipped(shared.retrieval_urls[0])
        another = SearchClient(shared, replicas=search.replicas)
        other = [await another.retrieve([f"r{i}"]) for i in range(4)]
        assert [r.attempts for r in other] == [1] * 4, "another client shares the process's view of the replicas"
        await context.aclose()


async def test_a_replica_that_comes_back_rejoins_after_its_probe() -> None:
    port = free_port()
    down_then_up = f"http://127.0.0.1:{port}"
    now = [0.0]
    other, returning = FakeRetriever(), FakeRetriever()
    with serve_fake_retriever(other) as url:
        replicas = ReplicaSet([down_then_up, url], skip_s=5.0, clock=lambda: now[0])
        client = SearchClient(settings_for(down_then_up, url), replicas=replicas)
        assert (await client.retrieve(["a"])).attempts == 2
        with serve_fake_retriever(returning, port=port):
            assert (await client.retrieve(["b"])).replica == url, "still skipped"
            now[0] += 5.0
            probe = await client.retrieve(["c"])
            assert (probe.attempts, probe.replica) == (1, down_then_up)
            spread = [(await client.retrieve([f"d{i}"])).replica for i in range(4)]
    assert sorted(spread) == sorted([down_then_up, url] * 2)
    assert len(returning.requests) == 3


# -- what the policy reads, and what the logs and metadata get ------------------------------------------------------


@contextlib.contextmanager
def _down() -> Iterator[tuple[str, object]]:
    yield f"http://127.0.0.1:{free_port()}", None


@contextlib.contextmanager
def _serving(fake: FakeRetriever) -> Iterator[tuple[str, object]]:
    with serve_fake_retriever(fake) as url:
        yield url, fake


FAILURES = {
    "down": (_down, {}, r"^retriever failed after 3 attempt\(s\): cannot reach the server \(connection refused"),
    "5xx": (
        lambda: _serving(FakeRetriever(fail_next=10, fail_status=500)),
        {},
        r"^retriever failed after 3 attempt\(s\): it answered HTTP 500: scripted failure$",
    ),
    "4xx": (
        lambda: _serving(FakeRetriever()),
        {"topk": 0},
        r"^retriever failed after 1 attempt\(s\): it answered HTTP 422: topk: Input should be greater than or equal",
    ),
    "timeout": (
        lambda: _serving(FakeRetriever(delay_s=1.0)),
        {"retrieval_timeout_s": 0.2, "retrieval_retries": 1},
        r"^retriever failed after 2 attempt\(s\): timed out: no reply within 0\.2 s$",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_the_policy_reads_what_happened_without_any_address(case: str) -> None:
    serve, overrides, expected = FAILURES[case]
    with serve() as (url, _), pytest.raises(SearchError) as caught:
        await SearchClient(settings_for(url, **overrides)).retrieve(["q"])
    error = caught.value
    port = url.rsplit(":", 1)[1]
    message = str(error)
    assert re.search(expected, message), message
    assert "http" not in message and "127.0.0.1" not in message and port not in message
    assert url in error.detail and error.detail.startswith(message.split(":")[0])
    assert error.attempts == len(error.replicas_tried) and set(error.replicas_tried) == {url}


async def test_addresses_in_the_servers_own_message_are_blanked() -> None:
    app = FastAPI()
    leaky = "upstream http://10.0.0.7:9000/x failed; see 127.0.0.1:8000, localhost:81, [::1]:82 and retriever-0:8001"

    @app.post("/retrieve")
    async def retrieve() -> JSONResponse:
        return JSONResponse({"detail": leaky}, status_code=400)

    with serve_app(app) as url:
        settings = settings_for(url)
        replicas = ReplicaSet([url, "http://retriever-0:8001"])
        with pytest.raises(SearchError) as caught:
            await SearchClient(settings, replicas=replicas).retrieve(["q"])
    message = str(caught.value)
    assert message.endswith("upstream <address> failed; see <address>, <address>, <address> and <address>"), message
    assert leaky in caught.value.detail


def test_scrub_addresses_keeps_ordinary_numbers() -> None:
    text = "120 queries already waiting (limit 100); retry later"
    assert scrub_addresses(text) == text
    assert scrub_addresses("queries[1] is too long, [2001:db8::7]:9 down") == "queries[1] is too long, <address> down"
    assert scrub_addresses("at https://x.example/a?b=1 now") == "at <address> now"
    assert scrub_addresses("host gpu-node-3:8000 down", ("gpu-node-3",)) == "host <address> down"


async def test_a_malformed_reply_names_the_replica_in_the_detail_only() -> None:
    app = FastAPI()

    @app.post("/retrieve")
    async def retrieve() -> JSONResponse:
        return JSONResponse({"oops": "no result"})

    with serve_app(app) as url, pytest.raises(SearchError, match="no 'result' list") as caught:
        await SearchClient(settings_for(url)).retrieve(["q"])
    assert url not in str(caught.value) and url in caught.value.detail
    assert caught.value.attempts == 1 and caught.value.replicas_tried == (url,)


async def test_failures_are_logged_with_their_urls_at_most_once_per_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    monkeypatch.setattr(search_client, "_warn_search_failed", search_client._ThrottledWarning(10.0, lambda: now[0]))
    dead = f"http://127.0.0.1:{free_port()}"
    client = SearchClient(settings_for(dead, retrieval_retries=0))
    with caplog.at_level(logging.WARNING, logger="search_r1_oai.search_client"):
        for _ in range(5):
            with pytest.raises(SearchError):
                await client.retrieve(["q"])
        now[0] += 10.0
        with pytest.raises(SearchError):
            await client.retrieve(["q"])
    lines = [r.getMessage() for r in caplog.records if r.name == "search_r1_oai.search_client"]
    assert len(lines) == 2 and all(dead in line for line in lines)
    assert lines[1].endswith("(+4 more failed searches not logged)")


async def test_a_reply_larger_than_the_limit_is_refused_by_its_length_and_not_retried() -> None:
    """A retriever that sends megabytes (a reply of 1.5 MiB here) cannot make the process parse them: the search
    fails with a message naming the setting, and the same replica is not asked again."""
    size = 3 * 2**18  # 0.75 MiB, in both the passage's contents and its text

    def huge(body: dict) -> None:
        body["result"][0][0].update(contents='"Big"\n' + "x" * size, text="x" * size)

    fake = FakeRetriever(edit=huge)
    with serve_fake_retriever(fake) as url, pytest.raises(SearchError) as caught:
        await SearchClient(settings_for(url, retrieval_max_reply_mb=1.0)).retrieve(["q"])
    assert "larger than 1 MiB (SEARCH_R1_RETRIEVAL_MAX_REPLY_MB)" in str(caught.value)
    assert caught.value.attempts == 1 and len(fake.requests) == 1
    with serve_fake_retriever(FakeRetriever(edit=huge)) as url:
        result = await SearchClient(settings_for(url, retrieval_max_reply_mb=4.0)).retrieve(["q"])
    assert result.passages[0][0].text == "x" * size, "under the limit it is read whole"


async def test_an_endless_chunked_reply_is_read_no_further_than_the_limit() -> None:
    """No Content-Length (chunked) and no end: reading stops at the limit (a client that read on would time out
    instead), and the server sees the client go."""
    app = FastAPI()
    stopped = threading.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b" " * 65536  # JSON whitespace, forever
                await asyncio.sleep(0)
        finally:
            stopped.set()

    @app.post("/retrieve")
    async def retrieve() -> StreamingResponse:
        return StreamingResponse(endless(), media_type="application/json")

    with serve_app(app) as url:
        with pytest.raises(SearchError, match=r"larger than 1 MiB") as caught:
            await SearchClient(settings_for(url, retrieval_max_reply_mb=1.0, retrieval_timeout_s=30)).retrieve(["q"])
        assert caught.value.attempts == 1
        assert await asyncio.to_thread(stopped.wait, 10), "the server kept sending to a client that had gone"
