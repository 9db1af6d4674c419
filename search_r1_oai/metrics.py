"""Search metrics of a batch of finished trajectories: what slime's generic reward curves do not show.

Used by the training log functions (``generate_with_search_oai.log_rollout_metrics``/``log_eval_metrics``, logged
as ``rollout/search/*`` and ``eval/<set>/search/*``). The rollout's own rates are computed here; each registered
tool adds its own (:meth:`~search_r1_oai.tool_stats.ToolStats.batch_metrics`: the search tool's searches per sample
and retrieval latencies), so a new tool's numbers appear beside them without a line here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from search_r1_oai.result import Outcome, RolloutStats
from search_r1_oai.tool_stats import mean, percentile
from search_r1_oai.tools import counter_kinds

__all__ = ["Finished", "percentile", "search_metrics"]


@dataclass(frozen=True)
class Finished:
    """What the metrics need of one trajectory; ``reward``/``em``/``f1`` are ``None`` before it was scored."""

    data_source: str
    outcome: Outcome | None
    stats: RolloutStats
    stop_reason: str = ""
    reward: float | None = None
    em: float | None = None
    f1: float | None = None


def search_metrics(items: Sequence[Finished], format_score: float) -> dict[str, float]:
    """Per-batch metrics, flat names (the caller adds its prefix). Rates are fractions of trajectories, except
    ``tool_error_rate`` (of tool calls); then every registered tool's own (the search tool's latencies are per
    ``/retrieve`` call, in seconds). ``bad_server_values`` counts the trajectories failed for a value the policy
    server should never send (ids beyond the vocabulary, NaN logprobs...): any is a server bug, so it is a count,
    not a rate; ``deadline_rate`` is the fraction cut by the trajectory's wall-clock bound."""
    if not items:
        return {}
    n = len(items)
    stats = [item.stats for item in items]
    calls = sum(st.tool_calls for st in stats)
    outcomes = [item.outcome for item in items]
    scored = [item for item in items if item.reward is not None]
    metrics = {
        "samples": float(n),
        "turns_per_sample": mean([st.turns for st in stats]),
        "final_answer_rate": mean([float(st.has_final_answer) for st in stats]),
        "tool_error_rate": sum(st.tool_errors for st in stats) / calls if calls else 0.0,
        "bad_tool_call_rate": sum(st.bad_tool_calls for st in stats) / calls if calls else 0.0,
        "token_exact_rate": mean([float(st.token_exact) for st in stats]),
        "failed_rate": outcomes.count(Outcome.FAILED) / n,
        "aborted_rate": outcomes.count(Outcome.ABORTED) / n,
        "truncated_rate": outcomes.count(Outcome.TRUNCATED) / n,
        "bad_server_values": float(sum(item.stop_reason == "bad_server_value" for item in items)),
        "deadline_rate": sum(item.stop_reason == "deadline" for item in items) / n,
    }
    for kind in counter_kinds():
        metrics |= kind.batch_metrics([st.seen(kind) for st in stats])
    if scored and format_score > 0:
        # Wrong answer in a well-formed trajectory: the reward is exactly the format score and EM is 0.
        metrics["format_score_rate"] = mean([float(i.em == 0 and i.reward == format_score) for i in scored])
    by_source: dict[str, list[Finished]] = defaultdict(list)
    for item in items:
        by_source[item.data_source].append(item)
    for source, group in sorted(by_source.items()):
        ems = [i.em for i in group if i.em is not None]
        f1s = [i.f1 for i in group if i.f1 is not None]
        if ems:
            metrics[f"{source}/em"] = mean(ems)
        if f1s:
            metrics[f"{source}/f1"] = mean(f1s)
        metrics[f"{source}/samples"] = float(len(group))
    return metrics
