"""Token bookkeeping and the template delta, with the real offline Qwen2.5 tokenizer and other templates."""

from __future__ import annotations

import copy

import pytest

from search_r1_oai.chat_template import ToolTurnTemplate, encode_text, render_chat
from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.errors import TemplateError, TrajectoryError
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from search_r1_oai.trajectory import Trajectory
from tests.support.rollout_helpers import appended_delta

IM_END = 151645
ENDOFTEXT = 151643


def _assistant_call(content: str, queries: list[str]) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": {"queries": queries}}}
    return {"role": "assistant", "content": content, "tool_calls": [call]}


def _tool(content: str, call_id: str = "call_1") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "name": "search", "content": content}


TOOL_SETS = [
    [_tool("Doc 1 (Title: Paris) Paris is the capital of France.")],
    [_tool("Doc 1 (Title: A) alpha"), _tool("Doc 1 (Title: B) beta", "call_2")],
    [_tool("Doc 1 (Title: Zürich) Zürich liegt am Zürichsee. 東京は日本の首都です。")],
    [_tool("Error: unknown tool 'lookup'; the only available tool is 'search'")],
]


@pytest.mark.parametrize("tool_messages", TOOL_SETS)
def test_delta_ids_continue_a_full_render_exactly(qwen_tokenizer, tool_messages) -> None:
    """prompt + sampled turn + delta == the template's own full render, id for id (for canonical model output)."""
    template = ToolTurnTemplate(qwen_tokenizer, [SEARCH_TOOL])
    conversation = [*build_messages("Who founded Rome?"), _assistant_call("Let me look.", ["Rome founder"])]
    base = render_chat(qwen_tokenizer, conversation, [SEARCH_TOOL], add_generation_prompt=False)
    full = render_chat(qwen_tokenizer, conversation + tool_messages, [SEARCH_TOOL], add_generation_prompt=True)
    assert base.endswith(template.eos_text + template.glue)
    up_to_sampled_eos = encode_text(qwen_tokenizer, base[: len(base) - len(template.glue)])
    assert up_to_sampled_eos[-1] == IM_END

    delta = appended_delta(template, tool_messages, last_sampled_id=IM_END)

    assert up_to_sampled_eos + delta == encode_text(qwen_tokenizer, full)
    assert delta[0] not in (IM_END,), "the sampled end-of-turn token must not be repeated"


def test_glue_is_found_from_the_template_not_hard_coded(qwen_tokenizer) -> None:
    qwen = ToolTurnTemplate(qwen_tokenizer, [SEARCH_TOOL])
    assert qwen.eos_text == "<|im_end|>" and qwen.glue == "\n" and qwen.eos_id == IM_END

    other = copy.deepcopy(qwen_tokenizer)
    other.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    template = ToolTurnTemplate(other, None)
    assert template.glue == "\n\n"
    text = template.delta_text([_tool("R")], sampled_eos=True)
    assert text == "\n\n<|im_start|>tool\nR<|im_end|>\n\n<|im_start|>assistant\n"


def test_turn_ended_without_eos_gets_it_as_glue(qwen_tokenizer) -> None:
    template = ToolTurnTemplate(qwen_tokenizer, [SEARCH_TOOL])
    delta = appended_delta(template, [_tool("x")], last_sampled_id=ENDOFTEXT)
    assert delta[:2] == [IM_END, encode_text(qwen_tokenizer, "\n")[0]]
    assert appended_delta(template, [_tool("x")], last_sampled_id=IM_END) == delta[1:]


