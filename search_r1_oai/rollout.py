"""The multi-turn loop of one trajectory: generate, append the sampled turn, run its tool calls, append their
results, repeat, then stop.

:func:`run_rollout` takes the prompt messages, the tools schemas and slime's sampling params (:func:`run_trajectory`
a trajectory already started or resumed) and returns a :class:`~search_r1_oai.result.RolloutResult`. It never
raises (``asyncio.CancelledError`` aside) and never waits forever: an exception of the tree in
:mod:`search_r1_oai.errors` ends the trajectory FAILED with its class's
``stop_reason``, a failed tool call becomes a tool message, and a trajectory still running after
``trajectory_timeout_s`` ends TRUNCATED (stop_reason ``deadline``, not trained on). The token state and the chat
turns belong to :class:`~search_r1_oai.trajectory.Trajectory`; where ids come from is
:mod:`~search_r1_oai.token_ids`; what a tool call does is :mod:`~search_r1_oai.tools`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from search_r1_oai.context import RolloutContext
from search_r1_oai.errors import PromptError, RolloutError
from search_r1_oai.result import Outcome, RolloutResult, Stop
from search_r1_oai.sglang_wire import chat_sampling_fields
from search_r1_oai.text import clean_text
from search_r1_oai.token_ids import choose_id_source, resumed_id_source
from search_r1_oai.tools import run_tool_calls
from search_r1_oai.trajectory import Trajectory

logger = logging.getLogger(__name__)

# How an error of each stop_reason reads in ``metadata["error"]`` (the exception's own message follows).
_ERROR_PREFIX = {
    "bad_server_value": "the policy server sent a bad value: ",
    "invariant": "token-exact invariant broken: ",
}


def _failed(error: str, reason: str) -> Stop:
    return Stop(Outcome.FAILED, reason, clean_text(_ERROR_PREFIX.get(reason, "") + error))


async def run_rollout(
    context: RolloutContext,
    messages: list[dict[str, Any]],
    sampling_params: dict[str, Any],
    *,
    tools: list[dict] | None = None,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
) -> RolloutResult:
    """Run one trajectory from the prompt ``messages`` and the ``tools`` schemas offered (see :func:`run_trajectory`)."""
    trajectory = Trajectory.start(messages, tools)
    return await run_trajectory(context, trajectory, sampling_params, is_aborted=is_aborted, evaluation=evaluation)


async def run_trajectory(
    context: RolloutContext,
    trajectory: Trajectory,
    sampling_params: dict[str, Any],
    *,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
) -> RolloutResult:
    """Run a trajectory (fresh from :meth:`Trajectory.start`, or resumed by :meth:`Trajectory.load`) to its end
    against the context's policy.

    ``sampling_params`` are slime's (SGLang-native names; ``max_new_tokens`` caps each turn). ``is_aborted`` is
    asked before every turn; when it turns true the result is ABORTED with the state to resume from.
    """
    stop: Stop
    limit = context.settings.trajectory_timeout_s
    deadline = asyncio.timeout(limit)
    try:
        if trajectory.unusable is not None:
            raise PromptError(trajectory.unusable)
        async with deadline:
            stop = await _loop(context, trajectory, sampling_params, is_aborted)
    except TimeoutError as exc:
        if not deadline.expired():
            logger.exception("rollout failed")
            stop = _failed(f"{type(exc).__name__}: {exc}", "internal_error")
        else:
            error = f"the trajectory did not finish within SEARCH_R1_TRAJECTORY_TIMEOUT_S={limit:g} s"
            stop = Stop(Outcome.TRUNCATED, "deadline", error, train=False)
    except RolloutError as exc:
        stop = _failed(str(exc), exc.stop_reason)
    except Exception as exc:  # nothing may escape into slime's rollout step
        logger.exception("rollout failed")
        stop = _failed(f"{type(exc).__name__}: {exc}", "internal_error")
    result = trajectory.finish(stop, context.tokenizer)
    _maybe_log(context, result, evaluation)
    return result


async def _loop(
    context: RolloutContext, trajectory: Trajectory, sampling_params: dict[str, Any], is_aborted: Callable[[], bool]
) -> Stop:
    """The algorithm: generate -> append the sampled turn -> run its tool calls -> append their results."""
    settings, tokenizer, chat, tools = context.settings, context.tokenizer, context.chat(), trajectory.tools
    template = context.template(tools)  # a template the rollout cannot extend fails here, before any generation
    sampling = chat_sampling_fields(sampling_params)
    max_new_tokens = int(sampling_params.get("max_new_tokens") or settings.context_budget)
    source = resumed_id_source(trajectory.reencoded, context, tools) if trajectory.started else None
    while True:
        if is_aborted():
            return Stop(Outcome.ABORTED, "aborted")
        max_tokens, full = trajectory.tokens_left(max_new_tokens, settings.context_budget, tokenizer)
        if full:
            return Stop(Outcome.TRUNCATED, full)

        # 1. Generate. The server renders the messages on the first turn (and on every turn without token ids);
        # otherwise it conditions on our ids and reads the prompt messages only for stop tokens and tool choice.
        renders = source is None or source.reencoded
        body = chat.build_request(
            trajectory.messages if renders else trajectory.prompt,
            tools,
            sampling,
            max_tokens,
            return_prompt_ids=renders or settings.verify_prompt_ids,
        )
        output = await chat.complete(body, None if renders else trajectory.tokens_json())

        # 2. Append exactly the ids the server conditioned on and sampled, once they are checked.
        source = source or choose_id_source(output, context, tools)
        reply = source.read(output, trajectory.tokens, trajectory.messages, context.vocab_size)
        turn = trajectory.append_reply(output, reply, tokenizer, settings.tool_call_markers)
        if turn is None:
            return Stop(Outcome.ABORTED, "abort")

        # 3. Stop when the turn answered, ran out of room, or was the last one allowed.
        if output.finish_reason == "length":
            return Stop(Outcome.TRUNCATED, "length")
        if not turn.calls:
            return Stop(Outcome.COMPLETED, "answer")
        if trajectory.stats.turns >= settings.max_turns:
            return Stop(Outcome.TRUNCATED, "max_turns")

        # 4. Run the tools and append their results with the template's own glue (loss mask 0).
        tool_messages = await run_tool_calls(turn.calls, tools, context, trajectory.stats)
        delta = await template.delta(tool_messages, trajectory.tokens[-1])
        if not trajectory.append_tool_results(tool_messages, delta, settings.context_budget):
            return Stop(Outcome.TRUNCATED, "context_budget")


def _maybe_log(context: RolloutContext, result: RolloutResult, evaluation: bool) -> None:
    """One trajectory in every ``log_every``, turn by turn, so a run's log shows what the policy does."""
    every = context.settings.log_every
    if every <= 0 or context.count_finished() % every != 0:
        return
    stats = result.stats
    summary = {"turns": stats.turns, **stats.tool_summary(), "tool_errors": stats.tool_errors}
    summary |= {"bad_tool_calls": stats.bad_tool_calls, "has_final_answer": stats.has_final_answer}
    logger.info(
        "trajectory eval=%s status=%s reason=%s error=%s %s",
        evaluation,
        result.outcome.name,
        result.stop_reason,
        result.error,
        json.dumps(summary),
    )
    turn = 0
    for message in result.messages:
        if message.get("role") == "assistant":
            turn += 1
        if turn:
            shown = json.dumps({k: v for k, v in message.items() if k != "role"}, ensure_ascii=False, default=str)
            logger.info("  turn %s %s: %s", turn, message.get("role"), clean_text(shown[:2000]))
