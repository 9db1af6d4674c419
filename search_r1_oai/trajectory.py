"""One trajectory, owned by one object: its chat turns, the token ids trained on, and what a resumed rollout needs.

What the policy is trained on must be exactly what it saw and sampled: the ids the server conditioned on, then
the ids it sampled (loss mask 1, with the logprobs it reported), then ids we add ourselves (template glue, tool
results, the next generation prompt: loss mask 0, logprob 0.0). Generated text is never re-encoded.

:class:`Trajectory` is the only writer of that state: the rollout loop calls its methods in the order of the
algorithm (:meth:`~Trajectory.start`, :meth:`~Trajectory.tokens_left`, :meth:`~Trajectory.append_reply`, which
begins the token state or checks the prompt and appends the sampled turn, :meth:`~Trajectory.append_tool_results`,
:meth:`~Trajectory.finish`), and slime's partial rollout carries an ABORTED one over with
:meth:`~Trajectory.to_saved` and :meth:`~Trajectory.load`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from search_r1_oai.chat_template import Delta, encode_text, render_chat, render_prompt_ids
from search_r1_oai.errors import TrajectoryError
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats, Stop
from search_r1_oai.sglang_wire import TurnOutput
from search_r1_oai.tool_calls import ToolCall, calls_from_server, calls_from_text

logger = logging.getLogger(__name__)

# The first prompt is rendered by the server, whose tools JSON differs from a client render by a few tokens between
# releases (e.g. an added "strict" key); the first turn's budget check keeps this much slack for it.
FIRST_PROMPT_SLACK = 32


class Reply(NamedTuple):
    """What one policy reply adds, its values checked (a :mod:`~search_r1_oai.token_ids` source reads it): the
    prompt ids the server reports (or, on a re-encoded first turn, our render; ``None`` when not reported) and their
    count, the sampled ids and logprobs, the drift from token-exact (re-encoded sources only)."""

    prompt_ids: list[int] | None
    prompt_tokens: int | None
    ids: list[int]
    log_probs: list[float]
    drift: int = 0
    reencoded: bool = False


class Turn(NamedTuple):
    """A finished assistant turn: the tool calls it makes and its visible content."""

    calls: list[ToolCall]
    content: str


@dataclass
class Trajectory:
    """``tokens = prompt + response``; ``loss_mask`` and ``log_probs`` cover the response only. ``tokens`` is empty
    until :meth:`begin` (the server renders the first prompt, so its ids are known only from the first reply)."""

    messages: list[dict[str, Any]]
    prompt_messages: int
    # The OpenAI function schemas offered: the prompt is rendered with them.
    tools: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    prompt_length: int = 0
    loss_mask: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    stats: RolloutStats = field(default_factory=RolloutStats)
    # Ids re-encoded from text (servers without token ids, SEARCH_R1_ALLOW_REENCODE_FALLBACK=1).
    reencoded: bool = False
    # Start of a turn the server aborted: its resumed generation belongs to the same turn.
    pending_turn_start: int | None = None
    # Response text built turn by turn (decoding the whole response at the end costs O(length) again).
    response_parts: list[str] = field(default_factory=list)
    # Why the prompt or its tools cannot be rolled out (``None`` when they can): the rollout then ends FAILED with it.
    unusable: str | None = None
    # ``tokens`` as JSON text, one chunk per append: the request's growing ``input_ids`` is not re-serialised.
    _json_chunks: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokens and not self._json_chunks:
            self._json_chunks.append(",".join(map(str, self.tokens)))

    @classmethod
    def start(cls, messages: Any, tools: Any = None) -> Trajectory:
        """A fresh trajectory from the prompt messages (the OpenAI messages list) and the tools schemas offered.

        Never raises: a prompt or tools that cannot be rolled out (a sample's data is not trusted) give an empty
        trajectory that says why in :attr:`unusable`.
        """
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            unusable = (
                "the prompt must be the OpenAI messages list (do not pass --apply-chat-template to slime); "
                f"got {type(messages).__name__}"
            )
            return cls(messages=[], prompt_messages=0, unusable=unusable)
        try:
            offered = offered_tools(tools)
        except ValueError as exc:
            return cls(messages=[], prompt_messages=0, unusable=str(exc))
        return cls(messages=[dict(m) for m in messages], prompt_messages=len(messages), tools=offered)

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return self.messages[: self.prompt_messages]

    @property
    def started(self) -> bool:
        """Whether the first reply gave the prompt's ids."""
        return self.prompt_length > 0

    @property
    def response_length(self) -> int:
        return len(self.tokens) - self.prompt_length

    def tokens_json(self) -> str:
        """``json.dumps(self.tokens)`` in compact form, built from cached chunks."""
        return "[" + ",".join(self._json_chunks) + "]"

    # ---- the algorithm, turn by turn --------------------------------------------------------------------------

    def tokens_left(self, max_new_tokens: int, budget: int, tokenizer: Any) -> tuple[int, str]:
        """This turn's ``max_tokens`` (slime's ``max_new_tokens`` less what an aborted turn already generated,
        capped by what is left of the context ``budget``), and the stop_reason when either is used up."""
        if self.started:
            used = len(self.tokens)
            already = 0 if self.pending_turn_start is None else used - self.pending_turn_start
        else:
            room = budget - max_new_tokens - FIRST_PROMPT_SLACK
            used, already = _prompt_estimate(tokenizer, self.messages, self.tools, room) + FIRST_PROMPT_SLACK, 0
        if budget - used <= 0:
            return 0, "context_budget"
        if max_new_tokens - already <= 0:
            return 0, "length"
        return min(max_new_tokens - already, budget - used), ""

    def begin(self, prompt_ids: list[int], *, reencoded: bool = False) -> None:
        """Start the token state from the ids the server prefilled for the first turn."""
        if not prompt_ids:
            raise TrajectoryError("the server reported an empty prompt")
        self.tokens, self.prompt_length, self._json_chunks = [], len(prompt_ids), []
        self._extend(prompt_ids)
        self.reencoded = reencoded
        self.stats.token_exact = self.stats.token_exact and not reencoded

    def check_prompt(self, prompt_ids: list[int] | None, prompt_tokens: int | None) -> None:
        """The server conditioned on exactly our tokens: compared id for id when it returned them, else by count."""
        if prompt_ids is not None and prompt_ids != self.tokens:
            at = next(
                (i for i, (a, b) in enumerate(zip(prompt_ids, self.tokens, strict=False)) if a != b),
                min(len(prompt_ids), len(self.tokens)),
            )
            raise TrajectoryError(
                f"server conditioned on {len(prompt_ids)} ids that differ from our {len(self.tokens)} at position {at}"
            )
        if prompt_ids is None and prompt_tokens is not None and prompt_tokens != len(self.tokens):
            raise TrajectoryError(f"server prefilled {prompt_tokens} tokens but we sent {len(self.tokens)} input_ids")

    def append_reply(self, output: TurnOutput, reply: Reply, tokenizer: Any, markers: tuple[str, str]) -> Turn | None:
        """Append a checked reply: the first one starts the token state, a later one must have conditioned on our
        tokens; its sampled ids go in with loss mask 1 and the finished turn is recorded as an assistant message.
        ``None`` when the server aborted the turn: a resumed rollout continues it."""
        self.stats.policy_latency_s += output.latency_s
        if self.started:
            self.check_prompt(reply.prompt_ids, reply.prompt_tokens)
        else:
            self.begin(reply.prompt_ids or [], reencoded=reply.reencoded)
        self.stats.drift_tokens += reply.drift
        turn_start = len(self.tokens) if self.pending_turn_start is None else self.pending_turn_start
        if self.pending_turn_start is None:
            self.stats.turns += 1
        self.add_sampled(reply.ids, reply.log_probs)
        text = tokenizer.decode(reply.ids, skip_special_tokens=False)
        self.response_parts.append(text)
        if output.finish_reason == "abort":
            self.pending_turn_start = turn_start
            return None
        resumed, self.pending_turn_start = self.pending_turn_start is not None, None
        if resumed:  # the turn's text spans both generations; the server's parse saw only the last one
            text = tokenizer.decode(self.tokens[turn_start:], skip_special_tokens=False)
        calls, content = _turn_calls(output, text.removesuffix(tokenizer.eos_token), resumed, markers)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if output.tool_calls and not resumed:
            message["tool_calls"] = output.tool_calls
        self.messages.append(message)
        self.stats.final_content = content
        return Turn(calls, content)

    def append_tool_results(self, tool_messages: list[dict], delta: Delta, budget: int) -> bool:
        """Append the tool results as the template's ``delta`` (loss mask 0); False, appending nothing, when they
        would not leave room in the context ``budget``."""
        if len(self.tokens) + len(delta.ids) >= budget:
            return False
        self.add_observation(delta.ids)
        self.response_parts.append(delta.text)
        self.messages.extend(tool_messages)
        return True

    def finish(self, stop: Stop, tokenizer: Any) -> RolloutResult:
        """The result to train on (copies of the token state); a trajectory that never got a turn gets placeholder
        tensors and is not trained on. Never raises: a result that cannot be built is an empty FAILED one."""
        try:
            return self._result(stop, tokenizer)
        except Exception as exc:  # nothing may escape into slime's rollout step
            logger.exception("could not finish the rollout")
            return RolloutResult(
                tokens=[],
                prompt_length=0,
                loss_mask=[],
                log_probs=[],
                response="",
                outcome=Outcome.FAILED,
                stop_reason=stop.reason,
                stats=self.stats,
                error=f"{type(exc).__name__}: {exc}",
                train=False,
            )

    def _result(self, stop: Stop, tokenizer: Any) -> RolloutResult:
        placeholder = not self.started and stop.outcome in (Outcome.FAILED, Outcome.TRUNCATED)
        response = "".join(self.response_parts)
        if placeholder:
            self._placeholder(tokenizer)
            response = tokenizer.eos_token
        elif stop.outcome is Outcome.COMPLETED:
            content = self.stats.final_content
            self.stats.has_final_answer = "<answer>" in content and "</answer>" in content
        self.validate()
        return RolloutResult(
            tokens=list(self.tokens),
            prompt_length=self.prompt_length,
            loss_mask=list(self.loss_mask),
            log_probs=list(self.log_probs),
            response=response,
            outcome=stop.outcome,
            stop_reason=stop.reason,
            stats=self.stats,
            error=stop.error,
            train=stop.train and stop.outcome is not Outcome.FAILED and not placeholder,
            saved_state=self.to_saved() if stop.outcome is Outcome.ABORTED else None,
            messages=self.messages,
        )

    def _placeholder(self, tokenizer: Any) -> None:
        """Well-formed tensors for a trajectory without a turn: the prompt plus one masked end-of-turn token."""
        try:
            prompt_ids = render_prompt_ids(tokenizer, self.messages, self.tools) if self.messages else []
        except Exception:  # a broken template must not hide the original failure
            prompt_ids = []
        self.begin(prompt_ids or encode_text(tokenizer, tokenizer.eos_token))
        self.add_observation([tokenizer.convert_tokens_to_ids(tokenizer.eos_token)])

    # ---- the token state: the one place the loss mask is written -----------------------------------------------

    def _extend(self, ids: list[int]) -> None:
        self.tokens.extend(ids)
        if ids:
            self._json_chunks.append(",".join(map(str, ids)))

    def add_sampled(self, ids: list[int], log_probs: list[float]) -> None:
        """Ids the policy sampled: trained on (mask 1) with the logprobs the server reported."""
        if len(ids) != len(log_probs):
            raise TrajectoryError(f"{len(ids)} sampled ids but {len(log_probs)} logprobs")
        self._extend(ids)
        self.loss_mask.extend([1] * len(ids))
        self.log_probs.extend(log_probs)

    def add_observation(self, ids: list[int]) -> None:
        """Ids we wrote ourselves (template glue, tool results, generation prompt): not trained on."""
        self._extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.log_probs.extend([0.0] * len(ids))

    def validate(self) -> None:
        """Raise :class:`TrajectoryError` if the lengths slime relies on are out of step."""
        n = self.response_length
        if n < 0 or len(self.loss_mask) != n or len(self.log_probs) != n:
            raise TrajectoryError(
                f"response_length={n}, loss_mask={len(self.loss_mask)}, log_probs={len(self.log_probs)}"
            )

    # ---- what an aborted rollout saves and a resumed one loads -------------------------------------------------

    def to_saved(self) -> dict[str, Any] | None:
        """What :meth:`load` needs besides the token arrays slime keeps (``None`` before the first turn: nothing
        to resume, the next attempt starts over)."""
        if not self.started:
            return None
        return {
            "prompt_length": self.prompt_length,
            "messages": self.messages,
            "prompt_messages": self.prompt_messages,
            "pending_turn_start": self.pending_turn_start,
            "fallback": self.reencoded,
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def load(
        cls,
        saved: dict[str, Any],
        *,
        tools: Any,
        tokens: list[int],
        loss_mask: list[int] | None,
        log_probs: list[float] | None,
        response_length: int,
        response: str,
    ) -> Trajectory:
        """Resume from :meth:`to_saved` plus the token arrays slime kept (its loss mask may have been zeroed since)
        and the tools schemas the sample offers.

        Raises ``ValueError`` (or :class:`TrajectoryError`) when the saved state does not fit the tokens.
        """
        try:
            prompt_length = int(saved["prompt_length"])
            trajectory = cls(
                messages=[dict(m) for m in saved["messages"]],
                prompt_messages=int(saved["prompt_messages"]),
                tools=offered_tools(tools),
                tokens=list(tokens or []),
                prompt_length=prompt_length,
                loss_mask=list(loss_mask or []),
                log_probs=list(log_probs or []),
                stats=RolloutStats.from_dict(saved.get("stats") or {}),
                reencoded=bool(saved.get("fallback", False)),
                pending_turn_start=saved.get("pending_turn_start"),
                response_parts=[response or ""],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"saved rollout state is incomplete: {exc!r}") from None
        if prompt_length <= 0 or trajectory.response_length != response_length:
            raise TrajectoryError(
                f"saved state does not match the sample: {len(trajectory.tokens)} tokens, prompt {prompt_length}, "
                f"response_length {response_length}"
            )
        trajectory.validate()
        trajectory.stats.resumed += 1
        return trajectory


def _prompt_estimate(tokenizer: Any, messages: list[dict], tools: list[dict], room: int) -> int:
    """Tokens of the first prompt before the server has rendered it. A token covers at least one byte, so the
    UTF-8 length of the rendered text bounds the count; encoding is only needed when the bound leaves no ``room``."""
    text = render_chat(tokenizer, messages, tools, add_generation_prompt=True)
    upper_bound = len(text.encode("utf-8"))
    if upper_bound < room:
        return upper_bound
    return len(encode_text(tokenizer, text))


def offered_tools(tools: Any) -> list[dict]:
    """The OpenAI function schemas the policy is offered (``search`` when none are given)."""
    if not tools:
        return [SEARCH_TOOL]
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools
    ):
        raise ValueError(f"tools must be a list of OpenAI function schemas, got {str(tools)[:200]!r}")
    return list(tools)


def _turn_calls(output: TurnOutput, text: str, resumed: bool, markers: tuple[str, str]) -> tuple[list[ToolCall], str]:
    """The turn's calls and visible content. The raw output text is parsed when the server's parser saw only part
    of the turn (a resumed turn) or dropped blocks it could not parse (bad JSON, unknown tool)."""
    start = markers[0]
    blocks = text.count(start)
    server_calls = [] if resumed else calls_from_server(output.tool_calls)
    if server_calls and len(server_calls) >= blocks:
        return server_calls, output.content or ""
    if blocks == 0:
        return [], text.strip() if resumed else (output.content or "")
    return calls_from_text(text, markers), text[: text.find(start)].strip()