def test_template_that_rewrites_history_is_refused(qwen_tokenizer) -> None:
    counting = copy.deepcopy(qwen_tokenizer)
    counting.chat_template = (
        "{{ messages|length }} messages\n{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TemplateError, match="re-renders earlier turns"):
        ToolTurnTemplate(counting, None).delta_text([_tool("x")], sampled_eos=True)


def test_template_without_eos_is_refused(qwen_tokenizer) -> None:
    no_eos = copy.deepcopy(qwen_tokenizer)
    no_eos.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    with pytest.raises(TemplateError, match="does not end an assistant turn"):
        ToolTurnTemplate(no_eos, None)


def test_only_text_rendering_is_used(qwen_tokenizer) -> None:
    """transformers 4.x returns a list and 5.x a BatchEncoding for tokenize=True; we must never depend on either."""

    class TokenizeTrueExplodes:
        eos_token = qwen_tokenizer.eos_token

        def apply_chat_template(self, messages, tools=None, tokenize=True, add_generation_prompt=False):
            assert tokenize is False, "tokenize=True's return type differs across transformers versions"
            return qwen_tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        def convert_tokens_to_ids(self, token):
            return qwen_tokenizer.convert_tokens_to_ids(token)

        def encode(self, text, add_special_tokens=True):
            return qwen_tokenizer.encode(text, add_special_tokens=add_special_tokens)

    stub = ToolTurnTemplate(TokenizeTrueExplodes(), [SEARCH_TOOL])
    real = ToolTurnTemplate(qwen_tokenizer, [SEARCH_TOOL])
    assert appended_delta(stub, TOOL_SETS[1], IM_END) == appended_delta(real, TOOL_SETS[1], IM_END)


def test_template_cache_is_per_tokenizer_and_tools(qwen_tokenizer) -> None:
    context = RolloutContext(Settings(), qwen_tokenizer, "http://unused")
    assert context.template([SEARCH_TOOL]) is context.template([SEARCH_TOOL])
    assert context.template([SEARCH_TOOL]) is not context.template(None)


def test_trajectory_masks_logprobs_and_lengths() -> None:
    trajectory = Trajectory.start(build_messages("Who?"))
    trajectory.begin([1, 2, 3])
    trajectory.add_sampled([10, 11], [-0.5, -0.25])
    trajectory.add_observation([20, 21, 22])
    trajectory.add_sampled([12], [-1.0])
    assert trajectory.tokens == [1, 2, 3, 10, 11, 20, 21, 22, 12]
    assert trajectory.response_length == 6
    assert trajectory.loss_mask == [1, 1, 0, 0, 0, 1]
    assert trajectory.log_probs == [-0.5, -0.25, 0.0, 0.0, 0.0, -1.0]

    # What an aborted rollout saves and a resumed one loads (tokens, mask and logprobs travel as slime keeps them).
    saved = trajectory.to_saved()
    assert saved is not None
    restored = Trajectory.load(
        saved,
        tools=None,
        tokens=trajectory.tokens,
        loss_mask=trajectory.loss_mask,
        log_probs=trajectory.log_probs,
        response_length=6,
        response="",
    )
    token_state = (trajectory.tokens, trajectory.prompt_length, trajectory.loss_mask, trajectory.log_probs)
    assert (restored.tokens, restored.prompt_length, restored.loss_mask, restored.log_probs) == token_state
    assert restored.tokens_json() == trajectory.tokens_json() and restored.messages == trajectory.messages
    assert restored.stats.resumed == 1


def test_trajectory_refuses_inconsistent_state() -> None:
    trajectory = Trajectory.start([])
    trajectory.begin([1, 2, 3])
    with pytest.raises(TrajectoryError, match="2 sampled ids but 1 logprobs"):
        trajectory.add_sampled([4, 5], [-1.0])
    trajectory.check_prompt([1, 2, 3], None)
    with pytest.raises(TrajectoryError, match="at position 1"):
        trajectory.check_prompt([1, 9, 3], None)
    with pytest.raises(TrajectoryError, match="differ"):
        trajectory.check_prompt([1, 2], None)
    with pytest.raises(TrajectoryError, match="empty prompt"):
        Trajectory.start([]).begin([])
    saved = {"prompt_length": 3, "messages": [], "prompt_messages": 0}
    with pytest.raises(TrajectoryError):
        Trajectory.load(
            saved, tools=None, tokens=[1, 2, 3, 4], loss_mask=[1], log_probs=[0.0], response_length=2, response=""
        )


async def test_a_template_the_rollout_cannot_extend_fails_the_sample_before_any_generation(qwen_tokenizer) -> None:
    """A TemplateError ends the trajectory by its class's stop_reason (capability), not as an internal error, and
    no policy call is wasted on it."""
    from search_r1_oai.rollout import run_rollout

    class NoPolicy:
        def build_request(self, *args, **kwargs):
            raise AssertionError("the policy was asked for a turn")

        async def complete(self, *args, **kwargs):
            raise AssertionError("the policy was asked for a turn")

    no_eos = copy.deepcopy(qwen_tokenizer)
    no_eos.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    context = RolloutContext(Settings(log_every=0), no_eos, "http://unused", chat_factory=NoPolicy)
    result = await run_rollout(context, build_messages("Who?"), {"max_new_tokens": 8}, tools=[SEARCH_TOOL])
    await context.aclose()
    assert result.outcome.name == "FAILED" and result.stop_reason == "capability" and result.train is False
    assert result.error is not None and "does not end an assistant turn" in result.error
    assert result.response_length == 1 and result.loss_mask == [0]  # placeholder tensors, not trained on


@pytest.mark.parametrize(
    ("messages", "tools", "why"),
    [
        ("<|im_start|>user\nrendered text<|im_end|>", None, "--apply-chat-template"),
        ([{"content": "no role"}], None, "OpenAI messages list"),
        (build_messages("Who?"), [{"type": "function"}], "tools must be a list of OpenAI function schemas"),
        (build_messages("Who?"), 42, "tools must be a list of OpenAI function schemas"),
    ],
)
async def test_an_unusable_prompt_fails_as_bad_prompt_without_a_policy_call(
    qwen_tokenizer, caplog, messages, tools, why
):
    """A sample's prompt and tools are data, not trusted: starting a trajectory from bad ones never raises, and the
    rollout ends it FAILED with stop_reason bad_prompt and the reason, placeholder tensors, no policy call and no
    traceback (it is not a bug of the rollout)."""
    from search_r1_oai.rollout import run_rollout

    trajectory = Trajectory.start(messages, tools)
    assert trajectory.unusable is not None and why in trajectory.unusable and trajectory.messages == []

    class NoPolicy:
        def build_request(self, *args, **kwargs):
            raise AssertionError("the policy was asked for a turn")

    context = RolloutContext(Settings(log_every=0), qwen_tokenizer, "http://unused", chat_factory=NoPolicy)
    result = await run_rollout(context, messages, {"max_new_tokens": 8}, tools=tools)
    await context.aclose()
    assert result.outcome.name == "FAILED" and result.stop_reason == "bad_prompt" and result.train is False
    assert result.error is not None and why in result.error
    assert result.response_length == 1 and result.loss_mask == [0]
    assert "rollout failed" not in caplog.text


def test_a_usable_prompt_starts_a_trajectory_with_the_tools_offered() -> None:
    trajectory = Trajectory.start(build_messages("Who?"))
    assert trajectory.unusable is None and trajectory.tools == [SEARCH_TOOL]
    assert trajectory.prompt == build_messages("Who?") and not trajectory.started
