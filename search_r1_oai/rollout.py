"""The multi-turn loop of one trajectory: generate, append the sampled turn, run its tool calls, append their
results, repeat, then stop.

:func:`run_rollout` takes the prompt messages, the tools schemas and slime's sampling params and returns a
:class:`~search_r1_oai.result.RolloutResult`. It never raises (``asyncio.CancelledError`` aside) and never waits
forever: a failure of :mod:`search_r1_oai.errors`' tree ends the trajectory FAILED with the class's
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

from search_r1_oai.chat_client import ChatClient
from search_r1_oai.context import RolloutContext
from search_r1_oai.errors import RolloutError
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats, Stop
from search_r1_oai.server_values import check_reply, check_sampled
from search_r1_oai.sglang_wire import TurnOutput, chat_sampling_fields
from search_r1_oai.text import clean_text
from search_r1_oai.token_ids import ServerIds, choose_id_source, resumed_id_source
from search_r1_oai.tool_calls import ToolCall, calls_from_server, calls_from_text
from search_r1_oai.tools import run_tool_calls
from search_r1_oai.trajectory import SampledTurn, Trajectory

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
    trajectory: Trajectory | None = None,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
) -> RolloutResult:
    """Run one trajectory from ``messages`` (or carry on a resumed ``trajectory``) against the context's policy.

    ``sampling_params`` are slime's (SGLang-native names; ``max_new_tokens`` caps each turn). ``is_aborted`` is
    asked before every turn; when it turns true the result is ABORTED with the state to resume from.
    """
    schemas: list[dict] = []
    stop: Stop
    limit = context.settings.trajectory_timeout_s
    deadline = asyncio.timeout(limit)
    try:
        schemas = _tool_schemas(tools)
        trajectory = trajectory or Trajectory.start(messages)
        async with deadline:
            stop = await _loop(context, trajectory, schemas, sampling_params, is_aborted)
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
    trajectory = trajectory or Trajectory(messages=[], prompt_messages=0)  # the prompt itself was unusable
    try:
        result = trajectory.finish(stop, context.tokenizer, schemas)
    except Exception as exc:  # same: report, never raise
        logger.exception("could not finish the rollout")
        result = _empty_result(f"{type(exc).__name__}: {exc}", stop.reason, trajectory.stats)
    _maybe_log(context, result, evaluation)
    return result


def _tool_schemas(tools: Any) -> list[dict]:
    """The OpenAI function schemas the policy is offered (``search`` when none are given)."""
    if not tools:
        return [SEARCH_TOOL]
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools
    ):
        raise ValueError(f"tools must be a list of OpenAI function schemas, got {str(tools)[:200]!r}")
    return list(tools)


async def _loop(
    context: RolloutContext,
    trajectory: Trajectory,
    tools: list[dict],
    sampling_params: dict[str, Any],
    is_aborted: Callable[[], bool],
) -> Stop:
    """The algorithm: generate -> append the sampled turn -> run its tool calls -> append their results."""
    settings, tokenizer, chat, template = context.settings, context.tokenizer, context.chat(), context.template(tools)
    sampling = chat_sampling_fields(sampling_params)
    max_new_tokens = int(sampling_params.get("max_new_tokens") or settings.context_budget)
    source = resumed_id_source(trajectory.reencoded, context, tools) if trajectory.started else None
    while True:
        if is_aborted():
            return Stop(Outcome.ABORTED, "aborted")
        max_tokens, full = trajectory.tokens_left(max_new_tokens, settings.context_budget, tokenizer, tools)
        if full:
            return Stop(Outcome.TRUNCATED, full)

        # 1. Generate.
        output = await _generate(chat, trajectory, tools, sampling, max_tokens, source, settings.verify_prompt_ids)

        # 2. Append exactly the ids the server conditioned on and sampled, once they are checked.
        check_reply(output, context.vocab_size)
        if source is None:
            source = choose_id_source(output, context, tools)
            trajectory.begin(source.first_prompt_ids(output, trajectory.messages), reencoded=source.reencoded)
        else:
            trajectory.check_prompt(output, source)
        sampled = source.sampled(output)
        check_sampled(sampled.ids, sampled.log_probs, context.vocab_size)
        turn = trajectory.append_sampled(output, sampled, tokenizer)
        if turn is None:
            return Stop(Outcome.ABORTED, "abort")

        # 3. Record the assistant turn; stop when it answered, ran out of room, or used its last turn.
        calls, content = _turn_calls(output, turn, settings.tool_call_markers)
        trajectory.record_turn(content, None if turn.resumed else output.tool_calls)
        if output.finish_reason == "length":
            return Stop(Outcome.TRUNCATED, "length")
        if not calls:
            return Stop(Outcome.COMPLETED, "answer")
        if trajectory.stats.turns >= settings.max_turns:
            return Stop(Outcome.TRUNCATED, "max_turns")

        # 4. Run the tools and append their results with the template's own glue (loss mask 0).
        tool_messages = await run_tool_calls(calls, tools, context, trajectory.stats)
        if not await trajectory.append_tool_results(tool_messages, template, settings.context_budget):
            return Stop(Outcome.TRUNCATED, "context_budget")


async def _generate(
    chat: ChatClient,
    trajectory: Trajectory,
    tools: list[dict],
    sampling: dict[str, Any],
    max_tokens: int,
    source: ServerIds | None,
    verify_prompt_ids: bool,
) -> TurnOutput:
    """One policy call. The server renders the messages on the first turn (and every turn of a re-encoded
    trajectory); otherwise it conditions on our ``input_ids`` and reads the messages only for template stop tokens
    and tool-choice constraints, so the prompt messages suffice and the request stays small."""
    server_renders = source is None or source.reencoded
    body = chat.build_request(
        trajectory.messages if server_renders else trajectory.prompt,
        tools,
        sampling,
        max_tokens,
        return_prompt_ids=server_renders or verify_prompt_ids,
    )
    return await chat.complete(body, None if server_renders else trajectory.tokens_json())


def _turn_calls(output: TurnOutput, turn: SampledTurn, markers: tuple[str, str]) -> tuple[list[ToolCall], str]:
    """The turn's calls and visible content. The raw output text is parsed when the server's parser saw only part
    of the turn (a resumed turn) or dropped blocks it could not parse (bad JSON, unknown tool)."""
    text, start = turn.text, markers[0]
    blocks = text.count(start)
    server_calls = [] if turn.resumed else calls_from_server(output.tool_calls)
    if server_calls and len(server_calls) >= blocks:
        return server_calls, output.content or ""
    if blocks == 0:
        return [], text.strip() if turn.resumed else (output.content or "")
    return calls_from_text(text, markers), text[: text.find(start)].strip()


def _empty_result(error: str, reason: str, stats: RolloutStats) -> RolloutResult:
    return RolloutResult(
        tokens=[],
        prompt_length=0,
        loss_mask=[],
        log_probs=[],
        response="",
        outcome=Outcome.FAILED,
        stop_reason=reason,
        stats=stats,
        error=error,
        train=False,
    )


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
