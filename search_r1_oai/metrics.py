"""Search metrics of a batch of finished trajectories: what slime's generic reward curves do not show.

Shared by the training log functions (``generate_with_search_oai.log_rollout_metrics``/``log_eval_metrics``) and
the evaluation report, so a number means the same in W&B and in ``evaluate.py``'s table.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from search_r1_oai.result import Outcome, RolloutStats


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


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def search_metrics(items: Sequence[Finished], format_score: float) -> dict[str, float]:
    """Per-batch metrics, flat names (the caller adds its prefix). Rates are fractions of trajectories, except
    ``tool_error_rate`` (of tool calls); latencies are per ``/retrieve`` call, in seconds. ``bad_server_values``
    counts the trajectories failed for a value the policy server should never send (ids beyond the vocabulary,
    NaN logprobs...): any is a server bug, so it is a count, not a rate; ``deadline_rate`` is the fraction cut by
    the trajectory's wall-clock bound."""
    if not items:
        return {}
    n = len(items)
    stats = [item.stats for item in items]
    latencies = [s for st in stats for s in st.search_latencies_s]
    calls = sum(st.tool_calls for st in stats)
    outcomes = [item.outcome for item in items]
    scored = [item for item in items if item.reward is not None]
    metrics = {
        "samples": float(n),
        "searches_per_sample": _mean([st.searches for st in stats]),
        "turns_per_sample": _mean([st.turns for st in stats]),
        "final_answer_rate": _mean([float(st.has_final_answer) for st in stats]),
        "tool_error_rate": sum(st.tool_errors for st in stats) / calls if calls else 0.0,
        "bad_tool_call_rate": sum(st.bad_tool_calls for st in stats) / calls if calls else 0.0,
        "retrieval_latency_p50_s": percentile(latencies, 50),
        "retrieval_latency_p99_s": percentile(latencies, 99),
        "token_exact_rate": _mean([float(st.token_exact) for st in stats]),
        "failed_rate": outcomes.count(Outcome.FAILED) / n,
        "aborted_rate": outcomes.count(Outcome.ABORTED) / n,
        "truncated_rate": outcomes.count(Outcome.TRUNCATED) / n,
        "bad_server_values": float(sum(item.stop_reason == "bad_server_value" for item in items)),
        "deadline_rate": sum(item.stop_reason == "deadline" for item in items) / n,
    }
    if scored and format_score > 0:
        # Wrong answer in a well-formed trajectory: the reward is exactly the format score and EM is 0.
        metrics["format_score_rate"] = _mean([float(i.em == 0 and i.reward == format_score) for i in scored])
    by_source: dict[str, list[Finished]] = defaultdict(list)
    for item in items:
        by_source[item.data_source].append(item)
    for source, group in sorted(by_source.items()):
        ems = [i.em for i in group if i.em is not None]
        f1s = [i.f1 for i in group if i.f1 is not None]
        if ems:
            metrics[f"{source}/em"] = _mean(ems)
        if f1s:
            metrics[f"{source}/f1"] = _mean(f1s)
        metrics[f"{source}/samples"] = float(len(group))
    return metrics
