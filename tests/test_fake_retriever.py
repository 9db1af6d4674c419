"""The fake retriever speaks the real server's schema: it validates with the server's request model and answers
with its response model, so a schema change in ``local_dense_retriever/retriever/api.py`` reaches the client tests."""

from __future__ import annotations

import httpx

from local_dense_retriever.retriever import api
from local_dense_retriever.retriever.settings import MAX_TOPK
from tests.support import fake_retriever
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever


def test_the_fake_uses_the_servers_models() -> None:
    assert fake_retriever.RetrieveRequest is api.RetrieveRequest
    assert fake_retriever.RetrieveResponse is api.RetrieveResponse


def test_the_fake_refuses_what_the_server_refuses() -> None:
    fake = FakeRetriever()
    with serve_fake_retriever(fake) as url:
        for body in (
            {"queries": []},
            {"queries": [1]},  # strict: a number is not a query
            {"queries": ["a"], "topk": "3"},  # strict: a string is not a topk
            {"queries": ["a"], "topk": MAX_TOPK + 1},
            {"queries": ["a"], "return_scores": "yes"},
        ):
            assert httpx.post(f"{url}/retrieve", json=body).status_code == 422, body
    assert fake.requests == []


def test_the_fake_answers_in_the_servers_response_shape() -> None:
    fake = FakeRetriever(default_topk=2)
    with serve_fake_retriever(fake) as url:
        plain = httpx.post(f"{url}/retrieve", json={"queries": ["x", "y"]}).json()
        scored = httpx.post(f"{url}/retrieve", json={"queries": ["x"], "topk": 1, "return_scores": True}).json()
    assert [len(per_query) for per_query in api.RetrieveResponse.model_validate(plain).result] == [2, 2]
    assert set(plain["result"][0][0]) == {"id", "contents", "title", "text"}
    assert set(scored["result"][0][0]) == {"document", "score"}
    assert fake.requests[0] == {"queries": ["x", "y"], "topk": None, "return_scores": False}
