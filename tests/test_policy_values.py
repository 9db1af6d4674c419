"""Garbage never becomes training data: a policy server on 127.0.0.1 that sends each kind of value no SGLang should
(ids beyond the vocabulary, string, negative or boolean ids, NaN / infinite / positive logprobs, lists of different
lengths, a lone surrogate in the text). Each ends the sample FAILED, not trained on, with a reason that names the
field and the first bad value, and is counted in the rollout metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

from generate_with_search_oai import log_rollout_metrics
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    call,
    new_sample,
    run_sample,
)
from tests.support.sglang_mock import Reply
from tests.support.slime_stub import Sample

VOCAB = 151665  # len(tokenizer) of the offline Qwen2.5 tokenizer


pytestmark = pytest.mark.usefixtures("close_rollout_contexts")


def _choice(response: dict) -> dict:
    return response["choices"][0]


def set_output_id(position: int, value: Any) -> Callable[[dict], None]:
    def corrupt(response: dict) -> None:
        _choice(response)["meta_info"]["output_token_logprobs"][position][1] = value

    return corrupt


def set_logprob(position: int, value: Any) -> Callable[[dict], None]:
    def corrupt(response: dict) -> None:
        _choice(response)["meta_info"]["output_token_logprobs"][position][0] = value

    return corrupt


def set_prompt_id(position: int, value: Any) -> Callable[[dict], None]:
    def corrupt(response: dict) -> None:
        _choice(response)["prompt_token_ids"][position] = value

    return corrupt


def one_id_too_many(response: dict) -> None:
    """SGLang >= 0.5.18's fields without meta_info: ``response_token_ids`` longer than ``logprobs.content``."""
    choice = _choice(response)
    ids = [triple[1] for triple in choice["meta_info"].pop("output_token_logprobs")]
    choice["response_token_ids"] = [*ids, ids[-1]]


def short_triple(response: dict) -> None:
    _choice(response)["meta_info"]["output_token_logprobs"][2] = [-0.5]


def lone_surrogate(response: dict) -> None:
    _choice(response)["message"]["content"] = "Gold\ud800"


CASES = {
    "output id beyond the vocabulary": (
        set_output_id(3, VOCAB + 35),
        f"output_ids[3] = {VOCAB + 35} is outside the vocabulary [0, {VOCAB})",
    ),
    "negative output id": (set_output_id(1, -5), f"output_ids[1] = -5 is outside the vocabulary [0, {VOCAB})"),
    "boolean output id": (set_output_id(0, True), "output_ids[0] = True (bool) is not an integer token id"),
    "string output id": (set_output_id(2, "42"), "output_ids[2] = '42' (str) is not an integer token id"),
    "float output id": (set_output_id(2, 42.0), "output_ids[2] = 42.0 (float) is not an integer token id"),
    "string prompt id": (set_prompt_id(2, "17"), "prompt_token_ids[2] = '17' (str) is not an integer token id"),
    "negative prompt id": (set_prompt_id(0, -1), f"prompt_token_ids[0] = -1 is outside the vocabulary [0, {VOCAB})"),
    "boolean prompt id": (set_prompt_id(1, False), "prompt_token_ids[1] = False (bool) is not an integer token id"),
    "prompt id beyond the vocabulary": (
        set_prompt_id(4, VOCAB),
        f"prompt_token_ids[4] = {VOCAB} is outside the vocabulary [0, {VOCAB})",
    ),
    "NaN logprob": (set_logprob(1, math.nan), "output_logprobs[1] = nan is not a finite log-probability <= 0"),
    "infinite logprob": (set_logprob(2, math.inf), "output_logprobs[2] = inf is not a finite log-probability <= 0"),
    "minus infinite logprob": (
        set_logprob(0, -math.inf),
        "output_logprobs[0] = -inf is not a finite log-probability <= 0",
    ),
    "positive logprob": (set_logprob(3, 0.25), "output_logprobs[3] = 0.25 is not a finite log-probability <= 0"),
    "string logprob": (set_logprob(3, "-0.5"), "output_logprobs[3] = '-0.5' (str) is not a number"),
    "lengths that differ": (one_id_too_many, "response_token_ids has 9 entries but logprobs.content 8"),
    "a short triple": (short_triple, "meta_info.output_token_logprobs is not a list of [logprob, id, text]"),
    "lone surrogate in the text": (
        lone_surrogate,
        "message.content[4] = '\\ud800' is not valid Unicode (a lone surrogate)",
    ),
}


async def rollout(mock, tokenizer, settings, sample: Sample) -> Sample:
    return await run_sample(sample, dict(SAMPLING), tokenizer=tokenizer, policy_url=mock.url, settings=settings)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("turn", [1, 2])
async def test_a_bad_value_fails_the_sample_naming_the_field_and_value(
    mock, retriever, qwen_tokenizer, case: str, turn: int
) -> None:
    corrupt, expected = CASES[case]
    q = f"Which abbey keeps the Lorn psalter ({case}, turn {turn})?"
    bad = Reply("<answer>Gold</answer>" + IM_END, corrupt=corrupt)
    mock.script(q, [bad] if turn == 1 else [call(["Lorn psalter"]) + IM_END, bad])
    settings = dataclasses.replace(FAST, retrieval_urls=(retriever.url,), verify_prompt_ids=True)
    sample = await rollout(mock, qwen_tokenizer, settings, new_sample(q))
    assert sample.status == Sample.Status.FAILED, sample.metadata.get("error")
    assert sample.remove_sample is True
    assert sample.metadata["stop_reason"] == "bad_server_value"
    assert expected in sample.metadata["error"], sample.metadata["error"]
    assert sample.metadata["error"].startswith("the policy server sent a bad value: ")
    records = mock.requests_for(q)
    assert len(records) == turn
    if turn == 2:
        # The turn before is kept exactly; nothing of the bad reply was appended.
        assert_token_exact(sample, records[:1], ends_after_output=False)
        assert sample.tokens == records[1].prompt_ids


async def test_a_logprob_a_hair_above_zero_is_float_error_and_kept_as_sent(mock, retriever, qwen_tokenizer) -> None:
    q = "Which abbey keeps the Lorn psalter (float error)?"
    mock.script(q, [Reply("<answer>Gold</answer>" + IM_END, corrupt=set_logprob(1, 5e-7))])
    sample = await rollout(
        mock, qwen_tokenizer, dataclasses.replace(FAST, retrieval_urls=(retriever.url,)), new_sample(q)
    )
    assert sample.status == Sample.Status.COMPLETED
    assert sample.rollout_log_probs[1] == 5e-7


async def test_bad_values_are_counted_in_the_rollout_metrics(mock, retriever, qwen_tokenizer) -> None:
    settings = dataclasses.replace(FAST, retrieval_urls=(retriever.url,))
    samples = []
    for i, corrupt in enumerate([set_output_id(0, VOCAB), set_logprob(0, math.nan), None, None]):
        q = f"Who rang the Ebbet bell, round {i}?"
        mock.script(q, [Reply(answer("Gold"), corrupt=corrupt)])
        samples.append(await rollout(mock, qwen_tokenizer, settings, new_sample(q)))
    extra: dict[str, float] = {}
    assert log_rollout_metrics(0, argparse.Namespace(), samples, extra, 0.0) is False
    assert extra["rollout/search/bad_server_values"] == 2.0
    assert extra["rollout/search/failed_rate"] == 0.5
    assert extra["rollout/search/deadline_rate"] == 0.0
