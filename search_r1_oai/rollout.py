"""The multi-turn loop of one sample: generate, run the search calls, feed the results back, repeat, then stop.

Entry point :func:`run_rollout` takes a slime ``Sample`` (or anything with its fields; slime is never imported
here), fills ``tokens``/``response_length``/``loss_mask``/``rollout_log_probs``/``status``/``metadata`` and
returns it. It never raises (``asyncio.CancelledError`` aside): a failed policy call becomes status FAILED, a
failed search becomes a tool message.

Status: COMPLETED when the assistant answers without tool calls; TRUNCATED on ``finish_reason == "length"``, when
the context budget runs out, or when the last allowed turn still calls tools; ABORTED only on
``finish_reason == "abort"`` or when ``is_aborted()`` turns true between turns (state is saved in
``sample.metadata`` so slime's partial rollout resumes it); FAILED (with ``remove_sample``) when the policy call
fails for good or the server cannot give token ids.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_r1_oai.chat_client import MIN_TOKEN_ID_VERSION, ChatClient, PolicyError, TurnOutput, chat_sampling_fields
from search_r1_oai.config import Settings, get_settings
from search_r1_oai.policy_route import RouteError, policy_route
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.reencode import count_drift, ids_from_logprob_content
from search_r1_oai.search_client import SearchClient, SearchError, format_search_results
from search_r1_oai.tool_calls import ToolCall, calls_from_server, calls_from_text, search_queries
from search_r1_oai.trajectory import (
    Trajectory,
    TrajectoryError,
    encode_text,
    render_chat,
    render_prompt_ids,
    tool_turn_template,
)

logger = logging.getLogger(__name__)

STATE_KEY = "search_r1_state"
_SAMPLE_COUNTER = itertools.count(1)
_MAX_ERROR_MESSAGES = 8
# The first prompt is rendered by the server, whose tools JSON differs from a client render by a few tokens between
# releases (e.g. an added "strict" key); the first turn's budget check keeps this much slack for it.
_FIRST_PROMPT_SLACK = 32


@dataclass
class _Stop:
    status: str
    reason: str


class _Rollout:
    """One sample's loop; the state that survives an abort lives in ``sample.metadata``."""

    def __init__(
        self,
        sample: Any,
        sampling_params: dict[str, Any],
        tokenizer: Any,
        policy_url: str,
        settings: Settings,
        is_aborted: Callable[[], bool],
        evaluation: bool,
        chat: ChatClient | None = None,
        search: SearchClient | None = None,
    ) -> None:
        self.sample = sample
        self.tokenizer = tokenizer
        self.settings = settings
        self.is_aborted = is_aborted
        self.evaluation = evaluation
        self.chat = chat or ChatClient(policy_url, settings, route=policy_route(policy_url, settings, tokenizer))
        self.search = search or SearchClient(settings)
        self.sampling_fields = chat_sampling_fields(sampling_params)
        self.max_new_tokens = int(sampling_params.get("max_new_tokens") or settings.context_budget)
        if sample.metadata is None:
            sample.metadata = {}
        self.meta: dict[str, Any] = sample.metadata
        self.tools = _tools_of(self.meta)
        self.template = tool_turn_template(tokenizer, self.tools)
        self.trajectory: Trajectory | None = None
        self.messages: list[dict] = []
        self.pending_turn_start: int | None = None
        self.fallback = False
        self.turn_log: list[dict[str, Any]] = []
        self._turn_text = ""
        self._merged_turn = False
        # Response text built turn by turn (decoding the whole response at the end costs O(length) again).
        self.response_parts: list[str] = []
        self.n_prompt_messages = 0

    # ---- state -------------------------------------------------------------------------------------------------

    def _start_or_resume(self) -> None:
        state = self.meta.get(STATE_KEY)
        if self.sample.status == self.sample.Status.ABORTED and isinstance(state, dict):
            try:
                self.trajectory = Trajectory.from_sample(self.sample, int(state["prompt_length"]))
                self.messages = [dict(m) for m in state["messages"]]
                self.n_prompt_messages = int(state["prompt_messages"])
                self.pending_turn_start = state.get("pending_turn_start")
                self.fallback = bool(state.get("fallback", False))
                self.response_parts = [self.sample.response or ""]
                self.meta["resumed"] = int(self.meta.get("resumed", 0)) + 1
                return
            except (TrajectoryError, KeyError, TypeError, ValueError) as exc:
                logger.warning("sample %s: saved rollout state unusable (%s); starting over", self.sample.index, exc)
                self.meta["resume_discarded"] = str(exc)
        self.trajectory = None
        self.messages = _prompt_messages(self.sample.prompt)
        self.n_prompt_messages = len(self.messages)
        self.meta.update(
            turns=0,
            searches=0,
            search_queries=0,
            search_attempts=[],
            search_replicas=[],
            search_errors=[],
            tool_errors=0,
            bad_tool_calls=0,
            tool_error_messages=[],
            has_final_answer=False,
            final_content="",
            retrieval_latency_s=0.0,
            policy_latency_s=0.0,
            token_exact=True,
            drift_tokens=0,
        )
        self.meta.pop(STATE_KEY, None)
        self.meta.pop("error", None)

    def _save_state(self) -> None:
        if self.trajectory is None:
            self.meta.pop(STATE_KEY, None)
            return
        self.meta[STATE_KEY] = {
            "prompt_length": self.trajectory.prompt_length,
            "messages": self.messages,
            "prompt_messages": self.n_prompt_messages,
            "pending_turn_start": self.pending_turn_start,
            "fallback": self.fallback,
        }

    # ---- the loop ----------------------------------------------------------------------------------------------

    async def run(self) -> _Stop:
        self._start_or_resume()
        while True:
            if self.is_aborted():
                return _Stop("ABORTED", "aborted")
            turn_left, budget_left = self._tokens_left()
            if budget_left <= 0:
                return _Stop("TRUNCATED", "context_budget")
            if turn_left <= 0:
                return _Stop("TRUNCATED", "length")
            max_tokens = min(turn_left, budget_left)
            server_renders = self.trajectory is None or self.fallback
            # With input_ids the server does not render messages (it reads them only for template stop tokens and
            # tool-choice constraints), so the prompt messages suffice and the request stays small.
            body = self.chat.build_request(
                self.messages if server_renders else self.messages[: self.n_prompt_messages],
                self.tools,
                self.sampling_fields,
                max_tokens,
                return_prompt_ids=server_renders or self.settings.verify_prompt_ids,
            )
            try:
                output = await self.chat.complete(body, None if server_renders else self.trajectory.tokens_json())
            except PolicyError as exc:
                return self._fail(str(exc), "capability" if isinstance(exc, RouteError) else "policy_error")
            self.meta["policy_latency_s"] += output.latency_s
            try:
                stop = self._take_output(output)
            except TrajectoryError as exc:
                return self._fail(f"token-exact invariant broken: {exc}", "invariant")
            if stop is not None:
                return stop
            stop = await self._after_turn(output)
            if stop is not None:
                return stop

    def _tokens_left(self) -> tuple[int, int]:
        """``(max_new_tokens less what an aborted turn already generated, what is left of the context budget)``."""
        if self.trajectory is None:
            used = self._first_prompt_estimate() + _FIRST_PROMPT_SLACK
            already = 0
        else:
            used = len(self.trajectory.tokens)
            already = 0 if self.pending_turn_start is None else used - self.pending_turn_start
        return self.max_new_tokens - already, self.settings.context_budget - used

    def _first_prompt_estimate(self) -> int:
        """Tokens of the prompt before the server has rendered it. A token covers at least one byte, so the UTF-8
        length of the rendered text bounds the count; encoding is only needed when that bound could matter."""
        text = render_chat(self.tokenizer, self.messages, self.tools, add_generation_prompt=True)
        upper_bound = len(text.encode("utf-8"))
        if upper_bound + _FIRST_PROMPT_SLACK + self.max_new_tokens < self.settings.context_budget:
            return upper_bound
        return len(encode_text(self.tokenizer, text))

    def _take_output(self, output: TurnOutput) -> _Stop | None:
        """Append the sampled ids after checking that the server conditioned on exactly our tokens."""
        if self.trajectory is None:
            if output.has_token_ids and output.prompt_ids is not None:
                self.trajectory = Trajectory.from_prompt(output.prompt_ids)
            elif self.settings.allow_reencode_fallback:
                self.fallback = True
                self.meta["token_exact"] = False
                logger.warning("policy server returns no token ids: re-encoding fallback, NOT token-exact")
                self.trajectory = Trajectory.from_prompt(render_prompt_ids(self.tokenizer, self.messages, self.tools))
            else:
                return self._fail(
                    f"the policy server returned no token ids (prompt_token_ids / meta_info.output_token_logprobs): "
                    f"SGLang >= {MIN_TOKEN_ID_VERSION} is required for token-exact rollouts; upgrade it, or set "
                    "SEARCH_R1_ALLOW_REENCODE_FALLBACK=1 to train on re-encoded (drifting) tokens",
                    "capability",
                )
        elif self.fallback:
            reference = render_prompt_ids(self.tokenizer, self.messages, self.tools)
            self.meta["drift_tokens"] += count_drift(self.trajectory.tokens, reference)
        else:
            if not output.has_token_ids:
                return self._fail("the policy server stopped returning token ids mid-trajectory", "capability")
            self._check_conditioning(output)

        if self.fallback:
            ids, log_probs, drift = ids_from_logprob_content(self.tokenizer, output.logprob_content or [])
            self.meta["drift_tokens"] += drift
        else:
            ids, log_probs = output.output_ids or [], output.output_logprobs or []
        turn_start = len(self.trajectory.tokens)
        if self.pending_turn_start is None:
            self.meta["turns"] += 1
        else:
            turn_start = self.pending_turn_start
        self.trajectory.add_sampled(ids, log_probs)
        new_text = self.tokenizer.decode(ids, skip_special_tokens=False)
        self.response_parts.append(new_text)
        if output.finish_reason == "abort":
            self.pending_turn_start = turn_start
            return _Stop("ABORTED", "abort")
        self._merged_turn = self.pending_turn_start is not None
        if self._merged_turn:
            new_text = self.tokenizer.decode(self.trajectory.tokens[turn_start:], skip_special_tokens=False)
        self._turn_text = new_text.removesuffix(self.template.eos_text)
        self.pending_turn_start = None
        return None

    def _check_conditioning(self, output: TurnOutput) -> None:
        """The server used our ``input_ids``: compare them id for id when it returned them, else by count."""
        assert self.trajectory is not None
        if output.prompt_ids is not None:
            self.trajectory.check_conditioning(output.prompt_ids)
        elif output.prompt_tokens is not None and output.prompt_tokens != len(self.trajectory.tokens):
            raise TrajectoryError(
                f"server prefilled {output.prompt_tokens} tokens but we sent {len(self.trajectory.tokens)} input_ids"
            )

    async def _after_turn(self, output: TurnOutput) -> _Stop | None:
        """Record the assistant turn; stop, or run its tool calls and append the next prompt's ids."""
        assert self.trajectory is not None
        calls, content = self._turn_calls(output)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if output.tool_calls and not self._merged_turn:
            message["tool_calls"] = output.tool_calls
        self.messages.append(message)
        log_entry: dict[str, Any] = {"turn": self.meta["turns"], "finish": output.finish_reason, "content": content}
        self.turn_log.append(log_entry)
        self.meta["final_content"] = content

        if output.finish_reason == "length":
            return _Stop("TRUNCATED", "length")
        if not calls:
            self.meta["has_final_answer"] = "<answer>" in content and "</answer>" in content
            return _Stop("COMPLETED", "answer")
        if self.meta["turns"] >= self.settings.max_turns:
            return _Stop("TRUNCATED", "max_turns")

        tool_messages = await self._run_tools(calls, log_entry)
        delta_text = self.template.delta_text(tool_messages, self.trajectory.tokens[-1] == self.template.eos_id)
        delta = encode_text(self.tokenizer, delta_text)
        if len(self.trajectory.tokens) + len(delta) >= self.settings.context_budget:
            log_entry["dropped_tool_tokens"] = len(delta)
            return _Stop("TRUNCATED", "context_budget")
        self.trajectory.add_observation(delta)
        self.response_parts.append(delta_text)
        self.messages.extend(tool_messages)
        return None

    def _turn_calls(self, output: TurnOutput) -> tuple[list[ToolCall], str]:
        """The turn's calls and visible content. The raw output text is parsed when the server's parser saw only
        part of the turn (a resumed turn) or dropped blocks it could not parse (bad JSON, unknown tool)."""
        start = self.settings.tool_call_markers[0]
        text = self._turn_text
        blocks = text.count(start)
        server_calls = [] if self._merged_turn else calls_from_server(output.tool_calls)
        if server_calls and len(server_calls) >= blocks:
            return server_calls, output.content or ""
        if blocks == 0:
            return [], text.strip() if self._merged_turn else (output.content or "")
        return calls_from_text(text, self.settings.tool_call_markers), text[: text.find(start)].strip()

    async def _run_tools(self, calls: list[ToolCall], log_entry: dict[str, Any]) -> list[dict]:
        """One tool message per call, in order; every search query of the turn goes in one ``/retrieve`` call."""
        parsed = [(call, *search_queries(call)) for call in calls]
        all_queries = list(dict.fromkeys(q for _, queries, error in parsed if error is None for q in queries))
        found: dict[str, Any] = {}
        search_error: str | None = None
        if all_queries:
            try:
                result = await self.search.retrieve(all_queries)
                found = dict(zip(all_queries, result.passages, strict=True))
                self.meta["searches"] += 1
                self.meta["search_queries"] += len(all_queries)
                self.meta["retrieval_latency_s"] += result.latency_s
                self.meta["search_attempts"].append(result.attempts)
                self.meta["search_replicas"].append(result.replica)
            except SearchError as exc:
                # The policy reads what happened; the URLs and the underlying error go to metadata only.
                search_error = f"search failed: {exc}"
                self.meta["search_attempts"].append(exc.attempts)
                self.meta["search_replicas"].append("")
                if len(self.meta["search_errors"]) < _MAX_ERROR_MESSAGES:
                    self.meta["search_errors"].append(exc.detail)
        messages = []
        for call, queries, error in parsed:
            # A malformed call is the policy's mistake (it forfeits the format score); a failed search is not.
            if error is not None:
                self.meta["bad_tool_calls"] += 1
            else:
                error = search_error
            if error is not None:
                content = f"Error: {error}"
                self._record_tool_error(error)
            else:
                content = format_search_results(queries, [found[q] for q in queries])
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name or "", "content": content})
        log_entry["tool_calls"] = [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in calls]
        log_entry["tool_results"] = [m["content"][:300] for m in messages]
        return messages

    def _record_tool_error(self, message: str) -> None:
        self.meta["tool_errors"] += 1
        if len(self.meta["tool_error_messages"]) < _MAX_ERROR_MESSAGES:
            self.meta["tool_error_messages"].append(message)

    def _fail(self, error: str, reason: str) -> _Stop:
        self.meta["error"] = error
        return _Stop("FAILED", reason)

    # ---- finishing ---------------------------------------------------------------------------------------------

    def finish(self, stop: _Stop) -> None:
        """Write tokens and status to the sample; keep resumable state for ABORTED."""
        sample = self.sample
        sample.status = getattr(sample.Status, stop.status)
        self.meta["stop_reason"] = stop.reason
        # Nothing generated (prompt over budget, or failed before a turn): slime still needs well-formed tensors.
        placeholder = self.trajectory is None and stop.status in ("FAILED", "TRUNCATED")
        if stop.status == "FAILED" or placeholder:
            _exclude_from_training(sample)
        if placeholder:
            self.trajectory = _placeholder_trajectory(self.tokenizer, self.messages, self.tools)
            self.response_parts = [self.template.eos_text]
        if stop.status == "ABORTED":
            self._save_state()
        else:
            self.meta.pop(STATE_KEY, None)
        if self.trajectory is not None:
            self.trajectory.write_to(sample)
            sample.response = "".join(self.response_parts)
        self._maybe_log(stop)

    def _maybe_log(self, stop: _Stop) -> None:
        every = self.settings.log_every
        if every <= 0 or next(_SAMPLE_COUNTER) % every != 0:
            return
        summary = {
            k: self.meta.get(k)
            for k in ("turns", "searches", "tool_errors", "bad_tool_calls", "has_final_answer", "error")
        }
        logger.info(
            "trajectory sample=%s eval=%s status=%s reason=%s %s",
            self.sample.index,
            self.evaluation,
            stop.status,
            stop.reason,
            json.dumps(summary),
        )
        for entry in self.turn_log:
            logger.info("  turn %s: %s", entry.get("turn"), json.dumps(entry, ensure_ascii=False, default=str)[:2000])


