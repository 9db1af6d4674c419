"""The retriever client against a real HTTP fake on 127.0.0.1: results, retries, replicas, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from conftest import free_port
from fake_retriever import FakeRetriever, serve_fake_retriever

from search_r1_oai.config import Settings
from search_r1_oai.httpclients import aclose_clients, shared_client
from search_r1_oai.search_client import (
    Passage,
    SearchClient,
    SearchError,
    format_passages,
    format_search_results,
    passage_from_item,
)

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
