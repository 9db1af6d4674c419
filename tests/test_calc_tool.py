"""A tool is one file plus its registration: the ``calc`` test tool (tests/support/calc_tool.py) with its own
settings row, client and counters, run through the real rollout core against the SGLang mock on 127.0.0.1; its
numbers reach the sample's metadata, the rollout metrics and the evaluation table, and search's stay as they were."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest

from generate_with_search_oai import apply_result, log_rollout_metrics, score_sample
from search_r1_eval.dataset import EvalItem
from search_r1_eval.report import render_table, summarize
from search_r1_eval.runner import record_of
from search_r1_oai.config import ConfigError
from search_r1_oai.context import RolloutContext
from search_r1_oai.metrics import Finished, search_metrics
from search_r1_oai.prompts import SEARCH_TOOL
from search_r1_oai.result import Outcome, RolloutStats
from search_r1_oai.rollout import run_rollout
from search_r1_oai.search_tool import SearchStats
from search_r1_oai.tool_base import ToolSpec
from search_r1_oai.tool_settings import load_tool_settings
from search_r1_oai.tools import register_tool, registered_tools, tool_registered
from tests.support.calc_tool import CALC, CALC_SCHEMA, CalcSettings, CalcStats
from tests.support.rollout_helpers import FAST, IM_END, SAMPLING, answer, new_sample

# Every key search_metrics emitted before tools owned their metrics: dashboards and the health monitor read them.
SEARCH_METRIC_NAMES = {
    "samples", "searches_per_sample", "turns_per_sample", "final_answer_rate", "tool_error_rate",
    "bad_tool_call_rate", "retrieval_latency_p50_s", "retrieval_latency_p99_s", "token_exact_rate", "failed_rate",
    "aborted_rate", "truncated_rate", "bad_server_values", "deadline_rate", "format_score_rate",
}  # fmt: skip


@pytest.fixture
def calc_registered():
    with tool_registered(CALC):
        yield
    assert "calc" not in registered_tools()


def _calc_call(terms: list[int]) -> str:
    return f"<tool_call>\n{json.dumps({'name': 'calc', 'arguments': {'terms': terms}})}\n</tool_call>"


async def test_the_calc_tool_through_the_rollout_core(calc_registered, mock, qwen_tokenizer) -> None:
    question = "What is two plus three, and one plus two plus three?"
    mock.script(question, [_calc_call([2, 3]) + "\n" + _calc_call([1, 2, 3]) + IM_END, answer("5")])
    sample = new_sample(question, gold="5")
    # Its own setting, read like the table's: slime's args first.
    context = RolloutContext(FAST, qwen_tokenizer, mock.url, tool_args=Namespace(calc_tool_max_terms=2))
    try:
        result = await run_rollout(context, sample.prompt, dict(SAMPLING), tools=[SEARCH_TOOL, CALC_SCHEMA])
    finally:
        await context.aclose()
    assert result.outcome is Outcome.COMPLETED, result.error
    tool_messages = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert tool_messages == ["5", "Error: calc takes at most 2 terms"]
    assert context.tools["calc"].client.requests == [[[2, 3]]], "one request per turn, the refused call not sent"
    calc = result.stats.of(CalcStats)
    assert (calc.calc_calls, calc.calc_terms, calc.calc_refused, calc.calc_batches) == (1, 2, 1, [1])
    assert result.stats.bad_tool_calls == 1 and result.stats.tool_calls == 2

    apply_result(sample, result)
    sample.reward = score_sample(sample, 0.2)
    metadata = sample.metadata
    assert metadata["calc_calls"] == 1 and metadata["calc_refused"] == 1, "the tool's keys, flat in the metadata"
    assert metadata["searches"] == 0 and metadata["search_attempts"] == [], "search's keys stay where they were"
    assert RolloutStats.from_dict(metadata).of(CalcStats) == calc, "saved and read back through the metadata"

    extra: dict = {}
    log_rollout_metrics(1, Namespace(search_r1_format_score=0.2), [sample], extra, 1.0)
    assert extra["rollout/search/calc_calls_per_sample"] == 1.0 and extra["rollout/search/calc_terms_per_call"] == 2.0
    assert extra["rollout/search/searches_per_sample"] == 0.0

    item = EvalItem("calc.parquet:0", "calc", question, sample.prompt, [SEARCH_TOOL, CALC_SCHEMA], sample.label)
    record = record_of(item, result, 0.2)
    assert record["calc_calls"] == 1 and record["searches"] == 0 and record["em"] == 1.0
    table = summarize([record])
    assert table["calc"]["mean_calcs"] == 1.0 and table["calc"]["mean_searches"] == 0.0
    header = render_table(table).splitlines()[0].split()
    assert header.index("searches") < header.index("calcs") < header.index("%"), "tool columns after the turns"


def test_without_the_registration_the_core_knows_no_calc() -> None:
    assert "calc" not in registered_tools()
    items = [Finished("nq", Outcome.COMPLETED, RolloutStats(), "answer", reward=1.0, em=1.0, f1=1.0)]
    metrics = search_metrics(items, 0.2)
    assert not any(key.startswith("calc") for key in metrics)
    assert set(metrics) == SEARCH_METRIC_NAMES | {"nq/em", "nq/f1", "nq/samples"}, "every name dashboards read"
    assert "calc_calls" not in RolloutStats().to_dict() and "searches" in RolloutStats().to_dict()


def test_search_metrics_keep_their_names_and_values() -> None:
    stats = [RolloutStats(turns=2, tool_calls=2), RolloutStats(turns=3, tool_calls=1)]
    stats[0].of(SearchStats).search_latencies_s.extend([0.1, 0.2])
    stats[0].of(SearchStats).searches = 2
    stats[1].of(SearchStats).search_latencies_s.append(0.4)
    stats[1].of(SearchStats).searches = 1
    metrics = search_metrics([Finished("nq", Outcome.COMPLETED, s, "answer") for s in stats], 0.2)
    assert metrics["searches_per_sample"] == 1.5 and metrics["turns_per_sample"] == 2.5
    assert (metrics["retrieval_latency_p50_s"], metrics["retrieval_latency_p99_s"]) == (0.2, 0.4)
    empty = search_metrics([Finished("nq", Outcome.COMPLETED, RolloutStats(), "answer")], 0.2)
    assert math.isnan(empty["retrieval_latency_p50_s"]) and empty["searches_per_sample"] == 0.0


def test_a_tool_whose_counters_take_anothers_keys_is_refused() -> None:
    class Clash(CalcStats):
        tool = "clash"

    with pytest.raises(ValueError, match="calc_calls"), tool_registered(CALC):
        register_tool(ToolSpec(Clash, CALC.build))
    assert "clash" not in registered_tools() and "calc" not in registered_tools()

    class Shadow(SearchStats):
        tool = "shadow"

    with pytest.raises(ValueError, match=r"searches \(taken by tool 'search'\)"):
        register_tool(ToolSpec(Shadow, CALC.build))


def test_the_tools_own_setting_is_read_like_the_tables() -> None:
    assert load_tool_settings(CalcSettings, env={}).max_terms == 8
    assert load_tool_settings(CalcSettings, env={"CALC_TOOL_MAX_TERMS": "3"}).max_terms == 3
    from_args = load_tool_settings(CalcSettings, Namespace(calc_tool_max_terms=5), env={"CALC_TOOL_MAX_TERMS": "3"})
    assert from_args.max_terms == 5, "slime's args before the environment"
    with pytest.raises(ConfigError, match=r"CALC_TOOL_MAX_TERMS='zero' in the environment: expected an integer"):
        load_tool_settings(CalcSettings, env={"CALC_TOOL_MAX_TERMS": "zero"})


async def test_slimes_hook_hands_its_args_to_the_tools(calc_registered, qwen_tokenizer, monkeypatch) -> None:
    """A tool's config key in slime's --custom-config-path YAML lands on ``args``; the hook's context must pass
    ``args`` on, or the tool would read the environment only."""
    import generate_with_search_oai as hook

    monkeypatch.setattr(hook, "_CONTEXT", None)
    args = Namespace(sglang_router_ip="127.0.0.1", sglang_router_port=1, calc_tool_max_terms=3)
    context = hook.rollout_context(args, qwen_tokenizer)
    try:
        assert context.tools["calc"].settings.max_terms == 3
    finally:
        await context.aclose()
        monkeypatch.setattr(hook, "_CONTEXT", None)