def _tools_of(metadata: dict[str, Any]) -> list[dict]:
    tools = metadata.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools)
    return list(tools) if tools else [SEARCH_TOOL]


def _prompt_messages(prompt: Any) -> list[dict]:
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise ValueError(
            "sample.prompt must be the OpenAI messages list (do not pass --apply-chat-template to slime); "
            f"got {type(prompt).__name__}"
        )
    return [dict(m) for m in prompt]


def _exclude_from_training(sample: Any) -> None:
    if hasattr(sample, "remove_sample"):
        sample.remove_sample = True


def _placeholder_trajectory(tokenizer: Any, messages: list[dict], tools: list[dict]) -> Trajectory:
    """A failed sample still needs well-formed tensors: the prompt plus one masked end-of-turn token."""
    try:
        prompt_ids = render_prompt_ids(tokenizer, messages, tools) if messages else []
    except Exception:  # a broken template must not hide the original failure
        prompt_ids = []
    trajectory = Trajectory.from_prompt(prompt_ids or encode_text(tokenizer, tokenizer.eos_token))
    trajectory.add_observation([tokenizer.convert_tokens_to_ids(tokenizer.eos_token)])
    return trajectory


async def run_rollout(
    sample: Any,
    sampling_params: dict[str, Any],
    *,
    tokenizer: Any,
    policy_url: str,
    settings: Settings | None = None,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
    chat: ChatClient | None = None,
    search: SearchClient | None = None,
) -> Any:
    """Run one sample's multi-turn search trajectory against ``policy_url`` (``http://host:port``) in place.

    ``chat``/``search`` replace the HTTP clients (the overhead benchmark replays recorded responses through them).
    Never raises: any unexpected error marks the sample FAILED with the error in ``sample.metadata["error"]``.
    """
    rollout: _Rollout | None = None
    try:
        rollout = _Rollout(
            sample,
            sampling_params,
            tokenizer,
            policy_url,
            settings or get_settings(),
            is_aborted,
            evaluation,
            chat=chat,
            search=search,
        )
        stop = await rollout.run()
    except Exception as exc:  # nothing may escape into slime's rollout step
        logger.exception("sample %s: rollout failed", getattr(sample, "index", None))
        stop = _Stop("FAILED", "internal_error")
        if getattr(sample, "metadata", None) is None:
            sample.metadata = {}
        sample.metadata["error"] = f"{type(exc).__name__}: {exc}"
    if rollout is not None:
        try:
            rollout.finish(stop)
            return sample
        except Exception as exc:  # same: report, never raise
            logger.exception("sample %s: could not finish the rollout", getattr(sample, "index", None))
            sample.metadata["error"] = f"{type(exc).__name__}: {exc}"
    sample.status = sample.Status.FAILED
    sample.metadata["stop_reason"] = stop.reason
    _exclude_from_training(sample)
    return sample
