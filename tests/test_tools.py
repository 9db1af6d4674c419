"""The tool runner: a researcher's own tool next to search, batching per tool, and the errors the policy reads."""

from __future__ import annotations

import dataclasses

from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.result import RolloutStats
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.tools import run_tool_calls
from tests.support.calc_tool import CALC_SCHEMA as CALC
from tests.support.calc_tool import Adder, CalcSettings, CalcTool
from tests.support.rollout_helpers import FAST, IM_END, SAMPLING, answer, new_sample
from tests.support.sglang_mock import MockSGLang, serve_mock_sglang


def _calc_tool() -> CalcTool:
    """The calc test tool (tests/support/calc_tool.py), given to one context beside the registered search tool."""
    return CalcTool(CalcSettings(), Adder())


async def test_own_tool_runs_batched_and_in_call_order() -> None:
    calc = _calc_tool()
    context = RolloutContext(Settings(), None, "http://unused", tools={"calc": calc})
    stats = RolloutStats()
    calls = [
        ToolCall("a", "calc", {"terms": [1, 2]}),
        ToolCall("b", "nope", {}),
        ToolCall("c", "calc", {"terms": "x"}),
        ToolCall("d", "calc", {"terms": [5]}),
        ToolCall("e", None, None, error="the tool call is not valid JSON"),
    ]
    messages = await run_tool_calls(calls, [SEARCH_TOOL, CALC], context, stats)
    assert [m["tool_call_id"] for m in messages] == ["a", "b", "c", "d", "e"]
    assert [m["content"] for m in messages] == [
        "3",
        "Error: unknown tool 'nope'; available tools: 'search', 'calc'",
        "Error: calc needs 'terms': a list of integers",
        "5",
        "Error: the tool call is not valid JSON",
    ]
    assert calc.runs == [3], "one call of the tool function for all of the turn's calc calls"
    assert (stats.tool_calls, stats.tool_errors, stats.bad_tool_calls) == (5, 3, 3)


async def test_a_tool_the_sample_does_not_offer_is_unknown_to_the_policy() -> None:
    context = RolloutContext(Settings(), None, "http://unused", tools={"calc": _calc_tool()})
    stats = RolloutStats()
    [message] = await run_tool_calls([ToolCall("a", "calc", {"terms": [1]})], [SEARCH_TOOL], context, stats)
    assert message["content"] == "Error: unknown tool 'calc'; the only available tool is 'search'"


async def test_a_rollout_with_an_added_tool(qwen_tokenizer) -> None:
    """The loop runs a tool it has never heard of: one schema in the data, one tool object in the context."""
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    question = "What is two plus three?"
    calc_call = '<tool_call>\n{"name": "calc", "arguments": {"terms": [2, 3]}}\n</tool_call>'
    mock.script(question, [calc_call + IM_END, answer("5")])
    sample = new_sample(question, gold="5")
    with serve_mock_sglang(mock) as url:
        settings = dataclasses.replace(FAST, retrieval_urls=("http://127.0.0.1:9",))
        context = RolloutContext(settings, qwen_tokenizer, url, tools={"calc": _calc_tool()})
        from search_r1_oai.rollout import run_rollout

        result = await run_rollout(context, sample.prompt, dict(SAMPLING), tools=[SEARCH_TOOL, CALC])
        await context.aclose()
    assert result.outcome.name == "COMPLETED" and result.stats.tool_calls == 1 and result.stats.tool_errors == 0
    assert result.messages[3] == {
        "role": "tool",
        "tool_call_id": result.messages[3]["tool_call_id"],
        "name": "calc",
        "content": "5",
    }
    assert "calc" in mock.requests_for(question)[0].body["tools"][1]["function"]["name"]


async def test_unreadable_tools_fail_the_sample_without_raising(qwen_tokenizer) -> None:
    from generate_with_search_oai import rollout_sample

    context = RolloutContext(FAST, qwen_tokenizer, "http://127.0.0.1:9")
    for bad in ("[{not json", [{"type": "function"}], 42):
        sample = new_sample("Who?")
        sample.metadata["tools"] = bad
        await rollout_sample(context, sample, dict(SAMPLING))
        assert sample.status.name == "FAILED" and sample.remove_sample is True
        assert "tools must be a list of OpenAI function schemas" in sample.metadata["error"]
        assert sample.response_length == len(sample.loss_mask) == 1 and len(sample.tokens) > 1, "placeholder tensors"
    await context.aclose()


async def test_a_tool_error_quoting_a_lone_surrogate_reaches_the_message_and_the_counters_as_valid_unicode() -> None:
    """A tool's error often quotes what the policy wrote (a name or query with an escaped lone surrogate): the
    reply's error, the tool message and the recorded errors can all be encoded as UTF-8."""
    from search_r1_oai.tool_base import ToolReply

    assert ToolReply(error="bad \ud800 name").error == "bad \ufffd name"
    context = RolloutContext(Settings(), None, "http://unused", tools={"calc": _calc_tool()})
    stats = RolloutStats()
    messages = await run_tool_calls([ToolCall("a", "look\udfffup", {})], [SEARCH_TOOL, CALC], context, stats)
    assert messages[0]["content"].startswith("Error: unknown tool 'look")
    assert messages[0]["name"] == "look\ufffdup"
    for text in (messages[0]["content"], messages[0]["name"], *stats.tool_error_messages):
        text.encode("utf-8")
    assert stats.tool_errors == 1 and stats.bad_tool_calls == 1
    await context.aclose()
