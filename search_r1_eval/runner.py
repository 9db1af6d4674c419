"""Run evaluation items through the training rollout core and append one JSON line per finished sample.

Each line is written (and flushed) as soon as its sample finishes, so an interrupted run keeps everything done so
far and the same command resumes it: items whose ``id`` is already in the results file are skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from search_r1_eval.dataset import EvalItem
from search_r1_oai.context import RolloutContext
from search_r1_oai.result import RolloutResult
from search_r1_oai.reward import score_result
from search_r1_oai.rollout import run_rollout


def sampling_params(max_new_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    """slime-style sampling params for evaluation: greedy unless a temperature is given, no truncation of the
    distribution (the rollout sends every other sampling field at its neutral value)."""
    return {"temperature": temperature, "top_p": 1.0, "top_k": -1, "max_new_tokens": max_new_tokens}


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a results file (a line cut off by a crash is ignored and redone)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def record_of(item: EvalItem, result: RolloutResult, format_score: float) -> dict[str, Any]:
    """The JSON line of one finished sample."""
    score = score_result(result, item.label, format_score)
    stats = result.stats
    return {
        "id": item.id,
        "data_source": item.data_source,
        "question": item.question,
        "gold": item.gold,
        "answer": score.pred_answer,
        "em": score.em,
        "f1": score.f1,
        "reward": score.reward,
        "turns": stats.turns,
        "searches": stats.searches,
        "queries": stats.queries,
        "tool_calls": stats.tool_calls,
        "tool_errors": stats.tool_errors,
        "final_answer": stats.has_final_answer,
        "status": result.outcome.name,
        "stop_reason": result.stop_reason,
        "error": result.error,
        "messages": result.messages,
    }


async def run_evaluation(
    items: Iterable[EvalItem],
    context: RolloutContext,
    sampling_params: dict[str, Any],
    results_path: Path,
    *,
    concurrency: int,
    progress: bool = True,
) -> int:
    """Evaluate the items not yet in ``results_path``; returns how many were run now."""
    done = {record["id"] for record in read_results(results_path)}
    todo = [item for item in items if item.id not in done]
    if not todo:
        return 0
    queue: asyncio.Queue[EvalItem] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="evaluate", unit="q", disable=not progress, dynamic_ncols=True)
    totals = {"n": 0, "em": 0.0}

    async def worker(out: Any) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            result = await run_rollout(context, item.messages, dict(sampling_params), tools=item.tools)
            record = record_of(item, result, context.settings.format_score)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            totals["n"] += 1
            totals["em"] += record["em"]
            bar.set_postfix(EM=f"{totals['em'] / totals['n']:.3f}")
            bar.update(1)

    try:
        with results_path.open("a", encoding="utf-8") as out:
            await asyncio.gather(*(worker(out) for _ in range(min(concurrency, len(todo)))))
    finally:
        bar.close()
        await context.aclose()
    return totals["n"]
