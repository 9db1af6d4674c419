"""Token-exact bookkeeping of one trajectory, and the template delta that follows a tool-calling turn.

What the policy is trained on must be exactly what it saw and sampled: the ids the server conditioned on, then
the ids it sampled (loss mask 1, with the logprobs it reported), then ids we add ourselves (template glue, tool
results, the next generation prompt: loss mask 0, logprob 0.0). Generated text is never re-encoded.

The ids we add after a tool-calling turn come from the tokenizer's own chat template: a short fixed dummy
conversation is rendered with and without the tool messages, and the text difference (plus the glue the template
puts after the end-of-turn token) is encoded. No template string is hard-coded, and the work per turn does not
grow with the conversation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from search_r1_oai.errors import TemplateError, TrajectoryError

# Longer text is tokenized in a worker thread: the Rust tokenizer releases the GIL, so the event loop (every other
# rollout of the process) keeps running. Measured on the 2-core dev machine: 20k characters take ~15 ms, 3 MB ~6 s.
ENCODE_IN_THREAD_ABOVE_CHARS = 8192


def render_chat(tokenizer: Any, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
    """The template's text; ``tokenize=False`` returns ``str`` in transformers 4.x and 5.x alike."""
    text = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of template text with no BOS/EOS added (special-token strings map to their ids)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


async def encode_text_off_loop(tokenizer: Any, text: str) -> list[int]:
    """:func:`encode_text` for a coroutine: short text inline (a thread hop costs more), long text in a thread."""
    if len(text) <= ENCODE_IN_THREAD_ABOVE_CHARS:
        return encode_text(tokenizer, text)
    return await asyncio.to_thread(encode_text, tokenizer, text)


def render_prompt_ids(tokenizer: Any, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Client-side prompt ids: only an estimate of the server's (its tools JSON differs between releases)."""
    return encode_text(tokenizer, render_chat(tokenizer, messages, tools, add_generation_prompt=True))


_DUMMY_BASE: list[dict[str, Any]] = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {
        "role": "assistant",
        "content": "A",
        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
    },
]


class ToolTurnTemplate:
    """Computes the non-trainable ids between a sampled end-of-turn token and the next generation.

    ``delta = [end-of-turn text if the model did not sample it] + glue + render(base + tools) - render(base)``
    where ``glue`` is whatever the template writes after the end-of-turn token in ``render(base)``.
    """

    def __init__(self, tokenizer: Any, tools: list[dict] | None) -> None:
        self._tokenizer = tokenizer
        self._tools = tools or None
        eos = tokenizer.eos_token
        if not eos:
            raise TemplateError("the tokenizer has no eos_token; cannot find where an assistant turn ends")
        self.eos_text: str = eos
        self.eos_id: int = tokenizer.convert_tokens_to_ids(eos)
        self._base_text = render_chat(tokenizer, _DUMMY_BASE, self._tools, add_generation_prompt=False)
        end = self._base_text.rfind(eos)
        if end == -1:
            raise TemplateError(f"the chat template does not end an assistant turn with eos_token {eos!r}")
        self.glue: str = self._base_text[end + len(eos) :]

    def delta_text(self, tool_messages: list[dict], sampled_eos: bool) -> str:
        """Text appended after the sampled turn so that the next generation sees the tool results."""
        full = render_chat(self._tokenizer, _DUMMY_BASE + tool_messages, self._tools, add_generation_prompt=True)
        if not full.startswith(self._base_text):
            raise TemplateError(
                "the chat template re-renders earlier turns when tool messages are added; "
                "turn-by-turn token-exact rollout is impossible with it"
            )
        head = self.glue if sampled_eos else self.eos_text + self.glue
        return head + full[len(self._base_text) :]

    def delta_ids(self, tool_messages: list[dict], last_sampled_id: int | None) -> list[int]:
        """Ids of :meth:`delta_text`; the end-of-turn token is added when the model stopped without sampling it."""
        return encode_text(self._tokenizer, self.delta_text(tool_messages, last_sampled_id == self.eos_id))


@dataclass
class Trajectory:
    """``tokens = prompt + response``; ``loss_mask`` and ``log_probs`` cover the response only."""

    tokens: list[int] = field(default_factory=list)
    prompt_length: int = 0
    loss_mask: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    # ``tokens`` as JSON text, one chunk per append: the request's growing ``input_ids`` array is not
    # re-serialised every turn.
    _json_chunks: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.tokens and not self._json_chunks:
            self._json_chunks.append(",".join(map(str, self.tokens)))

    @classmethod
    def from_prompt(cls, prompt_ids: list[int]) -> Trajectory:
        """Start from the ids the server prefilled for the first turn."""
        if not prompt_ids:
            raise TrajectoryError("the server reported an empty prompt")
        return cls(tokens=list(prompt_ids), prompt_length=len(prompt_ids))

    @property
    def response_length(self) -> int:
        return len(self.tokens) - self.prompt_length

    def tokens_json(self) -> str:
        """``json.dumps(self.tokens)`` in compact form, built from cached chunks."""
        return "[" + ",".join(self._json_chunks) + "]"

    def _extend(self, ids: list[int]) -> None:
        self.tokens.extend(ids)
        if ids:
            self._json_chunks.append(",".join(map(str, ids)))

    def check_conditioning(self, server_prompt_ids: list[int]) -> None:
        """The ids the server says it prefilled must be exactly our tokens so far."""
        if server_prompt_ids != self.tokens:
            at = next(
                (i for i, (a, b) in enumerate(zip(server_prompt_ids, self.tokens, strict=False)) if a != b),
                min(len(server_prompt_ids), len(self.tokens)),
            )
            raise TrajectoryError(
                f"server conditioned on {len(server_prompt_ids)} ids that differ from our {len(self.tokens)} "
                f"at position {at}"
            )

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
