"""The ``search`` tool: the policy's queries to the retriever's ``POST /retrieve``, and what it counts.

Every query of a turn's calls goes out in one request. A retriever failure is told to the policy (without
addresses, see :mod:`search_r1_oai.search_client`) and is not the policy's fault: it keeps the format score. Its
settings are the retrieval rows of the settings table (``RETRIEVAL_SERVER_URL``, ``SEARCH_R1_TOPK``,
``SEARCH_R1_RETRIEVAL_*``, ``RETRIEVER_API_KEY``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from search_r1_oai.prompts import SEARCH_TOOL, SEARCH_TOOL_NAME
from search_r1_oai.search_client import Passage, SearchClient, SearchError, format_search_results
from search_r1_oai.text import clean_text
from search_r1_oai.tool_base import Tool, ToolReply, ToolSetup, ToolSpec, call_arguments
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.tool_stats import ReportColumn, ToolStats, mean, percentile

# Failed /retrieve calls kept per trajectory with their addresses (the count goes on in search_attempts).
MAX_SEARCH_ERRORS = 8


@dataclass
class SearchStats(ToolStats):
    """One trajectory's searches. The names are the sample metadata keys they have always had."""

    tool: ClassVar[str] = SEARCH_TOOL_NAME
    report_columns: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("mean_searches", "searches", "{:.2f}", "searches"),
    )

    # /retrieve calls that answered, and the distinct queries they carried.
    searches: int = 0
    search_queries: int = 0
    # The distinct queries of each /retrieve call, in order (for evaluation and trajectory logs).
    queries: list[str] = field(default_factory=list)
    # One entry per /retrieve call: attempts it took, and the replica that answered ("" when none did).
    search_attempts: list[int] = field(default_factory=list)
    search_replicas: list[str] = field(default_factory=list)
    # Failed /retrieve calls with the addresses tried (for operators; the policy's tool message names none).
    search_errors: list[str] = field(default_factory=list)
    # Seconds each answered /retrieve call took, for latency percentiles, and their sum.
    search_latencies_s: list[float] = field(default_factory=list)
    retrieval_latency_s: float = 0.0

    @classmethod
    def batch_metrics(cls, batch: Sequence[SearchStats]) -> dict[str, float]:
        """Searches per trajectory, and the latency of one ``/retrieve`` call (p50, p99) over the batch."""
        latencies = [s for stats in batch for s in stats.search_latencies_s]
        return {
            "searches_per_sample": mean([stats.searches for stats in batch]),
            "retrieval_latency_p50_s": percentile(latencies, 50),
            "retrieval_latency_p99_s": percentile(latencies, 99),
        }

    def record(self) -> dict[str, Any]:
        return {"searches": self.searches, "queries": self.queries}

    def summary(self) -> dict[str, Any]:
        return {"searches": self.searches}

    def answered(self, queries: list[str], latency_s: float, attempts: int, replica: str) -> None:
        self.searches += 1
        self.search_queries += len(queries)
        self.queries.extend(queries)
        self.retrieval_latency_s += latency_s
        self.search_latencies_s.append(latency_s)
        self.search_attempts.append(attempts)
        self.search_replicas.append(replica)

    def failed(self, error: SearchError) -> None:
        self.search_attempts.append(error.attempts)
        self.search_replicas.append("")
        if len(self.search_errors) < MAX_SEARCH_ERRORS:
            self.search_errors.append(error.detail)


def search_queries(call: ToolCall) -> tuple[list[str], str | None]:
    """The queries of a ``search`` call (``queries`` list or a plain ``query`` string), or an error to report."""
    arguments, error = call_arguments(call, like='{"queries": ["..."]}')
    if arguments is None:
        return [], error
    raw = arguments.get("queries", arguments.get("query"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(q, str) for q in raw):
        return [], f'{SEARCH_TOOL_NAME!r} needs "queries": a list of strings'
    # JSON the policy wrote may escape a lone surrogate ("\\ud800"): searched as U+FFFD, never an encoding error.
    queries = [clean_text(q.strip()) for q in raw if q.strip()]
    if not queries:
        return [], f'{SEARCH_TOOL_NAME!r} got no non-empty query; pass "queries": ["..."]'
    return queries, None


class SearchTool(Tool[SearchStats]):
    """``search`` over one :class:`SearchClient` (shared by every rollout of the context)."""

    schema = SEARCH_TOOL
    stats_type = SearchStats

    def __init__(self, client: SearchClient) -> None:
        self.client = client

    async def run(self, calls: list[ToolCall], stats: SearchStats) -> list[ToolReply]:
        parsed = [search_queries(call) for call in calls]
        all_queries = list(dict.fromkeys(q for queries, error in parsed if error is None for q in queries))
        found: dict[str, list[Passage]] = {}
        search_error: str | None = None
        if all_queries:
            try:
                result = await self.client.retrieve(all_queries)
            except SearchError as exc:
                search_error = f"search failed: {exc}"
                stats.failed(exc)
            else:
                found = dict(zip(all_queries, result.passages, strict=True))
                stats.answered(all_queries, result.latency_s, result.attempts, result.replica)
        replies = []
        for queries, error in parsed:
            if error is not None:
                replies.append(ToolReply(error=error, bad_call=True))
            elif search_error is not None:
                replies.append(ToolReply(error=search_error))
            else:
                replies.append(ToolReply(content=format_search_results(queries, [found[q] for q in queries])))
        return replies


def build_search(setup: ToolSetup) -> SearchTool:
    return SearchTool(SearchClient(setup.settings, pools=setup.pools))


SEARCH = ToolSpec(SearchStats, build_search)
