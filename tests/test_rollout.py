"""Scenario tests of the rollout: real httpx against an SGLang server and the fake retriever on 127.0.0.1.

Each scenario runs three times: against the SGLang mock, and against SGLang's real serving code of each release
in ``real_sglang.SGLANG_VERSIONS`` with a scripted engine (``tests/support/real_sglang.py``, see tests/SGLANG_VERSIONS.md).
Every scenario checks the token-exact invariant with :func:`assert_token_exact`, which recomputes it
independently from what the server recorded (the engine's conditioning ids, sampled ids and logprobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable

import httpx
import pytest

from generate_with_search_oai import STATE_KEY, reward_func
from search_r1_oai.chat_client import NEUTRAL_SAMPLING, ChatClient, TurnOutput
from search_r1_oai.config import Settings
from search_r1_oai.prompts import build_messages, tools_json
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.live_server import free_port
from tests.support.real_sglang import SGLANG_VERSIONS
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    call,
    close_contexts,
    new_sample,
    observation_texts,
    run_sample,
)
from tests.support.sglang_mock import TOP_K_ALL, MockSGLang, Reply, serve_mock_sglang
from tests.support.slime_stub import Sample

# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await close_contexts()


@pytest.fixture(
    scope="module",
    params=["mock", *(pytest.param(version, marks=pytest.mark.e2e) for version in SGLANG_VERSIONS)],
    ids=lambda v: v if v == "mock" else f"sglang-{v}",
)
def mock(request, qwen_tokenizer):
    """The policy server of the scenarios: the mock, then SGLang's real serving code of each release the tests run
    (scripted engine, see tests/support/real_sglang.py); all three expose the same scripting and recording API."""
    if request.param != "mock":
        try:
            yield request.getfixturevalue("real_sglang_servers").get(request.param)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    with serve_mock_sglang(mock) as url:
        mock.url = url
        yield mock


@pytest.fixture
def settings(retriever) -> Settings:
    return dataclasses.replace(FAST, retrieval_urls=(retriever.url,))


async def rollout(
    mock: MockSGLang,
    tokenizer,
    settings: Settings,
    sample: Sample,
    sampling: dict | None = None,
    is_aborted: Callable[[], bool] = lambda: False,
) -> Sample:
    result = await run_sample(
        sample,
        dict(sampling or SAMPLING),
        tokenizer=tokenizer,
        policy_url=mock.url,
        settings=settings,
        is_aborted=is_aborted,
    )
    assert result is sample
    return sample


# ---- scenarios --------------------------------------------------------------------------------------------------


async def test_direct_answer(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Which river flows through Vexmoor?"
    mock.script(q, ["The Vex flows there.\n" + answer("Vex")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q, gold="the Vex"))
    assert sample.status == Sample.Status.COMPLETED
    assert_token_exact(sample, mock.requests_for(q))
    assert sample.metadata["turns"] == 1 and sample.metadata["searches"] == 0
    assert sample.metadata["has_final_answer"] is True and sample.metadata["stop_reason"] == "answer"
    assert sample.loss_mask == [1] * sample.response_length
    assert sample.response.endswith(IM_END)
    assert STATE_KEY not in sample.metadata
    assert await reward_func(None, sample, settings=settings) == 1.0


async def test_sampling_params_are_translated(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "What colour is the Quillon flag?"
    mock.script(q, [answer("Blue")])
    params = {**SAMPLING, "temperature": 0.7, "top_k": 20, "max_new_tokens": 64, "sampling_seed": 11}
    await rollout(mock, qwen_tokenizer, settings, new_sample(q), sampling=params)
    body = mock.requests_for(q)[0].body
    assert body["max_tokens"] == 64 and body["temperature"] == 0.7 and body["top_k"] == 20 and body["seed"] == 11
    assert body["logprobs"] is True and body["return_prompt_token_ids"] is True and body["return_meta_info"] is True
    for native_only in ("max_new_tokens", "sampling_seed", "spaces_between_special_tokens", "no_stop_trim"):
        assert native_only not in body
    assert body["tools"] == json.loads(tools_json())
    # Every distribution-shaping parameter is explicit (slime's value, else neutral), so no server-side
    # generation_config default (Qwen2.5: repetition_penalty 1.05, top_p 0.8) can fill a gap.
    shaping = {key: body.get(key, "missing") for key in NEUTRAL_SAMPLING}
    assert shaping == {**NEUTRAL_SAMPLING, "temperature": 0.7, "top_k": 20}
    # What the engine was given (SGLang's SamplingParams): exactly those, nothing from generation_config.json.
    engine = mock.requests_for(q)[0].sampling_params
    assert {key: engine[key] for key in NEUTRAL_SAMPLING} == {**NEUTRAL_SAMPLING, "temperature": 0.7, "top_k": 20}
    assert (engine["max_new_tokens"], engine["sampling_seed"]) == (64, 11)


async def test_every_turn_sends_the_neutral_sampling_params_slime_leaves_out(mock, retriever, settings, qwen_tokenizer):
    q = "Which wind crosses the Dunmere pass?"
    mock.script(q, [call(["Dunmere pass wind"]) + IM_END, answer("Gold")])
    sparse = {"max_new_tokens": 64, "temperature": None, "top_p": 0.9}  # slime may leave keys out or set None
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q), sampling=sparse)
    records = mock.requests_for(q)
    assert len(records) == 2 and sample.status == Sample.Status.COMPLETED
    expected = {**NEUTRAL_SAMPLING, "top_p": 0.9}
    assert expected == {
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
    }
    for record in records:
        assert {key: record.body.get(key, "missing") for key in NEUTRAL_SAMPLING} == expected
        # The engine stores top_k -1 ("whole vocabulary") as SGLang's TOP_K_ALL.
        engine = {key: record.sampling_params[key] for key in NEUTRAL_SAMPLING}
        assert engine == {**expected, "top_k": TOP_K_ALL}


async def test_a_request_without_sampling_fields_gets_the_models_defaults(mock, qwen_tokenizer) -> None:
    """Why every field is sent: SGLang fills the gaps from generation_config.json (Qwen2.5-3B-Instruct's here)."""
    q = "Which bell rings in Dunmere?"
    mock.script(q, [answer("Gold")])
    body = {"model": "m", "messages": build_messages(q), "max_tokens": 16, "logprobs": True}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{mock.url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    engine = mock.requests_for(q)[0].sampling_params
    leaked = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert {key: engine[key] for key in leaked} == leaked


@pytest.mark.parametrize("searches", [1, 2])
async def test_one_and_two_searches(mock, retriever, settings, qwen_tokenizer, searches: int) -> None:
    q = f"Who built the Orlanth bridge number {searches}?"
    replies = [call([f"Orlanth bridge builder {i}"]) + IM_END for i in range(searches)]
    mock.script(q, [*replies, answer("Gold")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert sample.status == Sample.Status.COMPLETED
    records = mock.requests_for(q)
    assert len(records) == searches + 1
    assert_token_exact(sample, records)
    assert sample.metadata["turns"] == searches + 1 and sample.metadata["searches"] == searches
    response_ids = sample.tokens[len(sample.tokens) - sample.response_length :]
    assert sample.response == qwen_tokenizer.decode(response_ids, skip_special_tokens=False)
    assert all(r.body.get("return_prompt_token_ids") is None for r in records[1:]), "later turns: count check only"
    assert all(r.body["messages"] == build_messages(q) for r in records), "with input_ids the prompt messages suffice"
    assert all(r.response["choices"][0]["meta_info"]["prompt_tokens"] == len(r.prompt_ids) for r in records)
    observations = observation_texts(sample, qwen_tokenizer)
    assert len(observations) == searches
    for i, text in enumerate(observations):
        assert text.startswith("\n<|im_start|>user\n<tool_response>\nDoc 1 (Title: Title 0 of Orlanth")
        assert f"Passage 2 about Orlanth bridge builder {i}." in text
        assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert await reward_func(None, sample, settings=settings) == 1.0


async def test_two_tool_calls_in_one_turn_share_one_retrieve(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Compare Pellmark and Dovrin heights?"
    mock.script(
        q, ["Two lookups.\n" + call(["Pellmark height"]) + "\n" + call(["Dovrin height"]) + IM_END, answer("x")]
    )
    before = len(retriever.requests)
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    assert retriever.requests[before:] == [
        {"queries": ["Pellmark height", "Dovrin height"], "topk": 3, "return_scores": False}
    ]
    (observation,) = observation_texts(sample, qwen_tokenizer)
    assert observation.count("<tool_response>") == 2
    assert observation.index("Pellmark height") < observation.index("Dovrin height")
    assert sample.metadata["searches"] == 1 and sample.metadata["search_queries"] == 2


async def test_text_before_call_and_compact_json_stay_as_sampled(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "When was Harrowgate founded?"
    compact = '<tool_call>\n{"name":"search","arguments":{"queries":["Harrowgate founding"]}}\n</tool_call>'
    mock.script(q, ["Let me look.\n\n" + compact + IM_END, answer("1200")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert_token_exact(sample, records)
    server_args = records[0].response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert server_args == '{"queries": ["Harrowgate founding"]}', "the server re-serialises the call"
    assert "Let me look.\n\n" + compact + IM_END in sample.response, "what was sampled is what is trained on"
    assert sample.metadata["searches"] == 1


async def test_non_ascii_query_reaches_the_retriever_intact(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Wer gründete Zürichsee-Brück?"
    query = "Zürich 東京 café — «Brück»"
    mock.script(q, [call([query]) + IM_END, answer("x")])
    before = len(retriever.requests)
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    assert retriever.requests[before]["queries"] == [query]
    assert f"Passage 0 about {query}." in observation_texts(sample, qwen_tokenizer)[0]


BAD_CALLS = [
    ('<tool_call>\n{"name": "search", "arguments": {"queries": ["x"]\n</tool_call>', "is not valid JSON"),
    (call(["x"], name="lookup"), "unknown tool 'lookup'"),
    (call([]), "got no non-empty query"),
    (call("   "), "got no non-empty query"),
    ('<tool_call>\n{"name": "search", "arguments": {"queries": ["x"]}}', "is not closed with </tool_call>"),
]


@pytest.mark.parametrize("case", range(len(BAD_CALLS)))
async def test_bad_calls_become_error_messages(mock, retriever, settings, qwen_tokenizer, case: int) -> None:
    block, error = BAD_CALLS[case]
    q = f"Where is Tarnwick, case {case}?"
    mock.script(q, ["Searching.\n" + block + IM_END, answer("Gold")])
    before = len(retriever.requests)
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert len(records) == 2, "the trajectory goes on after a bad call"
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.COMPLETED
    (observation,) = observation_texts(sample, qwen_tokenizer)
    assert "<tool_response>\nError: " in observation and error in observation
    assert sample.metadata["tool_errors"] == 1 and error in sample.metadata["tool_error_messages"][0]
    assert sample.metadata["bad_tool_calls"] == 1
    assert len(retriever.requests) == before
    wrong = new_sample(q, gold="other")
    wrong.metadata, wrong.status = sample.metadata, sample.status
    assert await reward_func(None, wrong, settings=settings) == 0.0, "a tool error forfeits the format score"


async def test_legacy_malformed_call_shape_is_reported(qwen_tokenizer, settings) -> None:
    """Before SGLang 0.5.16 a rejected call came back as ``tool_calls: []`` with finish_reason ``tool_calls``."""
    mock = MockSGLang(qwen_tokenizer, legacy_malformed_tool_calls=True)
    q = "Where is the Harlow ford?"
    mock.script(q, ['<tool_call>\n{"name": "search", "arguments": {"queries": [}\n</tool_call>' + IM_END, answer("x")])
    with serve_mock_sglang(mock) as url:
        mock.url = url
        sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert records[0].finish_reason == "tool_calls"
    assert_token_exact(sample, records)
    assert "is not valid JSON" in observation_texts(sample, qwen_tokenizer)[0]


async def test_turn_ended_by_another_stop_token_gets_the_end_of_turn_added(mock, retriever, settings, qwen_tokenizer):
    q = "What grows in the Ferrow marsh?"
    mock.script(q, [call(["Ferrow marsh plants"]) + "<|endoftext|>", answer("x")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert records[0].output_ids[-1] == qwen_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert_token_exact(sample, records)
    assert observation_texts(sample, qwen_tokenizer)[0].startswith("<|im_end|>\n<|im_start|>user\n<tool_response>")


async def test_one_bad_block_beside_a_good_one_is_reported(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "How tall is the Mirefell tower?"
    bad = '<tool_call>\n{"name": "search", "arguments": {"queries": ["oops"]}\n</tool_call>'
    mock.script(q, [call(["Mirefell tower height"]) + "\n" + bad + IM_END, answer("x")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    (observation,) = observation_texts(sample, qwen_tokenizer)
    assert "Passage 0 about Mirefell tower height." in observation and "is not valid JSON" in observation


async def test_query_string_instead_of_queries(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Who painted the Sollen mural?"
    mock.script(q, [call("Sollen mural painter", key="query") + IM_END, answer("x")])
    before = len(retriever.requests)
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    assert retriever.requests[before]["queries"] == ["Sollen mural painter"]
    assert sample.metadata["tool_errors"] == 0


async def test_length_cut_mid_turn(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Describe the Kelvane valley?"
    mock.script(q, ["It is a long and winding valley with many rivers and hills " * 5 + answer("x")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q), sampling={**SAMPLING, "max_new_tokens": 12})
    records = mock.requests_for(q)
    assert records[0].finish_reason == "length" and len(records[0].output_ids) == 12
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "length"
    assert sample.response_length == 12 and sample.tokens[-1] != qwen_tokenizer.convert_tokens_to_ids(IM_END)
    assert await reward_func(None, sample, settings=settings) == 0.0


async def test_tool_result_over_budget_stops_before_appending(mock, qwen_tokenizer) -> None:
    q = "Summarise the Brannock archive?"
    long_row = {"id": "long", "contents": '"Brannock archive"\n' + "ledger entry " * 1500}
    fake = FakeRetriever(corpus=[long_row])
    mock.script(q, [call(["Brannock archive"]) + IM_END, answer("x")])
    with serve_fake_retriever(fake) as url:
        settings = dataclasses.replace(FAST, retrieval_urls=(url,), context_budget=1200)
        sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert len(records) == 1
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "context_budget"
    assert len(sample.tokens) <= 1200
    assert records[0].body["max_tokens"] <= 1200 - len(records[0].prompt_ids)


async def test_prompt_larger_than_the_budget_never_reaches_the_server(mock, retriever, settings, qwen_tokenizer):
    q = "Which saint is Pellow abbey named after?"
    mock.script(q, [answer("x")])
    sample = await rollout(mock, qwen_tokenizer, dataclasses.replace(settings, context_budget=100), new_sample(q))
    assert mock.requests_for(q) == []
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "context_budget"
    assert sample.remove_sample is True and sample.loss_mask == [0] and sample.response_length == 1


async def test_max_turns_truncates_a_trajectory_that_keeps_searching(mock, retriever, settings, qwen_tokenizer):
    q = "What lies beyond the Ostmark gate?"
    mock.script(q, [call([f"Ostmark gate {i}"]) + IM_END for i in range(3)])
    sample = await rollout(mock, qwen_tokenizer, dataclasses.replace(settings, max_turns=2), new_sample(q))
    records = mock.requests_for(q)
    assert len(records) == 2 and mock.remaining(q) == 1
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "max_turns"
    assert sample.metadata["searches"] == 1


async def test_retriever_down_then_up(mock, qwen_tokenizer) -> None:
    q = "Who rules the Calder isles?"
    port = free_port()
    settings = dataclasses.replace(FAST, retrieval_urls=(f"http://127.0.0.1:{port}",))
    fake = FakeRetriever()
    mock.script(q, [call(["Calder ruler"]) + IM_END, Reply(call(["Calder ruler now"]) + IM_END, delay_s=1.0)])
    mock.script(q, [answer("x")])

    with contextlib.ExitStack() as stack:

        async def bring_retriever_up() -> None:
            for _ in range(1000):
                if len(mock.requests_for(q)) >= 2:
                    break
                await asyncio.sleep(0.01)
            await asyncio.to_thread(stack.enter_context, serve_fake_retriever(fake, port=port))

        starter = asyncio.create_task(bring_retriever_up())
        sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
        await starter

    assert_token_exact(sample, mock.requests_for(q))
    first, second = observation_texts(sample, qwen_tokenizer)
    assert "Error: search failed: retriever failed after 2 attempt(s): cannot reach the server" in first
    assert "Passage 0 about Calder ruler now." in second
    assert sample.metadata["tool_errors"] == 1 and sample.metadata["searches"] == 1
    assert sample.metadata["bad_tool_calls"] == 0, "the calls were well formed; the retriever was down"
    assert fake.requests == [{"queries": ["Calder ruler now"], "topk": 3, "return_scores": False}]
    assert "127.0.0.1" not in first and str(port) not in first, "the policy never reads internal addresses"
    assert sample.metadata["search_attempts"] == [2, 1]
    assert sample.metadata["search_replicas"] == ["", settings.retrieval_urls[0]]
    [detail] = sample.metadata["search_errors"]
    assert f"127.0.0.1:{port}" in detail, "metadata keeps the address for whoever debugs the outage"
    assert sample.status == Sample.Status.COMPLETED
    sample.label = {"ground_truth": {"target": ["someone else"]}}
    assert await reward_func(None, sample, settings=settings) == settings.format_score, "outage is not a format error"


async def test_one_dead_retriever_replica_of_two_fails_no_search(mock, retriever, qwen_tokenizer) -> None:
    questions = [f"Who keeps the Varrow archive, volume {i}?" for i in range(6)]
    dead = f"http://127.0.0.1:{free_port()}"
    settings = dataclasses.replace(FAST, retrieval_urls=(dead, retriever.url))
    for q in questions:
        mock.script(q, [call([q]) + IM_END, answer("Gold")])
    samples = await asyncio.gather(*(rollout(mock, qwen_tokenizer, settings, new_sample(q)) for q in questions))
    for q, sample in zip(questions, samples, strict=True):
        assert_token_exact(sample, mock.requests_for(q))
        assert sample.metadata["tool_errors"] == 0 and sample.metadata["searches"] == 1
        assert sample.metadata["search_replicas"] == [retriever.url]  # the replica that answered
        assert sample.metadata["search_attempts"][0] in (1, 2)  # at most one try of the dead one


async def test_retriever_5xx_beyond_retries_is_a_tool_error(mock, qwen_tokenizer) -> None:
    q = "How deep is Lake Morrow?"
    fake = FakeRetriever(fail_next=5, fail_status=502)
    mock.script(q, [call(["Lake Morrow depth"]) + IM_END, answer("x")])
    with serve_fake_retriever(fake) as url:
        sample = await rollout(mock, qwen_tokenizer, dataclasses.replace(FAST, retrieval_urls=(url,)), new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    assert "HTTP 502" in observation_texts(sample, qwen_tokenizer)[0]
    assert len(fake.requests) == 2


async def test_policy_400_fails_at_once_without_retry(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Why is Fennick famous?"
    mock.script(q, [Reply("bad sampling parameter", status=400), answer("never used")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert len(mock.requests_for(q)) == 1
    assert sample.status == Sample.Status.FAILED and sample.remove_sample is True
    assert "HTTP 400" in sample.metadata["error"] and "bad sampling parameter" in sample.metadata["error"]
    assert sample.metadata["stop_reason"] == "policy_error"
    assert sample.response_length == 1 and sample.loss_mask == [0] and sample.rollout_log_probs == [0.0]
    assert len(sample.tokens) > 1, "a placeholder keeps slime's tensors well-formed"
    assert await reward_func(None, sample, settings=settings) == 0.0


async def test_policy_503_is_retried(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Where does the Hallow road end?"
    mock.script(q, [Reply("overloaded", status=503), answer("Gold")])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert [r.status for r in records] == [503, 200]
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.COMPLETED


async def test_policy_failure_mid_trajectory_keeps_the_turns_so_far(mock, retriever, settings, qwen_tokenizer):
    q = "Who guards the Seren vault?"
    mock.script(q, [call(["Seren vault"]) + IM_END, Reply("context too long", status=400)])
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    records = mock.requests_for(q)
    assert [r.status for r in records] == [200, 400]
    assert_token_exact(sample, records, ends_after_output=False)
    assert records[1].prompt_ids == sample.tokens, "the failed call was sent exactly the tokens kept"
    assert sample.status == Sample.Status.FAILED and sample.remove_sample is True
    assert "context too long" in sample.metadata["error"]


async def test_abort_mid_trajectory_then_resume(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Which guild founded Ambergate?"
    mock.script(
        q,
        [
            call(["Ambergate guild"]) + IM_END,
            Reply("I still need to check the second", finish_reason="abort"),
        ],
    )
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert sample.status == Sample.Status.ABORTED and sample.metadata["stop_reason"] == "abort"
    assert_token_exact(sample, mock.requests_for(q))
    assert sample.metadata[STATE_KEY]["pending_turn_start"] is not None
    assert sample.metadata["turns"] == 2

    # slime hands the ABORTED sample back (partial rollout); the turn continues where the server stopped.
    mock.script(q, [" source.\n" + call(["Ambergate founders"]) + IM_END, answer("Gold")])
    sample = await rollout(mock, qwen_tokenizer, settings, sample)
    records = mock.requests_for(q)
    assert len(records) == 4
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.COMPLETED and sample.metadata["resumed"] == 1
    assert sample.metadata["turns"] == 3 and sample.metadata["searches"] == 2
    assert "Passage 0 about Ambergate founders." in observation_texts(sample, qwen_tokenizer)[1]
    response_ids = sample.tokens[len(sample.tokens) - sample.response_length :]
    assert sample.response == qwen_tokenizer.decode(response_ids, skip_special_tokens=False)
    assert STATE_KEY not in sample.metadata
    assert await reward_func(None, sample, settings=settings) == 1.0


async def test_abort_flag_between_turns_stops_at_once_and_resumes(mock, retriever, settings, qwen_tokenizer):
    q = "What metal is the Thornwall bell?"
    mock.script(q, [call(["Thornwall bell metal"]) + IM_END])
    before = len(retriever.requests)
    # slime sets GenerateState.aborted while the first turn's search runs.
    sample = await rollout(
        mock, qwen_tokenizer, settings, new_sample(q), is_aborted=lambda: len(retriever.requests) > before
    )
    records = mock.requests_for(q)
    assert len(records) == 1, "no policy call after the abort flag"
    assert sample.status == Sample.Status.ABORTED and sample.metadata["stop_reason"] == "aborted"
    assert_token_exact(sample, records, ends_after_output=False)
    assert sample.metadata[STATE_KEY]["pending_turn_start"] is None
    assert observation_texts(sample, qwen_tokenizer)[0].endswith("<|im_start|>assistant\n"), "ready for turn 2"

    mock.script(q, [answer("Gold")])
    sample.loss_mask = [0] * sample.response_length  # slime's --mask-offpolicy-in-partial-rollout does this
    sample = await rollout(mock, qwen_tokenizer, settings, sample)
    records = mock.requests_for(q)
    assert len(records) == 2 and records[1].body["input_ids"] == records[1].prompt_ids
    assert sample.status == Sample.Status.COMPLETED
    assert sample.tokens[: len(records[1].prompt_ids)] == records[1].prompt_ids
    first_turn = len(records[0].output_ids)
    assert sample.loss_mask[:first_turn] == [0] * first_turn, "slime's off-policy mask is kept"
    tail = len(records[1].output_ids)
    assert sample.loss_mask[-tail:] == [1] * tail
    assert sample.tokens[-tail:] == records[1].output_ids


async def test_full_prompt_id_verification_on_every_turn(mock, retriever, settings, qwen_tokenizer) -> None:
    q = "Who carved the Wendle stone?"
    mock.script(q, [call(["Wendle stone"]) + IM_END, call(["Wendle carver"]) + IM_END, answer("Gold")])
    sample = await rollout(mock, qwen_tokenizer, dataclasses.replace(settings, verify_prompt_ids=True), new_sample(q))
    records = mock.requests_for(q)
    assert all(r.body["return_prompt_token_ids"] is True for r in records)
    assert all("prompt_token_ids" in r.response["choices"][0] for r in records)
    assert_token_exact(sample, records)
    assert sample.status == Sample.Status.COMPLETED


@pytest.mark.parametrize("version", ["0.5.17", "0.5.18"])
async def test_newer_servers(qwen_tokenizer, settings, version: str) -> None:
    mock = MockSGLang(qwen_tokenizer, version=version)
    q = f"Who mapped the Quarrel straits ({version})?"
    mock.script(q, [call(["Quarrel straits"]) + IM_END, answer("Gold")])
    with serve_mock_sglang(mock) as url:
        mock.url = url
        sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert_token_exact(sample, mock.requests_for(q))
    assert sample.status == Sample.Status.COMPLETED


async def test_old_server_fails_clearly(qwen_tokenizer, settings) -> None:
    mock = MockSGLang(qwen_tokenizer, version="0.5.12")
    q = "Who named the Vell comet?"
    mock.script(q, [answer("Gold")])
    with serve_mock_sglang(mock) as url:
        mock.url = url
        sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert sample.status == Sample.Status.FAILED and sample.remove_sample is True
    assert "SGLang >= 0.5.13" in sample.metadata["error"]
    assert "SEARCH_R1_ALLOW_REENCODE_FALLBACK" in sample.metadata["error"]
    assert sample.metadata["stop_reason"] == "capability"


async def test_old_server_fallback_reports_drift(qwen_tokenizer, settings) -> None:
    mock = MockSGLang(qwen_tokenizer, version="0.5.12")
    q = "Who charted the Vell comet?"
    compact = '<tool_call>\n{"name":"search","arguments":{"queries":["Vell comet"]}}\n</tool_call>'
    mock.script(q, ["Let me look.\n\n" + compact + IM_END, answer("Gold")])
    with serve_mock_sglang(mock) as url:
        mock.url = url
        sample = await rollout(
            mock, qwen_tokenizer, dataclasses.replace(settings, allow_reencode_fallback=True), new_sample(q)
        )
    records = mock.requests_for(q)
    assert sample.status == Sample.Status.COMPLETED
    assert sample.metadata["token_exact"] is False
    assert sample.metadata["drift_tokens"] > 0, "the server re-rendered the compact call differently"
    assert all("input_ids" not in r.body for r in records)
    # The sampled ids themselves are recovered exactly from the text logprobs (byte-level vocabulary).
    assert sample.tokens[-len(records[-1].output_ids) :] == records[-1].output_ids
    assert sample.tokens[: len(records[0].prompt_ids)] != records[0].prompt_ids, "server's tools JSON differs"


async def test_bad_prompt_never_raises(mock, retriever, settings, qwen_tokenizer) -> None:
    sample = Sample(index=3, prompt="<|im_start|>user\nrendered text<|im_end|>", label="x")
    result = await rollout(mock, qwen_tokenizer, settings, sample)
    assert result.status == Sample.Status.FAILED and result.remove_sample is True
    assert "--apply-chat-template" in result.metadata["error"]


async def test_concurrent_rollouts_share_the_pool(mock, retriever, settings, qwen_tokenizer) -> None:
    questions = [f"Who founded the Yarrow school number {i}?" for i in range(8)]
    for i, q in enumerate(questions):
        mock.script(q, [call([f"Yarrow school {i}"]) + IM_END, answer("Gold")])
    samples = await asyncio.gather(
        *(rollout(mock, qwen_tokenizer, dataclasses.replace(settings, concurrency=4), new_sample(q)) for q in questions)
    )
    for q, sample in zip(questions, samples, strict=True):
        assert sample.status == Sample.Status.COMPLETED
        assert_token_exact(sample, mock.requests_for(q))


async def test_trajectory_log_every_nth(mock, retriever, settings, qwen_tokenizer, caplog) -> None:
    q = "Which bird nests on Corvel cliffs?"
    mock.script(q, [call(["Corvel cliffs bird"]) + IM_END, answer("Gold")])
    with caplog.at_level(logging.INFO, logger="search_r1_oai.rollout"):
        await rollout(mock, qwen_tokenizer, dataclasses.replace(settings, log_every=1), new_sample(q))
    messages = [r.getMessage() for r in caplog.records if r.name == "search_r1_oai.rollout"]
    assert any("status=COMPLETED" in m for m in messages)
    assert any("Corvel cliffs bird" in m and "turn 1" in m for m in messages)


async def test_server_prefilling_something_else_is_caught(retriever, settings, qwen_tokenizer) -> None:
    """A server that did not condition on our input_ids (count differs) must not yield a trainable sample."""

    class MiscountingChat(ChatClient):
        def __init__(self) -> None:
            super().__init__("http://unused", settings)
            self.sent: list[list[int]] = []

        async def complete(self, body: dict, input_ids_json: str | None = None) -> TurnOutput:
            turn_text = call(["Gorse keep"]) + IM_END
            ids = qwen_tokenizer.encode(turn_text, add_special_tokens=False)
            sent = json.loads(input_ids_json) if input_ids_json else [1, 2, 3]
            self.sent.append(sent)
            function = {"name": "search", "arguments": '{"queries": ["g"]}'}
            return TurnOutput(
                prompt_ids=sent if input_ids_json is None else None,
                output_ids=ids,
                output_logprobs=[-0.5] * len(ids),
                finish_reason="tool_calls",
                content="",
                tool_calls=[{"id": "call_1", "type": "function", "function": function}],
                logprob_content=None,
                latency_s=0.0,
                prompt_tokens=len(sent) + (7 if input_ids_json else 0),
            )

    chat = MiscountingChat()
    sample = await run_sample(
        new_sample("Who holds Gorse keep?"),
        dict(SAMPLING),
        tokenizer=qwen_tokenizer,
        policy_url="",
        settings=settings,
        chat=chat,
    )
    assert len(chat.sent) == 2
    assert sample.status == Sample.Status.FAILED and sample.metadata["stop_reason"] == "invariant"
    assert "prefilled" in sample.metadata["error"] and sample.remove_sample is True
