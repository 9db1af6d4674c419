"""The ``calc`` tool, a test tool that shows what adding a tool takes: this one file and its registration
(``register_tool(CALC)``, or ``with tool_registered(CALC):`` for a test). It has its own settings row, its own
client, and its own per-trajectory counters, which reach the sample's metadata, the rollout metrics
(``rollout/search/calc_calls_per_sample``) and the evaluation table (a ``calcs`` column) with no line elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from search_r1_oai.tool_base import Tool, ToolReply, ToolSetup, ToolSpec, call_arguments
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.tool_settings import load_tool_settings, tool_setting
from search_r1_oai.tool_stats import ReportColumn, ToolStats, mean

CALC_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Evaluate a sum of integers.",
        "parameters": {"type": "object", "properties": {"terms": {"type": "array"}}, "required": ["terms"]},
    },
}


@dataclass(frozen=True)
class CalcSettings:
    """The tool's own rows, read like the settings table's (slime's args, then the environment, then the default)."""

    max_terms: int = tool_setting(8, "CALC_TOOL_MAX_TERMS", "int", "Most terms one calc call may sum.", 1)


@dataclass
class CalcStats(ToolStats):
    """One trajectory's calc calls (keys of the sample's metadata, so each name is the tool's own)."""

    tool: ClassVar[str] = "calc"
    report_columns: ClassVar[tuple[ReportColumn, ...]] = (ReportColumn("mean_calcs", "calcs", "{:.2f}", "calc_calls"),)

    calc_calls: int = 0
    calc_terms: int = 0
    # Calls refused for having more than max_terms terms.
    calc_refused: int = 0
    # Calls sent to the adder per turn (one request per turn, however many calls).
    calc_batches: list[int] = field(default_factory=list)

    @classmethod
    def batch_metrics(cls, batch: Sequence[CalcStats]) -> dict[str, float]:
        calls = sum(stats.calc_calls for stats in batch)
        return {
            "calc_calls_per_sample": mean([stats.calc_calls for stats in batch]),
            "calc_terms_per_call": sum(stats.calc_terms for stats in batch) / calls if calls else 0.0,
        }

    def record(self) -> dict[str, Any]:
        return {"calc_calls": self.calc_calls}

    def summary(self) -> dict[str, Any]:
        return {"calc_calls": self.calc_calls}


class Adder:
    """The tool's client: one request sums a whole turn's calls (a stand-in for a remote service)."""

    def __init__(self) -> None:
        self.requests: list[list[list[int]]] = []

    async def add(self, batch: list[list[int]]) -> list[int]:
        self.requests.append(batch)
        return [sum(terms) for terms in batch]


class CalcTool(Tool[CalcStats]):
    schema = CALC_SCHEMA
    stats_type = CalcStats

    def __init__(self, settings: CalcSettings, client: Adder) -> None:
        self.settings = settings
        self.client = client
        # Calls per run of the tool (one run per turn that calls it).
        self.runs: list[int] = []

    def _terms(self, call: ToolCall) -> tuple[list[int] | None, str | None]:
        arguments, error = call_arguments(call, like='{"terms": [1, 2]}')
        terms = arguments.get("terms") if arguments is not None else None
        if error is not None:
            return None, error
        if not isinstance(terms, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in terms):
            return None, "calc needs 'terms': a list of integers"
        return terms, None

    async def run(self, calls: list[ToolCall], stats: CalcStats) -> list[ToolReply]:
        self.runs.append(len(calls))
        parsed = [self._terms(call) for call in calls]
        good = [terms for terms, error in parsed if terms is not None and len(terms) <= self.settings.max_terms]
        sums = iter(await self.client.add(good)) if good else iter(())
        if good:
            stats.calc_batches.append(len(good))
        replies = []
        for terms, error in parsed:
            if terms is None:
                replies.append(ToolReply(error=error, bad_call=True))
            elif len(terms) > self.settings.max_terms:
                stats.calc_refused += 1
                replies.append(ToolReply(error=f"calc takes at most {self.settings.max_terms} terms", bad_call=True))
            else:
                stats.calc_calls += 1
                stats.calc_terms += len(terms)
                replies.append(ToolReply(content=str(next(sums))))
        return replies


def build_calc(setup: ToolSetup) -> CalcTool:
    return CalcTool(load_tool_settings(CalcSettings, setup.args, setup.env), Adder())


CALC = ToolSpec(CalcStats, build_calc)
