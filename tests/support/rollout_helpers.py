"""Shared pieces of the rollout scenario tests: sampling params, scripted turns, and the token-exact invariant
recomputed from what an SGLang-compatible server recorded."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from typing import Any

from generate_with_search_oai import rollout_sample
from search_r1_oai.chat_client import ChatClient
from search_r1_oai.chat_template import ToolTurnTemplate
from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.prompts import build_messages, tools_json
from tests.support.sglang_mock import RecordedRequest, mock_logprob
from tests.support.slime_stub import Sample

IM_END = "<|im_end|>"
SAMPLING = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "max_new_tokens": 512,
    "stop": None,
    "stop_token_ids": None,
    "skip_special_tokens": False,
    "no_stop_trim": True,
    "spaces_between_special_tokens": False,
}
FAST = Settings(
    retry_initial_wait_s=0.01,
    retry_max_wait_s=0.05,
    policy_retries=2,
    retrieval_retries=1,
    policy_timeout_s=20,
    retrieval_timeout_s=5,
    log_every=0,
)


def call(queries: list[str] | str, key: str = "queries", name: str = "search") -> str:
    """A tool-call block as Qwen2.5 writes it (the qwen25 parser wants the newlines)."""
    arguments = {key: queries}
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def answer(text: str) -> str:
    return f"<answer>{text}</answer>{IM_END}"


def appended_delta(template: ToolTurnTemplate, tool_messages: list[dict], last_sampled_id: int | None) -> list[int]:
    """The ids the rollout appends for ``tool_messages`` after a turn whose last sampled id is ``last_sampled_id``
    (``None``: nothing sampled), through the rollout's own :meth:`ToolTurnTemplate.delta`."""
    return asyncio.run(template.delta(tool_messages, last_sampled_id)).ids


# ---- the invariant, recomputed from the server's records --------------------------------------------------------


def assert_token_exact(
    sample: Sample,
    records: list[RecordedRequest],
    *,
    first_prompt_rendered: bool = True,
    ends_after_output: bool = True,
) -> None:
    """For every successful request k: its prompt ids are a prefix of ``sample.tokens``; its sampled ids sit right
    after them with loss mask 1 and exactly the logprobs it reported; every other response position has mask 0
    and logprob 0.0; ``tokens = prompt + response`` with consistent lengths; nothing follows the last output
    (unless the sample stopped between turns, ready for the next one: ``ends_after_output=False``)."""
    served = [r for r in records if r.status == 200]
    assert served, "no successful policy request was recorded"
    prompt_length = len(served[0].prompt_ids)
    n = sample.response_length
    assert len(sample.tokens) == prompt_length + n
    assert len(sample.loss_mask) == n and len(sample.rollout_log_probs) == n
    expected_mask = [0] * n
    expected_logprobs = [0.0] * n
    for k, record in enumerate(served):
        start = len(record.prompt_ids)
        assert sample.tokens[:start] == record.prompt_ids, f"request {k}: conditioning ids are not a prefix"
        assert sample.tokens[start : start + len(record.output_ids)] == record.output_ids, f"request {k}: output"
        if k == 0 and first_prompt_rendered:
            assert "input_ids" not in record.body, "the first turn must let the server render the prompt"
        elif k > 0:
            assert record.body.get("input_ids") == record.prompt_ids, f"request {k}: history was re-rendered"
        for i, (token, logprob) in enumerate(zip(record.output_ids, record.output_logprobs, strict=True)):
            position = start + i
            assert logprob == mock_logprob(token, position)
            expected_mask[position - prompt_length] = 1
            expected_logprobs[position - prompt_length] = logprob
    assert sample.loss_mask == expected_mask
    assert sample.rollout_log_probs == expected_logprobs
    last = served[-1]
    if ends_after_output:
        assert len(sample.tokens) == len(last.prompt_ids) + len(last.output_ids), "ids appended after the last turn"


def observation_texts(sample: Sample, tokenizer) -> list[str]:
    """Decoded runs of loss-mask-0 response ids (template glue + tool results + generation prompt)."""
    prompt_length = len(sample.tokens) - sample.response_length
    runs: list[list[int]] = []
    previous = 1
    for token, mask in zip(sample.tokens[prompt_length:], sample.loss_mask, strict=True):
        if mask == 0:
            if previous == 1:
                runs.append([])
            runs[-1].append(token)
        previous = mask
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def new_sample(question: str, gold: str = "Gold") -> Sample:
    return Sample(
        index=0,
        prompt=build_messages(question),
        label={"ground_truth": {"target": [gold]}},
        metadata={"tools": json.loads(tools_json())},
    )


# ---- running a slime sample through the adapter ---------------------------------------------------------------------

_CONTEXTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, RolloutContext]] = (
    weakref.WeakKeyDictionary()
)


def context_for(policy_url: str, settings: Settings, tokenizer: Any) -> RolloutContext:
    """One context per policy URL, settings and tokenizer on the running loop, as a slime worker has one."""
    per_loop = _CONTEXTS.setdefault(asyncio.get_running_loop(), {})
    key = (policy_url, settings, id(tokenizer))
    if key not in per_loop:
        per_loop[key] = RolloutContext(settings, tokenizer, policy_url)
    return per_loop[key]


async def close_contexts() -> None:
    """Close the HTTP clients of every context :func:`context_for` made on the running loop."""
    for context in _CONTEXTS.pop(asyncio.get_running_loop(), {}).values():
        await context.aclose()


async def run_sample(
    sample: Sample,
    sampling_params: dict,
    *,
    tokenizer: Any,
    policy_url: str,
    settings: Settings,
    is_aborted: Callable[[], bool] = lambda: False,
    chat: ChatClient | None = None,
) -> Sample:
    """A slime sample through ``generate_with_search_oai.rollout_sample`` (what slime's ``generate`` runs);
    ``chat`` replaces the policy client for this one sample."""
    if chat is None:
        context = context_for(policy_url, settings, tokenizer)
    else:
        context = RolloutContext(settings, tokenizer, policy_url, chat_factory=lambda: chat)
    return await rollout_sample(context, sample, sampling_params, is_aborted=is_aborted)
