"""The template delta after a tool-calling turn, with small fake tokenizers (no model files, milliseconds).

Each fake renders a chat the way a family of real templates does (Qwen's ChatML with its newline after
``<|im_end|>``, a template with no glue, one that gives every tool result its own turn), in plain Python, and
encodes text character by character with special tokens matched first. The expected deltas are written out in full,
so a change in what ``ToolTurnTemplate`` appends shows up as an exact string and id difference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from search_r1_oai.chat_template import ToolTurnTemplate
from search_r1_oai.errors import TemplateError
from tests.support.rollout_helpers import appended_delta

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "search", "description": "Search.", "parameters": {"type": "object", "properties": {}}},
}
IM_START, IM_END, BOS, EOT = "<|im_start|>", "<|im_end|>", "<s>", "<|eot|>"
SPECIAL_IDS = {BOS: 1, IM_START: 2, IM_END: 3, EOT: 4}
CHAR_OFFSET = 1000  # ordinary characters encode as CHAR_OFFSET + ord(char)


@dataclass(frozen=True)
class ChatFormat:
    """A Jinja-free stand-in for a chat template: turn markers, the text after the end-of-turn token, tool turns."""

    end: str = IM_END  # what closes every turn
    glue: str = "\n"  # written after ``end``
    group_tool_results: bool = True  # Qwen: consecutive tool results share one user turn
    count_in_header: bool = False  # a template that re-renders the start when the conversation grows

    def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        if tools:
            system += "\n# Tools\n" + "\n".join(json.dumps(tool, sort_keys=True) for tool in tools)
        if self.count_in_header:
            system += f"\n({len(messages)} messages)"
        parts = [self.turn("system", system)]
        rest = [m for m in messages if m["role"] != "system"]
        for index, message in enumerate(rest):
            role = message["role"]
            if role == "tool":
                parts.append(self.tool_result(message, rest, index))
                continue
            content = message.get("content") or ""
            for call in message.get("tool_calls") or []:
                function = call["function"]
                payload = json.dumps({"name": function["name"], "arguments": function["arguments"]})
                content += f"\n<tool_call>\n{payload}\n</tool_call>"
            parts.append(self.turn(role, content))
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def turn(self, role: str, content: str) -> str:
        return f"{IM_START}{role}\n{content}{self.end}{self.glue}"

    def tool_result(self, message: dict, rest: list[dict], index: int) -> str:
        body = f"<tool_response>\n{message['content']}\n</tool_response>"
        if not self.group_tool_results:
            return self.turn("tool", body)
        first = index == 0 or rest[index - 1]["role"] != "tool"
        last = index == len(rest) - 1 or rest[index + 1]["role"] != "tool"
        return (f"{IM_START}user\n" if first else "\n") + body + (f"{self.end}{self.glue}" if last else "")


@dataclass
class FakeTokenizer:
    """The slice of a Hugging Face tokenizer that ``ToolTurnTemplate`` uses, recording its chat-template calls."""

    chat: ChatFormat = field(default_factory=ChatFormat)
    eos_token: str | None = IM_END
    calls: list[dict[str, Any]] = field(default_factory=list)

    def convert_tokens_to_ids(self, token: str) -> int:
        return SPECIAL_IDS[token]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [SPECIAL_IDS[BOS]] if add_special_tokens else []
        position = 0
        while position < len(text):
            special = next((s for s in SPECIAL_IDS if text.startswith(s, position)), None)
            if special is not None:
                ids.append(SPECIAL_IDS[special])
                position += len(special)
            else:
                ids.append(CHAR_OFFSET + ord(text[position]))
                position += 1
        return ids

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> str:
        self.calls.append({"tools": tools, "tokenize": tokenize, "add_generation_prompt": add_generation_prompt})
        if tokenize:
            raise AssertionError("ToolTurnTemplate must render text (tokenize=False), never ids")
        return self.chat.render(messages, tools, add_generation_prompt)


def tool(content: str) -> dict[str, str]:
    return {"role": "tool", "content": content}


def chars(text: str) -> list[int]:
    return [CHAR_OFFSET + ord(c) for c in text]


GEN_PROMPT = f"{IM_START}assistant\n"


# -- what the delta is ---------------------------------------------------------------------------------------------


def test_qwen_like_template_glue_is_the_newline_after_eos() -> None:
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    assert template.eos_text == IM_END
    assert template.eos_id == SPECIAL_IDS[IM_END]
    assert template.glue == "\n"


def test_one_tool_result_after_a_sampled_eos() -> None:
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    expected = f"\n{IM_START}user\n<tool_response>\nDoc 1\n</tool_response>{IM_END}\n{GEN_PROMPT}"
    assert template.delta_text([tool("Doc 1")], sampled_eos=True) == expected
    ids = appended_delta(template, [tool("Doc 1")], last_sampled_id=SPECIAL_IDS[IM_END])
    assert ids == [
        *chars("\n"),
        SPECIAL_IDS[IM_START],
        *chars("user\n<tool_response>\nDoc 1\n</tool_response>"),
        SPECIAL_IDS[IM_END],
        *chars("\n"),
        SPECIAL_IDS[IM_START],
        *chars("assistant\n"),
    ]


def test_model_stopped_without_sampling_eos_gets_it_first() -> None:
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    sampled = template.delta_text([tool("R")], sampled_eos=True)
    stopped = template.delta_text([tool("R")], sampled_eos=False)
    assert stopped == IM_END + sampled
    assert stopped.startswith(f"{IM_END}\n{IM_START}user\n")
    # The rollout decides from the last sampled id: anything but the eos id (or nothing at all) adds the eos id.
    for last in (CHAR_OFFSET + ord("x"), None):
        ids = appended_delta(template, [tool("R")], last_sampled_id=last)
        assert ids[:2] == [SPECIAL_IDS[IM_END], *chars("\n")]
        assert ids[1:] == appended_delta(template, [tool("R")], last_sampled_id=SPECIAL_IDS[IM_END])


def test_several_tool_results_grouped_in_one_turn() -> None:
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    expected = (
        f"\n{IM_START}user\n"
        "<tool_response>\nfirst\n</tool_response>\n"
        "<tool_response>\nsecond\n</tool_response>\n"
        "<tool_response>\nthird\n</tool_response>"
        f"{IM_END}\n{GEN_PROMPT}"
    )
    assert template.delta_text([tool("first"), tool("second"), tool("third")], sampled_eos=True) == expected


def test_several_tool_results_one_turn_each() -> None:
    template = ToolTurnTemplate(FakeTokenizer(ChatFormat(group_tool_results=False)), None)
    expected = (
        f"\n{IM_START}tool\n<tool_response>\na\n</tool_response>{IM_END}\n"
        f"{IM_START}tool\n<tool_response>\nb\n</tool_response>{IM_END}\n"
        f"{GEN_PROMPT}"
    )
    assert template.delta_text([tool("a"), tool("b")], sampled_eos=True) == expected


def test_template_without_glue() -> None:
    template = ToolTurnTemplate(FakeTokenizer(ChatFormat(end=EOT, glue=""), eos_token=EOT), None)
    assert template.glue == ""
    assert template.eos_id == SPECIAL_IDS[EOT]
    expected = f"{IM_START}user\n<tool_response>\nR\n</tool_response>{EOT}{GEN_PROMPT}"
    assert template.delta_text([tool("R")], sampled_eos=True) == expected
    assert template.delta_text([tool("R")], sampled_eos=False) == EOT + expected
    assert appended_delta(template, [tool("R")], last_sampled_id=None)[:2] == [SPECIAL_IDS[EOT], SPECIAL_IDS[IM_START]]


def test_longer_glue_is_kept_whole() -> None:
    template = ToolTurnTemplate(FakeTokenizer(ChatFormat(glue="\n\n")), None)
    assert template.glue == "\n\n"
    delta = template.delta_text([tool("R")], sampled_eos=False)
    assert delta.startswith(f"{IM_END}\n\n{IM_START}user\n")
    assert delta.endswith(f"{IM_END}\n\n{GEN_PROMPT}")


def test_tool_result_text_is_copied_verbatim() -> None:
    content = 'Doc 1 (Title: "A <b>") 3 < 4\n\nDoc 2 (Title: é) naïve — ok'
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    ids = appended_delta(template, [tool(content)], last_sampled_id=SPECIAL_IDS[IM_END])
    body = chars(f"user\n<tool_response>\n{content}\n</tool_response>")
    assert ids[:2] == [*chars("\n"), SPECIAL_IDS[IM_START]]
    assert ids[2 : 2 + len(body)] == body
    assert ids[2 + len(body)] == SPECIAL_IDS[IM_END]


@pytest.mark.parametrize(
    "chat",
    [ChatFormat(), ChatFormat(glue=""), ChatFormat(group_tool_results=False), ChatFormat(end=EOT, glue="\n")],
    ids=["qwen-like", "no-glue", "tool-turns", "other-eos"],
)
@pytest.mark.parametrize("results", [["one"], ["one", "two"]], ids=["1-result", "2-results"])
def test_prefix_plus_sampled_turn_plus_delta_is_a_full_render(chat: ChatFormat, results: list[str]) -> None:
    """The property the rollout relies on, on a conversation other than the template's internal dummy one: the
    prompt ids, the ids sampled up to and including eos, then the delta are exactly the ids of the whole chat."""
    tokenizer = FakeTokenizer(chat, eos_token=chat.end)
    template = ToolTurnTemplate(tokenizer, [SEARCH_TOOL])
    question = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Who wrote Dune?"}]
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": {"query": "Dune author"}}}
    turn = {"role": "assistant", "content": "Let me search.", "tool_calls": [call]}
    tool_messages = [tool(text) for text in results]

    prompt_ids = tokenizer.encode(chat.render(question, [SEARCH_TOOL], True), add_special_tokens=False)
    with_turn = chat.render([*question, turn], [SEARCH_TOOL], False)
    sampled_ids = tokenizer.encode(with_turn, add_special_tokens=False)[len(prompt_ids) :]
    sampled_ids = sampled_ids[: len(sampled_ids) - len(chat.glue)]  # the model stops at eos: no glue
    assert sampled_ids[-1] == template.eos_id

    full = chat.render([*question, turn, *tool_messages], [SEARCH_TOOL], True)
    delta = appended_delta(template, tool_messages, last_sampled_id=sampled_ids[-1])
    assert prompt_ids + sampled_ids + delta == tokenizer.encode(full, add_special_tokens=False)


# -- how the tokenizer is used -------------------------------------------------------------------------------------


def test_tools_are_passed_through_and_an_empty_list_becomes_none() -> None:
    with_tools = FakeTokenizer()
    ToolTurnTemplate(with_tools, [SEARCH_TOOL]).delta_text([tool("R")], sampled_eos=True)
    assert with_tools.calls == [
        {"tools": [SEARCH_TOOL], "tokenize": False, "add_generation_prompt": False},
        {"tools": [SEARCH_TOOL], "tokenize": False, "add_generation_prompt": True},
    ]
    empty = FakeTokenizer()
    ToolTurnTemplate(empty, []).delta_text([tool("R")], sampled_eos=True)
    assert [call["tools"] for call in empty.calls] == [None, None]


def test_delta_does_not_repeat_the_tools_block() -> None:
    template = ToolTurnTemplate(FakeTokenizer(), [SEARCH_TOOL])
    assert "# Tools" not in template.delta_text([tool("R")], sampled_eos=True)


def test_delta_ids_add_no_bos() -> None:
    ids = appended_delta(ToolTurnTemplate(FakeTokenizer(), None), [tool("R")], last_sampled_id=None)
    assert SPECIAL_IDS[BOS] not in ids


def test_render_that_is_not_text_is_refused() -> None:
    class IdsTokenizer(FakeTokenizer):
        def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return [1, 2, 3]

    with pytest.raises(TemplateError, match="returned list, not str"):
        ToolTurnTemplate(IdsTokenizer(), None)


# -- templates it cannot extend ------------------------------------------------------------------------------------


def test_template_that_re_renders_earlier_turns_is_refused() -> None:
    template = ToolTurnTemplate(FakeTokenizer(ChatFormat(count_in_header=True)), [SEARCH_TOOL])
    with pytest.raises(TemplateError, match="re-renders earlier turns"):
        template.delta_text([tool("R")], sampled_eos=True)
    with pytest.raises(TemplateError, match="re-renders earlier turns"):
        appended_delta(template, [tool("R")], last_sampled_id=None)


@pytest.mark.parametrize("eos", [None, ""], ids=["none", "empty"])
def test_tokenizer_without_eos_token_is_refused(eos: str | None) -> None:
    with pytest.raises(TemplateError, match="no eos_token"):
        ToolTurnTemplate(FakeTokenizer(eos_token=eos), None)


def test_template_that_never_writes_eos_is_refused() -> None:
    # The tokenizer's eos is <|eot|>, but every turn is closed with <|im_end|>.
    with pytest.raises(TemplateError, match=r"does not end an assistant turn with eos_token '<\|eot\|>'"):
        ToolTurnTemplate(FakeTokenizer(ChatFormat(end=IM_END), eos_token=EOT), None)


def test_fake_chat_format_renders_chatml() -> None:
    """Guard for the fake itself: a plain conversation comes out as ChatML."""
    render = ChatFormat().render
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render(messages, None, True) == f"{IM_START}system\nS{IM_END}\n{IM_START}user\nU{IM_END}\n{GEN_PROMPT}"
