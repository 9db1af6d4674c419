"""Tool results the rollout can always use: bounded (characters, then tokens) before anything tokenizes them, and
valid Unicode however the policy or the retriever spelled them; real servers on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys

import pytest

from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    new_sample,
    observation_texts,
    run_sample,
)
from tests.support.sglang_mock import Reply
from tests.support.slime_stub import Sample

pytestmark = pytest.mark.usefixtures("close_rollout_contexts")


def search_call(query_json: str) -> str:
    """A search call whose query is given as raw JSON text (so it can hold escapes such as ``\\ud800``)."""
    return f'<tool_call>\n{{"name": "search", "arguments": {{"queries": [{query_json}]}}}}\n</tool_call>{IM_END}'


def huge_first_passage(answer_body: dict) -> None:
    answer_body["result"][0][0]["text"] = "ledger entry " * 250_000  # 3.25 MB


@pytest.mark.parametrize(
    ("max_chars", "max_tokens", "note"),
    [
        (32768, 4096, "[cut: the result was longer than 4096 tokens; the first 4096 are shown]"),
        (600, 4096, "[cut: the result had"),
        (600, 50, "[cut: the result was longer than 50 tokens; the first 50 are shown]"),
    ],
)
async def test_a_megabyte_tool_result_is_cut_before_it_is_tokenized(
    mock, qwen_tokenizer, max_chars: int, max_tokens: int, note: str
) -> None:
    q = f"What does the Brannock ledger say ({max_chars}, {max_tokens})?"
    mock.script(q, [search_call('"Brannock ledger"'), answer("Gold")])
    fake = FakeRetriever(edit=huge_first_passage)
    with serve_fake_retriever(fake) as url:
        settings = dataclasses.replace(
            FAST,
            retrieval_urls=(url,),
            context_budget=32768,
            tool_result_max_chars=max_chars,
            tool_result_max_tokens=max_tokens,
        )
        sample = await run_sample(
            new_sample(q), dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=mock.url, settings=settings
        )
    assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
    assert_token_exact(sample, mock.requests_for(q))
    [observation] = observation_texts(sample, qwen_tokenizer)
    assert note in observation
    assert "ledger entry" in observation
    glue = 60  # the template's tool-message wrapping and the note
    assert len(qwen_tokenizer.encode(observation, add_special_tokens=False)) <= max_tokens + glue
    assert len(observation) <= max_chars + 200


async def test_lone_surrogates_from_the_policy_and_the_retriever_never_raise(mock, qwen_tokenizer) -> None:
    """The policy escapes a lone surrogate in its JSON, the retriever sends one in a passage: the search runs with
    U+FFFD, the tool message holds U+FFFD, the trajectory log writes (strict UTF-8) without an error."""
    q = "Who wrote the Vell tower chronicle?"
    # The mock writes its reply with ASCII escapes (corrupt does nothing): JSONResponse cannot encode a surrogate.
    mock.script(q, [Reply(search_call('"Vell \\ud800 tower"'), corrupt=lambda r: None), answer("Gold")])

    def surrogate_passage(answer_body: dict) -> None:
        answer_body["result"][0][0].update(title="Vell \ud800", text="chronicle \udfff text")

    fake = FakeRetriever(edit=surrogate_passage)
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    errors: list[BaseException] = []

    class StrictHandler(logging.StreamHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            errors.append(sys.exc_info()[1])

    handler = StrictHandler(stream)
    logger = logging.getLogger("search_r1_oai")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with serve_fake_retriever(fake) as url:
            settings = dataclasses.replace(FAST, retrieval_urls=(url,), log_every=1)
            sample = await run_sample(
                new_sample(q), dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=mock.url, settings=settings
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert errors == []
    assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
    assert_token_exact(sample, mock.requests_for(q))
    assert fake.requests[0]["queries"] == ["Vell \ufffd tower"]
    assert sample.metadata["queries"] == ["Vell \ufffd tower"]
    [observation] = observation_texts(sample, qwen_tokenizer)
    assert "Doc 1 (Title: Vell \ufffd) chronicle \ufffd text" in observation
    handler.flush()
    assert "trajectory eval=False status=COMPLETED" in stream.buffer.getvalue().decode("utf-8")
