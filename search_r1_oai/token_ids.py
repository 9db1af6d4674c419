"""Where a trajectory's token ids come from: the server's own ids (token-exact), or re-encoded text (fallback).

Chosen once, from the first turn's reply, so the loop never asks which mode it is in: it calls
:meth:`TokenIds.check_prompt` and :meth:`TokenIds.sampled` every turn and each source does its own job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from search_r1_oai.chat_client import MIN_TOKEN_ID_VERSION, TurnOutput
from search_r1_oai.errors import CapabilityError
from search_r1_oai.reencode import count_drift, ids_from_logprob_content
from search_r1_oai.trajectory import Trajectory, TrajectoryError, render_prompt_ids

if TYPE_CHECKING:
    from search_r1_oai.context import RolloutContext
    from search_r1_oai.state import RolloutState

logger = logging.getLogger(__name__)


class TokenIds:
    """The server's ids: it conditions on our ``input_ids`` and reports the ids and logprobs it sampled."""

    # Whether the server renders the messages itself every turn (it does only on the first turn here).
    server_renders = False

    def check_prompt(self, output: TurnOutput, state: RolloutState) -> None:
        """The server used exactly our tokens: compared id for id when it returned them, else by count."""
        trajectory = state.trajectory
        assert trajectory is not None
        if not output.has_token_ids:
            raise CapabilityError("the policy server stopped returning token ids mid-trajectory")
        if output.prompt_ids is not None:
            trajectory.check_conditioning(output.prompt_ids)
        elif output.prompt_tokens is not None and output.prompt_tokens != len(trajectory.tokens):
            raise TrajectoryError(
                f"server prefilled {output.prompt_tokens} tokens but we sent {len(trajectory.tokens)} input_ids"
            )

    def sampled(self, output: TurnOutput, state: RolloutState) -> tuple[list[int], list[float]]:
        return output.output_ids or [], output.output_logprobs or []


class ReencodedIds(TokenIds):
    """For servers without token ids: the server renders the whole conversation every turn, sampled ids are
    recovered from the text logprobs, and every difference from our own render is counted as drift."""

    server_renders = True

    def __init__(self, context: RolloutContext, tools: list[dict]) -> None:
        self._context = context
        self._tools = tools

    def check_prompt(self, output: TurnOutput, state: RolloutState) -> None:
        assert state.trajectory is not None
        reference = render_prompt_ids(self._context.tokenizer, state.messages, self._tools)
        state.stats.drift_tokens += count_drift(state.trajectory.tokens, reference)

    def sampled(self, output: TurnOutput, state: RolloutState) -> tuple[list[int], list[float]]:
        ids, log_probs, drift = ids_from_logprob_content(self._context.token_vocab(), output.logprob_content or [])
        state.stats.drift_tokens += drift
        return ids, log_probs


def begin_trajectory(output: TurnOutput, state: RolloutState, context: RolloutContext, tools: list[dict]) -> TokenIds:
    """Start the token state from the first reply and choose the id source for the rest of the trajectory."""
    if output.has_token_ids and output.prompt_ids is not None:
        state.trajectory = Trajectory.from_prompt(output.prompt_ids)
        return TokenIds()
    if not context.settings.allow_reencode_fallback:
        raise CapabilityError(
            f"the policy server returned no token ids (prompt_token_ids / meta_info.output_token_logprobs): "
            f"SGLang >= {MIN_TOKEN_ID_VERSION} is required for token-exact rollouts; upgrade it, or set "
            "SEARCH_R1_ALLOW_REENCODE_FALLBACK=1 to train on re-encoded (drifting) tokens"
        )
    logger.warning("policy server returns no token ids: re-encoding fallback, NOT token-exact")
    state.reencoded = True
    state.stats.token_exact = False
    state.trajectory = Trajectory.from_prompt(render_prompt_ids(context.tokenizer, state.messages, tools))
    return ReencodedIds(context, tools)


def token_ids_for(state: RolloutState, context: RolloutContext, tools: list[dict]) -> TokenIds | None:
    """The id source of a resumed trajectory (``None`` before its first turn)."""
    if state.trajectory is None:
        return None
    return ReencodedIds(context, tools) if state.reencoded else TokenIds()


def placeholder_trajectory(tokenizer: Any, messages: list[dict], tools: list[dict]) -> Trajectory:
    """A trajectory that never got a turn still needs well-formed tensors: the prompt plus one masked end-of-turn
    token."""
    try:
        prompt_ids = render_prompt_ids(tokenizer, messages, tools) if messages else []
    except Exception:  # a broken template must not hide the original failure
        prompt_ids = []
    trajectory = Trajectory.from_prompt(
        prompt_ids or list(tokenizer.encode(tokenizer.eos_token, add_special_tokens=False))
    )
    trajectory.add_observation([tokenizer.convert_tokens_to_ids(tokenizer.eos_token)])
    return trajectory
