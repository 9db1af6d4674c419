"""Run evaluation items through the training rollout core and record one JSON line per sample as it ends.

A finished sample goes to ``results.jsonl``, a failed one (the policy or the retriever unreachable, a bad reply)
to ``failures.jsonl`` (see :mod:`search_r1_eval.results_file`): an interrupted run keeps everything done so far,
and the same command resumes it, running again every sample that is not in the results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from search_r1_eval.dataset import EvalItem
from search_r1_eval.results_file import ResultsStore, is_failure
from search_r1_oai.context import RolloutContext
from search_r1_oai.result import RolloutResult, RolloutStats
from search_r1_oai.reward import score_result
from search_r1_oai.rollout import run_rollout
from search_r1_oai.tools import counter_kinds


def sampling_params(max_new_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    """slime-style sampling params for evaluation: greedy unless a temperature is given, no truncation of the
    distribution (the rollout sends every other sampling field at its neutral value)."""
    return {"temperature": temperature, "top_p": 1.0, "top_k": -1, "max_new_tokens": max_new_tokens}


def record_of(item: EvalItem, result: RolloutResult, format_score: float) -> dict[str, Any]:
    """The JSON line of one sample."""
    score = score_result(result, item.label, format_score)
    stats = result.stats
    return {
        "id": item.id,
        "key": item.key,
        "data_source": item.data_source,
        "question": item.question,
        "gold": item.gold,
        "answer": score.pred_answer,
        "em": score.em,
        "f1": score.f1,
        "cover_em": score.cover_em,
        "reward": score.reward,
        "turns": stats.turns,
        **tool_records(stats),
        "tool_calls": stats.tool_calls,
        "tool_errors": stats.tool_errors,
        "final_answer": stats.has_final_answer,
        "status": result.outcome.name,
        "stop_reason": result.stop_reason,
        "error": result.error,
        "messages": result.messages,
    }


def tool_records(stats: RolloutStats) -> dict[str, Any]:
    """What every registered tool keeps in a record (the search tool: ``searches`` and ``queries``)."""
    return {key: value for kind in counter_kinds() for key, value in stats.seen(kind).record().items()}


def crash_record(item: EvalItem, exc: Exception) -> dict[str, Any]:
    """A FAILED record for a sample whose rollout raised (the core promises not to; one bug must not end the run)."""
    return {
        "id": item.id,
        "key": item.key,
        "data_source": item.data_source,
        "question": item.question,
        "status": "FAILED",
        "error": f"the rollout raised {type(exc).__name__}: {exc}",
    }


@dataclass
class RunCounts:
    """What this run did: samples finished and samples failed."""

    finished: int = 0
    failed: int = 0
    em: float = 0.0


async def run_evaluation(
    items: Iterable[EvalItem],
    context: RolloutContext,
    sampling_params: dict[str, Any],
    store: ResultsStore,
    *,
    concurrency: int,
    progress: bool = True,
) -> RunCounts:
    """Evaluate ``items`` (the caller leaves out what is done) into ``store``. A record that cannot be written
    (:class:`~search_r1_eval.results_file.ResultsWriteError`) stops every sample in flight and is raised."""
    todo = list(items)
    counts = RunCounts()
    if not todo:
        await context.aclose()
        return counts
    queue: asyncio.Queue[EvalItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    bar = tqdm(total=len(todo), desc="evaluate", unit="q", disable=not progress, dynamic_ncols=True)

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            try:
                result = await run_rollout(context, item.messages, dict(sampling_params), tools=item.tools)
                record = record_of(item, result, context.settings.format_score)
            except Exception as exc:
                record = crash_record(item, exc)
            store.add(record)
            if is_failure(record):
                counts.failed += 1
            else:
                counts.finished += 1
                counts.em += record["em"]
            bar.set_postfix(EM=f"{counts.em / max(counts.finished, 1):.3f}", failed=counts.failed)
            bar.update(1)

    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(todo)))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        await context.aclose()
    return counts
