"""Where a trajectory's token ids come from: the server's own ids (token-exact), or re-encoded text (fallback).

Chosen once, from the first turn's reply, so the loop never asks which mode it is in. A source only reads a reply
and answers (the first prompt's ids, the drift of a later prompt, the sampled ids); it creates and changes no
trajectory state: :class:`~search_r1_oai.trajectory.Trajectory` records what it answers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from search_r1_oai.chat_template import render_prompt_ids
from search_r1_oai.errors import CapabilityError, TrajectoryError
from search_r1_oai.reencode import count_drift, ids_from_logprob_content
from search_r1_oai.sglang_wire import MIN_TOKEN_ID_VERSION, TurnOutput

if TYPE_CHECKING:
    from search_r1_oai.context import RolloutContext

logger = logging.getLogger(__name__)


class Sampled(NamedTuple):
    """One reply's sampled ids with their logprobs, and how many of them had to be re-encoded (drift)."""

    ids: list[int]
    log_probs: list[float]
    drift: int = 0


class ServerIds:
    """The server's ids: it conditions on our ``input_ids`` and reports the ids and logprobs it sampled."""

    # Re-encoded sources let the server render the whole conversation every turn (it takes no input_ids then).
    reencoded = False

    def first_prompt_ids(self, output: TurnOutput, messages: list[dict]) -> list[int]:
        """The ids the server prefilled for the first turn."""
        return list(output.prompt_ids or [])

    def prompt_drift(self, output: TurnOutput, tokens: list[int], messages: list[dict]) -> int:
        """The server used exactly our tokens: compared id for id when it returned them, else by count."""
        if not output.has_token_ids:
            raise CapabilityError("the policy server stopped returning token ids mid-trajectory")
        if output.prompt_ids is not None:
            check_conditioning(output.prompt_ids, tokens)
        elif output.prompt_tokens is not None and output.prompt_tokens != len(tokens):
            raise TrajectoryError(f"server prefilled {output.prompt_tokens} tokens but we sent {len(tokens)} input_ids")
        return 0

    def sampled(self, output: TurnOutput) -> Sampled:
        return Sampled(output.output_ids or [], output.output_logprobs or [])


class ReencodedIds(ServerIds):
    """For servers without token ids: sampled ids are recovered from the text logprobs, and every difference of
    the server's render from ours is counted as drift."""

    reencoded = True

    def __init__(self, context: RolloutContext, tools: list[dict]) -> None:
        self._context = context
        self._tools = tools

    def first_prompt_ids(self, output: TurnOutput, messages: list[dict]) -> list[int]:
        return render_prompt_ids(self._context.tokenizer, messages, self._tools)

    def prompt_drift(self, output: TurnOutput, tokens: list[int], messages: list[dict]) -> int:
        return count_drift(tokens, render_prompt_ids(self._context.tokenizer, messages, self._tools))

    def sampled(self, output: TurnOutput) -> Sampled:
        return Sampled(*ids_from_logprob_content(self._context.token_vocab(), output.logprob_content or []))


def choose_id_source(output: TurnOutput, context: RolloutContext, tools: list[dict]) -> ServerIds:
    """The id source for the rest of a trajectory, from its first reply; refuses the fallback unless allowed."""
    if output.has_token_ids and output.prompt_ids is not None:
        return ServerIds()
    if not context.settings.allow_reencode_fallback:
        raise CapabilityError(
            f"the policy server returned no token ids (prompt_token_ids / meta_info.output_token_logprobs): "
            f"SGLang >= {MIN_TOKEN_ID_VERSION} is required for token-exact rollouts; upgrade it, or set "
            "SEARCH_R1_ALLOW_REENCODE_FALLBACK=1 to train on re-encoded (drifting) tokens"
        )
    logger.warning("policy server returns no token ids: re-encoding fallback, NOT token-exact")
    return ReencodedIds(context, tools)


def resumed_id_source(reencoded: bool, context: RolloutContext, tools: list[dict]) -> ServerIds:
    """The id source a resumed trajectory was using."""
    return ReencodedIds(context, tools) if reencoded else ServerIds()


def check_conditioning(server_prompt_ids: list[int], tokens: list[int]) -> None:
    """The ids the server says it prefilled must be exactly our tokens so far."""
    if server_prompt_ids != tokens:
        at = next(
            (i for i, (a, b) in enumerate(zip(server_prompt_ids, tokens, strict=False)) if a != b),
            min(len(server_prompt_ids), len(tokens)),
        )
        raise TrajectoryError(
            f"server conditioned on {len(server_prompt_ids)} ids that differ from our {len(tokens)} at position {at}"
        )
