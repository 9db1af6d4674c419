"""Search-R1's reward: exact match of the final ``<answer>`` against the gold answers, plus a format score.

Score 1.0 when the normalised answer equals any normalised gold answer; ``format_score`` (default 0.2) when the
answer is wrong but the trajectory is well formed (final turn has exactly one ``<answer>`` and no tool calls,
every earlier turn made well-formed search calls, nothing was cut by length or budget); 0.0 otherwise. A search
the retriever failed to answer does not cost the format score: the call was well formed, the outage is not the
policy's doing (``RolloutStats.bad_tool_calls`` counts only malformed calls; ``tool_errors`` counts both). EM,
token F1 and cover-EM (a normalised gold answer contained in the normalised prediction, as Search-R1's evaluation
reports it) come with the reward for evaluation; all three share one normaliser,
:func:`~search_r1_oai.labels.normalize_answer`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from search_r1_oai.labels import gold_answers, normalize_answer
from search_r1_oai.result import Outcome, RolloutResult

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# The normaliser and the label parser live in labels.py (the data checks use them too); named here for callers.
__all__ = [
    "Score",
    "cover_exact_match",
    "exact_match",
    "extract_answer",
    "extract_answers",
    "f1",
    "gold_answers",
    "is_well_formed",
    "normalize_answer",
    "score",
    "score_result",
]


def extract_answers(text: str) -> list[str]:
    """Every ``<answer>…</answer>`` body in order."""
    return _ANSWER.findall(text or "")


def extract_answer(text: str) -> str | None:
    """The last ``<answer>…</answer>`` body, or ``None``."""
    answers = extract_answers(text)
    return answers[-1].strip() if answers else None


def exact_match(prediction: str, golds: list[str]) -> bool:
    """Whether the normalised prediction equals any normalised gold answer."""
    normalized = normalize_answer(prediction)
    return any(normalize_answer(gold) == normalized for gold in golds)


def cover_exact_match(prediction: str, golds: list[str]) -> bool:
    """Whether any normalised gold answer occurs in the normalised prediction (Search-R1's ``cover_em``): "the
    Beatles band" covers "Beatles". A gold answer that normalises to nothing covers nothing."""
    normalized = normalize_answer(prediction)
    return any(gold_key and gold_key in normalized for gold_key in map(normalize_answer, golds))


def f1(prediction: str, golds: list[str]) -> float:
    """Best token-level F1 over the gold answers (after normalisation)."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(expected)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass(frozen=True)
class Score:
    """The reward of one trajectory and the numbers evaluation reports."""

    reward: float
    em: float
    f1: float
    pred_answer: str | None
    error: str | None = None
    cover_em: float = 0.0


def is_well_formed(final_text: str, outcome: Outcome | None, stop_reason: str, bad_tool_calls: int) -> bool:
    """Final turn: exactly one answer, no tool calls; earlier turns: only well-formed calls; nothing cut off.

    ``outcome`` ``None`` is a sample that was never rolled out here (its text is judged as it stands)."""
    if outcome not in (Outcome.COMPLETED, None):
        return False
    if stop_reason != "answer" or bad_tool_calls:
        return False
    return len(extract_answers(final_text)) == 1


def score(final_text: str, label: Any, *, well_formed: bool, format_score: float) -> Score:
    """1.0 for an exact match, ``format_score`` for a well-formed wrong answer, 0.0 otherwise."""
    try:
        golds = gold_answers(label)
    except ValueError as exc:
        return Score(reward=0.0, em=0.0, f1=0.0, pred_answer=None, error=str(exc))
    answer = extract_answer(final_text)
    em = answer is not None and exact_match(answer, golds)
    reward = 1.0 if em else (format_score if well_formed else 0.0)
    if answer is None:
        return Score(reward=reward, em=0.0, f1=0.0, pred_answer=None)
    cover = cover_exact_match(answer, golds)
    return Score(reward=reward, em=float(em), f1=f1(answer, golds), pred_answer=answer, cover_em=float(cover))


def score_result(result: RolloutResult, label: Any, format_score: float) -> Score:
    """The reward of a finished rollout."""
    stats = result.stats
    well_formed = is_well_formed(stats.final_content, result.outcome, result.stop_reason, stats.bad_tool_calls)
    return score(stats.final_content, label, well_formed=well_formed, format_score=format_score)
