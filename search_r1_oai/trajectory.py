"""One trajectory, owned by one object: its chat turns, the token ids trained on, and what a resumed rollout needs.

What the policy is trained on must be exactly what it saw and sampled: the ids the server conditioned on, then
the ids it sampled (loss mask 1, with the logprobs it reported), then ids we add ourselves (template glue, tool
results, the next generation prompt: loss mask 0, logprob 0.0). Generated text is never re-encoded.

:class:`Trajectory` is the only writer of that state: the rollout loop calls its methods in the order of the
algorithm (:meth:`~Trajectory.begin`, :meth:`~Trajectory.check_prompt`, :meth:`~Trajectory.append_sampled`,
:meth:`~Trajectory.record_turn`, :meth:`~Trajectory.append_tool_results`, :meth:`~Trajectory.tokens_left`,
:meth:`~Trajectory.finish`), and slime's partial rollout carries an ABORTED one over with
:meth:`~Trajectory.to_saved` and :meth:`~Trajectory.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from search_r1_oai.chat_template import (
    ToolTurnTemplate,
    encode_text,
    encode_text_off_loop,
    render_chat,
    render_prompt_ids,
)
from search_r1_oai.errors import TrajectoryError
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats, Stop
from search_r1_oai.sglang_wire import TurnOutput
from search_r1_oai.token_ids import Sampled, ServerIds

# The first prompt is rendered by the server, whose tools JSON differs from a client render by a few tokens between
# releases (e.g. an added "strict" key); the first turn's budget check keeps this much slack for it.
FIRST_PROMPT_SLACK = 32


class SampledTurn(NamedTuple):
    """A finished assistant turn: its text without the end-of-turn token, and whether it continues a turn the
    server aborted earlier (the text then spans both generations and the server's parse saw only the last)."""

    text: str
    resumed: bool


@dataclass
class Trajectory:
    """``tokens = prompt + response``; ``loss_mask`` and ``log_probs`` cover the response only. ``tokens`` is empty
    until :meth:`begin` (the server renders the first prompt, so its ids are known only from the first reply)."""

    messages: list[dict[str, Any]]
    prompt_messages: int
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
    # ``tokens`` as JSON text, one chunk per append: the request's growing ``input_ids`` is not re-serialised.
    _json_chunks: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokens and not self._json_chunks:
            self._json_chunks.append(",".join(map(str, self.tokens)))

    @classmethod
    def start(cls, messages: list[dict[str, Any]]) -> Trajectory:
        """A fresh trajectory from the prompt messages (the OpenAI messages list)."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError(
                "the prompt must be the OpenAI messages list (do not pass --apply-chat-template to slime); "
                f"got {type(messages).__name__}"
            )
        return cls(messages=[dict(m) for m in messages], prompt_messages=len(messages))

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

    def tokens_left(self, max_new_tokens: int, budget: int, tokenizer: Any, tools: list[dict]) -> tuple[int, str]:
        """This turn's ``max_tokens`` (slime's ``max_new_tokens`` less what an aborted turn already generated,
        capped by what is left of the context ``budget``), and the stop_reason when either is used up."""
        if self.started:
            used = len(self.tokens)
            already = 0 if self.pending_turn_start is None else used - self.pending_turn_start
        else:
            room = budget - max_new_tokens - FIRST_PROMPT_SLACK
            used, already = _prompt_estimate(tokenizer, self.messages, tools, room) + FIRST_PROMPT_SLACK, 0
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

    def check_prompt(self, output: TurnOutput, source: ServerIds) -> None:
        """A later turn's reply conditioned on our tokens (token-exact), or how far the server's render drifted."""
        self.stats.drift_tokens += source.prompt_drift(output, self.tokens, self.messages)

    def append_sampled(self, output: TurnOutput, sampled: Sampled, tokenizer: Any) -> SampledTurn | None:
        """Append the sampled ids (loss mask 1). ``None`` when the server aborted the turn: the turn is
        unfinished, and a resumed rollout continues it."""
        self.stats.policy_latency_s += output.latency_s
        self.stats.drift_tokens += sampled.drift
        turn_start = len(self.tokens)
        if self.pending_turn_start is None:
            self.stats.turns += 1
        else:
            turn_start = self.pending_turn_start
        self.add_sampled(sampled.ids, sampled.log_probs)
        text = tokenizer.decode(sampled.ids, skip_special_tokens=False)
        self.response_parts.append(text)
        if output.finish_reason == "abort":
            self.pending_turn_start = turn_start
            return None
        resumed = self.pending_turn_start is not None
        if resumed:
            text = tokenizer.decode(self.tokens[turn_start:], skip_special_tokens=False)
        self.pending_turn_start = None
        return SampledTurn(text.removesuffix(tokenizer.eos_token), resumed)

    def record_turn(self, content: str, tool_calls: list[dict] | None) -> None:
        """The assistant turn as a chat message (``tool_calls`` as the server parsed them, if it did)."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        self.messages.append(message)
        self.stats.final_content = content

    async def append_tool_results(self, tool_messages: list[dict], template: ToolTurnTemplate, budget: int) -> bool:
        """Append the tool results with the template's own glue (loss mask 0); False, appending nothing, when they
        would not leave room in the context ``budget``."""
        text = template.delta_text(tool_messages, self.tokens[-1] == template.eos_id)
        delta = await encode_text_off_loop(template.tokenizer, text)
        if len(self.tokens) + len(delta) >= budget:
            return False
        self.add_observation(delta)
        self.response_parts.append(text)
        self.messages.extend(tool_messages)
        return True

    def finish(self, stop: Stop, tokenizer: Any, tools: list[dict]) -> RolloutResult:
        """The result to train on (copies of the token state); a trajectory that never got a turn gets
        placeholder tensors and is not trained on."""
        placeholder = not self.started and stop.outcome in (Outcome.FAILED, Outcome.TRUNCATED)
        response = "".join(self.response_parts)
        if placeholder:
            self._placeholder(tokenizer, tools)
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

    def _placeholder(self, tokenizer: Any, tools: list[dict]) -> None:
        """Well-formed tensors for a trajectory without a turn: the prompt plus one masked end-of-turn token."""
        try:
            prompt_ids = render_prompt_ids(tokenizer, self.messages, tools) if self.messages else []
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
        tokens: list[int],
        loss_mask: list[int] | None,
        log_probs: list[float] | None,
        response_length: int,
        response: str,
    ) -> Trajectory:
        """Resume from :meth:`to_saved` plus the token arrays slime kept (its loss mask may have been zeroed since).

        Raises ``ValueError`` (or :class:`TrajectoryError`) when the saved state does not fit the tokens.
        """
        try:
            prompt_length = int(saved["prompt_length"])
            trajectory = cls(
                messages=[dict(m) for m in saved["messages"]],
                prompt_messages=int(saved["prompt_messages"]),
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
