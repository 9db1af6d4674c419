"""Checks of the values a policy server returns, before any of them becomes training data.

A reply is trusted for nothing: sampled and prompt ids must be integers in ``[0, len(tokenizer))`` (not ``bool``,
not strings), logprobs finite numbers ``<= 0`` (up to :data:`LOGPROB_TOLERANCE` of float error; the value is kept
as sent), ids and logprobs as many, and the reply's text valid Unicode (tool-call strings are cleaned instead, see
:func:`search_r1_oai.sglang_wire.parse_chat_response`). The first violation raises :class:`BadServerValue`
naming the field, the position and the value, e.g. ``output_ids[3] = 151700 is outside the vocabulary [0, 151665)``;
the rollout ends the sample FAILED with stop_reason ``bad_server_value``, not trained on.
"""

from __future__ import annotations

import math
from typing import Any

from search_r1_oai.errors import BadServerValue
from search_r1_oai.sglang_wire import TurnOutput
from search_r1_oai.text import first_surrogate

# A logprob may exceed 0 by float error only (softmax of a near-certain token); anything above is not a logprob.
LOGPROB_TOLERANCE = 1e-6
_INT = frozenset({int})
_NUMBER = frozenset({int, float})


def check_ids(name: str, ids: Any, vocab_size: int) -> None:
    """Every entry of ``ids`` is an ``int`` id of the vocabulary."""
    if isinstance(ids, list) and set(map(type, ids)) <= _INT and (not ids or 0 <= min(ids) <= max(ids) < vocab_size):
        return  # the usual case, at C speed; the loop below finds the first bad entry
    if not isinstance(ids, list):
        raise BadServerValue(f"{name} is not a list of token ids: {_shown(ids)}")
    for position, value in enumerate(ids):
        if type(value) is not int:
            raise BadServerValue(f"{name}[{position}] = {_shown(value)} is not an integer token id")
        if not 0 <= value < vocab_size:
            raise BadServerValue(f"{name}[{position}] = {value} is outside the vocabulary [0, {vocab_size})")


def check_logprobs(name: str, values: Any) -> None:
    """Every entry of ``values`` is a finite number ``<= LOGPROB_TOLERANCE``."""
    if (
        isinstance(values, list)
        and set(map(type, values)) <= _NUMBER
        and all(map(math.isfinite, values))
        and (not values or max(values) <= LOGPROB_TOLERANCE)
    ):
        return
    if not isinstance(values, list):
        raise BadServerValue(f"{name} is not a list of logprobs: {_shown(values)}")
    for position, value in enumerate(values):
        if type(value) is not float and type(value) is not int:
            raise BadServerValue(f"{name}[{position}] = {_shown(value)} is not a number")
        if not -math.inf < value <= LOGPROB_TOLERANCE:  # False for NaN, both infinities and positive values
            raise BadServerValue(f"{name}[{position}] = {value!r} is not a finite log-probability <= 0")


def check_sampled(ids: Any, log_probs: Any, vocab_size: int) -> None:
    """The sampled ids and their logprobs, about to be appended with loss mask 1."""
    check_ids("output_ids", ids, vocab_size)
    check_logprobs("output_logprobs", log_probs)
    if len(ids) != len(log_probs):
        raise BadServerValue(f"output_ids has {len(ids)} entries but output_logprobs {len(log_probs)}")


def check_reply(output: TurnOutput, vocab_size: int) -> None:
    """The rest of a reply the rollout uses: prompt ids and count, the text and the tool calls."""
    if output.prompt_ids is not None:
        check_ids("prompt_token_ids", output.prompt_ids, vocab_size)
    count = output.prompt_tokens
    if count is not None and (type(count) is not int or count < 0):
        raise BadServerValue(f"meta_info.prompt_tokens = {_shown(count)} is not a token count")
    if output.content is not None:
        if not isinstance(output.content, str):
            raise BadServerValue(f"message.content = {_shown(output.content)} is not a string")
        _check_text("message.content", output.content)
    if output.tool_calls is not None and not isinstance(output.tool_calls, list):
        raise BadServerValue(f"message.tool_calls = {_shown(output.tool_calls)} is not a list")


def _check_text(name: str, text: str) -> None:
    """A detokenizer writes U+FFFD for bytes that are no character, never a lone surrogate: one is a broken server."""
    at = first_surrogate(text)
    if at is not None:
        raise BadServerValue(f"{name}[{at}] = {text[at]!r} is not valid Unicode (a lone surrogate)")


def _shown(value: Any) -> str:
    """A value as the server sent it, typed and short: ``'5' (str)``, ``True (bool)``."""
    return f"{repr(value)[:60]} ({type(value).__name__})"
