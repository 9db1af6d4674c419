"""Where a trajectory's token ids come from: the server's own ids (token-exact), or re-encoded text (the fallback,
:class:`~search_r1_oai.reencode.ReencodedIds`).

Chosen once, from the first turn's reply, so the loop never asks which mode it is in. A source reads a reply into
a :class:`Reply` whose values are checked (:mod:`~search_r1_oai.server_values`); it creates and changes no
trajectory state: :class:`~search_r1_oai.trajectory.Trajectory` appends what it reads.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from search_r1_oai.errors import CapabilityError
from search_r1_oai.reencode import ReencodedIds
from search_r1_oai.server_values import check_reply, check_sampled
from search_r1_oai.sglang_wire import MIN_TOKEN_ID_VERSION, TurnOutput
from search_r1_oai.trajectory import Reply

if TYPE_CHECKING:
    from search_r1_oai.context import RolloutContext

logger = logging.getLogger(__name__)


class IdSource(Protocol):
    """Reads each reply of a trajectory into the ids it adds; ``reencoded`` sources let the server render the whole
    conversation every turn."""

    reencoded: bool

    def read(self, output: TurnOutput, tokens: list[int], messages: list[dict], vocab_size: int) -> Reply:
        """The reply's ids, checked; ``tokens`` are ours so far (none before the first turn)."""
        ...


class ServerIds:
    """The server's ids: it conditions on our ``input_ids`` and reports the ids and logprobs it sampled."""

    reencoded = False

    def read(self, output: TurnOutput, tokens: list[int], messages: list[dict], vocab_size: int) -> Reply:
        """The reply's ids, checked; ``tokens`` are ours so far (none before the first turn)."""
        check_reply(output, vocab_size)
        check_sampled(output.output_ids or [], output.output_logprobs or [], vocab_size)
        if tokens and not output.has_token_ids:
            raise CapabilityError("the policy server stopped returning token ids mid-trajectory")
        return Reply(output.prompt_ids, output.prompt_tokens, output.output_ids or [], output.output_logprobs or [])


def choose_id_source(output: TurnOutput, context: RolloutContext, tools: list[dict]) -> IdSource:
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
    return ReencodedIds(context.token_vocab(), tools)


def resumed_id_source(reencoded: bool, context: RolloutContext, tools: list[dict]) -> IdSource:
    """The id source a resumed trajectory was using."""
    return ReencodedIds(context.token_vocab(), tools) if reencoded else ServerIds()
