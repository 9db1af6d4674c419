"""The chat template as the rollout uses it: render text, encode it, and the ids that follow a tool-calling turn.

The ids added after a tool-calling turn come from the tokenizer's own chat template: a short fixed dummy
conversation is rendered with and without the tool messages, and the text difference (plus the glue the template
puts after the end-of-turn token) is encoded. No template string is hard-coded, and the work per turn does not
grow with the conversation.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from search_r1_oai.errors import TemplateError

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


class Delta(NamedTuple):
    """What follows a tool-calling turn (loss mask 0): its text and its ids."""

    text: str
    ids: list[int]


class ToolTurnTemplate:
    """Computes the non-trainable ids between a sampled end-of-turn token and the next generation.

    ``delta = [end-of-turn text if the model did not sample it] + glue + render(base + tools) - render(base)``
    where ``glue`` is whatever the template writes after the end-of-turn token in ``render(base)``.
    """

    def __init__(self, tokenizer: Any, tools: list[dict] | None) -> None:
        # The tokenizer this template encodes with (the trajectory encodes the delta text off the event loop with it).
        self.tokenizer = tokenizer
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
        full = render_chat(self.tokenizer, _DUMMY_BASE + tool_messages, self._tools, add_generation_prompt=True)
        if not full.startswith(self._base_text):
            raise TemplateError(
                "the chat template re-renders earlier turns when tool messages are added; "
                "turn-by-turn token-exact rollout is impossible with it"
            )
        head = self.glue if sampled_eos else self.eos_text + self.glue
        return head + full[len(self._base_text) :]

    async def delta(self, tool_messages: list[dict], last_sampled_id: int | None) -> Delta:
        """:meth:`delta_text` and its ids after a turn whose last sampled id is ``last_sampled_id`` (the end-of-turn
        token is added when the model stopped without sampling it); long text is encoded off the event loop."""
        text = self.delta_text(tool_messages, last_sampled_id == self.eos_id)
        return Delta(text, await encode_text_off_loop(self.tokenizer, text))
