"""The multi-turn loop of one trajectory: generate, run the tool calls, feed the results back, repeat, then stop.

:func:`run_rollout` takes the prompt messages, the tools schemas and slime's sampling params and returns a
:class:`~search_r1_oai.result.RolloutResult`. It never raises (``asyncio.CancelledError`` aside) and never waits
forever: a failed policy call, or a reply with a value that must not be trained on, becomes outcome FAILED, a
failed tool call becomes a tool message, and a trajectory still running after ``trajectory_timeout_s`` ends
TRUNCATED (stop_reason ``deadline``, not trained on). The pieces it calls each do one job:
:mod:`~search_r1_oai.token_ids` (where ids come from), :mod:`~search_r1_oai.state` (what a resumed rollout
carries), :mod:`~search_r1_oai.tools` (what a tool call does), :mod:`~search_r1_oai.context` (what rollouts share).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_r1_oai.chat_client import BadServerValue, PolicyError, TurnOutput, chat_sampling_fields
from search_r1_oai.context import RolloutContext
from search_r1_oai.policy_route import RouteError
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats
from search_r1_oai.server_values import check_reply, check_sampled
from search_r1_oai.state import RolloutState
from search_r1_oai.text import clean_text
from search_r1_oai.token_ids import CapabilityError, begin_trajectory, placeholder_trajectory, token_ids_for
from search_r1_oai.tool_calls import ToolCall, calls_from_server, calls_from_text
from search_r1_oai.tools import run_tool_calls
from search_r1_oai.trajectory import TrajectoryError, encode_text, encode_text_off_loop, render_chat

logger = logging.getLogger(__name__)

# The first prompt is rendered by the server, whose tools JSON differs from a client render by a few tokens between
# releases (e.g. an added "strict" key); the first turn's budget check keeps this much slack for it.
_FIRST_PROMPT_SLACK = 32


@dataclass
class Stop:
    outcome: Outcome
    reason: str
    error: str | None = None
    # False keeps even exact tokens out of training (a trajectory cut by the wall clock: the servers' doing).
    train: bool = True


def _failed(error: str, reason: str) -> Stop:
    return Stop(Outcome.FAILED, reason, clean_text(error))


def _bad_value(exc: BadServerValue) -> Stop:
    return _failed(f"the policy server sent a bad value: {exc}", "bad_server_value")


async def run_rollout(
    context: RolloutContext,
    messages: list[dict[str, Any]],
    sampling_params: dict[str, Any],
    *,
    tools: list[dict] | None = None,
    state: RolloutState | None = None,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
) -> RolloutResult:
    """Run one trajectory from ``messages`` (or carry on from a saved ``state``) against the context's policy.

    ``sampling_params`` are slime's (SGLang-native names; ``max_new_tokens`` caps each turn). ``is_aborted`` is
    asked before every turn; when it turns true the result is ABORTED with the state to resume from.
    """
    schemas: list[dict] = []
    stop: Stop
    limit = context.settings.trajectory_timeout_s
    deadline = asyncio.timeout(limit)
    try:
        schemas = _tool_schemas(tools)
        state = state or RolloutState.start(messages)
        async with deadline:
            stop = await _loop(context, state, schemas, sampling_params, is_aborted)
    except TimeoutError as exc:
        if not deadline.expired():
            logger.exception("rollout failed")
            stop = _failed(f"{type(exc).__name__}: {exc}", "internal_error")
        else:
            error = f"the trajectory did not finish within SEARCH_R1_TRAJECTORY_TIMEOUT_S={limit:g} s"
            stop = Stop(Outcome.TRUNCATED, "deadline", error, train=False)
    except Exception as exc:  # nothing may escape into slime's rollout step
        logger.exception("rollout failed")
        stop = _failed(f"{type(exc).__name__}: {exc}", "internal_error")
    try:
        result = _result(context, state, schemas, stop)
    except Exception as exc:  # same: report, never raise
        logger.exception("could not finish the rollout")
        result = _empty_result(f"{type(exc).__name__}: {exc}", stop.reason, state)
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
    state: RolloutState,
    tools: list[dict],
    sampling_params: dict[str, Any],
    is_aborted: Callable[[], bool],
) -> Stop:
    settings, stats = context.settings, state.stats
    template = context.template(tools)
    chat = context.chat()
    sampling = chat_sampling_fields(sampling_params)
    max_new_tokens = int(sampling_params.get("max_new_tokens") or settings.context_budget)
    ids = token_ids_for(state, context, tools)
    while True:
        if is_aborted():
            return Stop(Outcome.ABORTED, "aborted")
        max_tokens = _max_tokens(context, state, tools, max_new_tokens)
        if isinstance(max_tokens, Stop):
            return max_tokens

        # 1. Generate. With input_ids the server does not render messages (it reads them only for template stop
        # tokens and tool-choice constraints), so the prompt messages suffice and the request stays small.
        server_renders = ids is None or ids.server_renders
        body = chat.build_request(
            state.messages if server_renders else state.prompt,
            tools,
            sampling,
            max_tokens,
            return_prompt_ids=server_renders or settings.verify_prompt_ids,
        )
        input_ids = None if server_renders or state.trajectory is None else state.trajectory.tokens_json()
        try:
            output = await chat.complete(body, input_ids)
        except BadServerValue as exc:
            return _bad_value(exc)
        except PolicyError as exc:
            return _failed(str(exc), "capability" if isinstance(exc, RouteError) else "policy_error")
        stats.policy_latency_s += output.latency_s

        # 2. Append exactly the ids the server conditioned on and sampled, once they are checked.
        try:
            check_reply(output, context.vocab_size)
            if ids is None:
                ids = begin_trajectory(output, state, context, tools)
            else:
                ids.check_prompt(output, state)
            sampled_ids, log_probs = ids.sampled(output, state)
            check_sampled(sampled_ids, log_probs, context.vocab_size)
            turn_text, merged = _append_sampled(context, state, output, sampled_ids, log_probs)
        except BadServerValue as exc:
            return _bad_value(exc)
        except CapabilityError as exc:
            return _failed(str(exc), "capability")
        except TrajectoryError as exc:
            return _failed(f"token-exact invariant broken: {exc}", "invariant")
        if output.finish_reason == "abort":
            return Stop(Outcome.ABORTED, "abort")

        # 3. Record the assistant turn; stop when it answered, ran out of room, or used its last turn.
        calls, content = _turn_calls(output, turn_text, merged, settings.tool_call_markers)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if output.tool_calls and not merged:
            message["tool_calls"] = output.tool_calls
        state.messages.append(message)
        stats.final_content = content
        if output.finish_reason == "length":
            return Stop(Outcome.TRUNCATED, "length")
        if not calls:
            stats.has_final_answer = "<answer>" in content and "</answer>" in content
            return Stop(Outcome.COMPLETED, "answer")
        if stats.turns >= settings.max_turns:
            return Stop(Outcome.TRUNCATED, "max_turns")

        # 4. Run the tools and append their results with the template's own glue (loss mask 0).
        tool_messages = await run_tool_calls(calls, tools, context, stats)
        assert state.trajectory is not None
        delta_text = template.delta_text(tool_messages, state.trajectory.tokens[-1] == template.eos_id)
        delta = await encode_text_off_loop(context.tokenizer, delta_text)
        if len(state.trajectory.tokens) + len(delta) >= settings.context_budget:
            return Stop(Outcome.TRUNCATED, "context_budget")
        state.trajectory.add_observation(delta)
        state.response_parts.append(delta_text)
        state.messages.extend(tool_messages)


def _max_tokens(context: RolloutContext, state: RolloutState, tools: list[dict], max_new_tokens: int) -> int | Stop:
    """This turn's ``max_tokens``: slime's ``max_new_tokens`` less what an aborted turn already generated, capped by
    what is left of the context budget; a :class:`Stop` when either is used up."""
    if state.trajectory is None:
        used = _first_prompt_estimate(context, state, tools, max_new_tokens) + _FIRST_PROMPT_SLACK
        already = 0
    else:
        used = len(state.trajectory.tokens)
        already = 0 if state.pending_turn_start is None else used - state.pending_turn_start
    budget_left = context.settings.context_budget - used
    if budget_left <= 0:
        return Stop(Outcome.TRUNCATED, "context_budget")
    if max_new_tokens - already <= 0:
        return Stop(Outcome.TRUNCATED, "length")
    return min(max_new_tokens - already, budget_left)


def _first_prompt_estimate(context: RolloutContext, state: RolloutState, tools: list[dict], max_new_tokens: int) -> int:
    """Tokens of the prompt before the server has rendered it. A token covers at least one byte, so the UTF-8
    length of the rendered text bounds the count; encoding is only needed when that bound could matter."""
    text = render_chat(context.tokenizer, state.messages, tools, add_generation_prompt=True)
    upper_bound = len(text.encode("utf-8"))
    if upper_bound + _FIRST_PROMPT_SLACK + max_new_tokens < context.settings.context_budget:
        return upper_bound
    return len(encode_text(context.tokenizer, text))


def _append_sampled(
    context: RolloutContext, state: RolloutState, output: TurnOutput, ids: list[int], log_probs: list[float]
) -> tuple[str, bool]:
    """Append the sampled ids (loss mask 1). Returns the turn's text without the end-of-turn token, and whether it
    continues a turn the server aborted earlier (its text then spans both generations)."""
    trajectory = state.trajectory
    assert trajectory is not None
    turn_start = len(trajectory.tokens)
    if state.pending_turn_start is None:
        state.stats.turns += 1
    else:
        turn_start = state.pending_turn_start
    trajectory.add_sampled(ids, log_probs)
    text = context.tokenizer.decode(ids, skip_special_tokens=False)
    state.response_parts.append(text)
    if output.finish_reason == "abort":
        state.pending_turn_start = turn_start
        return "", False
    merged = state.pending_turn_start is not None
    if merged:
        text = context.tokenizer.decode(trajectory.tokens[turn_start:], skip_special_tokens=False)
    state.pending_turn_start = None
    return text.removesuffix(context.tokenizer.eos_token), merged


def _turn_calls(output: TurnOutput, text: str, merged: bool, markers: tuple[str, str]) -> tuple[list[ToolCall], str]:
    """The turn's calls and visible content. The raw output text is parsed when the server's parser saw only part
    of the turn (a resumed turn) or dropped blocks it could not parse (bad JSON, unknown tool)."""
    start = markers[0]
    blocks = text.count(start)
    server_calls = [] if merged else calls_from_server(output.tool_calls)
    if server_calls and len(server_calls) >= blocks:
        return server_calls, output.content or ""
    if blocks == 0:
        return [], text.strip() if merged else (output.content or "")
    return calls_from_text(text, markers), text[: text.find(start)].strip()


def _result(context: RolloutContext, state: RolloutState | None, tools: list[dict], stop: Stop) -> RolloutResult:
    """The result of a stopped loop; a trajectory that never got a turn gets placeholder tensors and is not
    trained on."""
    state = state or RolloutState(messages=[], prompt_messages=0)  # the prompt itself was unusable
    trajectory, response = state.trajectory, "".join(state.response_parts)
    placeholder = trajectory is None and stop.outcome in (Outcome.FAILED, Outcome.TRUNCATED)
    if placeholder:
        trajectory = placeholder_trajectory(context.tokenizer, state.messages, tools)
        response = context.tokenizer.eos_token
    if trajectory is not None:
        trajectory.validate()
    return RolloutResult(
        tokens=list(trajectory.tokens) if trajectory else [],
        prompt_length=trajectory.prompt_length if trajectory else 0,
        loss_mask=list(trajectory.loss_mask) if trajectory else [],
        log_probs=list(trajectory.log_probs) if trajectory else [],
        response=response,
        outcome=stop.outcome,
        stop_reason=stop.reason,
        stats=state.stats,
        error=stop.error,
        train=stop.train and stop.outcome is not Outcome.FAILED and not placeholder,
        saved_state=state.to_saved() if stop.outcome is Outcome.ABORTED else None,
        messages=state.messages,
    )


def _empty_result(error: str, reason: str, state: RolloutState | None) -> RolloutResult:
    return RolloutResult(
        tokens=[],
        prompt_length=0,
        loss_mask=[],
        log_probs=[],
        response="",
        outcome=Outcome.FAILED,
        stop_reason=reason,
        stats=state.stats if state else RolloutStats(),
        error=error,
        train=False,
    )


def _maybe_log(context: RolloutContext, result: RolloutResult, evaluation: bool) -> None:
    """One trajectory in every ``log_every``, turn by turn, so a run's log shows what the policy does."""
    every = context.settings.log_every
    if every <= 0 or context.count_finished() % every != 0:
        return
    stats = result.stats
    summary = {"turns": stats.turns, "searches": stats.searches, "tool_errors": stats.tool_errors}
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
