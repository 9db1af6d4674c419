"""Search-R1's reward: exact match of the final ``<answer>`` against the gold answers, plus a format score.

Score 1.0 when the normalised answer equals any normalised gold answer; ``format_score`` (default 0.2) when the
answer is wrong but the trajectory is well formed (final turn has exactly one ``<answer>`` and no tool calls,
every earlier turn made well-formed search calls, nothing was cut by length or budget); 0.0 otherwise. A search
the retriever failed to answer does not cost the format score: the call was well formed, the outage is not the
policy's doing (``metadata["bad_tool_calls"]`` counts only malformed calls; ``tool_errors`` counts both). EM and
token F1 are recorded in ``sample.metadata`` for evaluation.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

from search_r1_oai.config import Settings, get_settings

logger = logging.getLogger(__name__)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1/SQuAD normalisation: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answers(text: str) -> list[str]:
    """Every ``<answer>…</answer>`` body in order."""
    return _ANSWER.findall(text or "")


def extract_answer(text: str) -> str | None:
    """The last ``<answer>…</answer>`` body, or ``None``."""
    answers = extract_answers(text)
    return answers[-1].strip() if answers else None


def gold_answers(label: Any) -> list[str]:
    """Gold answers from slime's label: ``{"ground_truth": {"target": [...]}}``, a dict with ``target``, a str or
    a list (parquet may hand lists over as numpy arrays)."""
    if isinstance(label, dict):
        if "ground_truth" in label:
            return gold_answers(label["ground_truth"])
        if "target" in label:
            return gold_answers(label["target"])
        raise ValueError(f"label dict has neither 'ground_truth' nor 'target': {sorted(label)}")
    if isinstance(label, str):
        return [label]
    if hasattr(label, "tolist"):
        label = label.tolist()
    if isinstance(label, Iterable):
        return [str(item) for item in label]
    raise ValueError(f"unsupported label type {type(label).__name__}")


def exact_match(prediction: str, golds: list[str]) -> bool:
    """Whether the normalised prediction equals any normalised gold answer."""
    normalized = normalize_answer(prediction)
    return any(normalize_answer(gold) == normalized for gold in golds)


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


def _final_text(sample: Any) -> str:
    metadata = sample.metadata or {}
    if "final_content" in metadata:
        return str(metadata["final_content"])
    return sample.response or ""


def is_well_formed(sample: Any) -> bool:
    """Final turn: exactly one answer, no tool calls; earlier turns: only well-formed searches; nothing cut off."""
    metadata = sample.metadata or {}
    status = getattr(getattr(sample, "status", None), "name", "")
    if status not in ("COMPLETED", "PENDING"):
        return False
    if metadata.get("stop_reason", "answer") != "answer" or metadata.get("bad_tool_calls", 0):
        return False
    return len(extract_answers(_final_text(sample))) == 1


def score_sample(sample: Any, format_score: float) -> float:
    """The reward of one sample; stores ``em``, ``f1`` and ``pred_answer`` in its metadata."""
    if sample.metadata is None:
        sample.metadata = {}
    try:
        golds = gold_answers(sample.label)
    except ValueError as exc:
        logger.error("sample %s: unusable label, reward 0: %s", getattr(sample, "index", None), exc)
        sample.metadata.update(em=0.0, f1=0.0, pred_answer=None, reward_error=str(exc))
        return 0.0
    answer = extract_answer(_final_text(sample))
    em = answer is not None and exact_match(answer, golds)
    sample.metadata.update(em=float(em), f1=f1(answer, golds) if answer is not None else 0.0, pred_answer=answer)
    if em:
        return 1.0
    return format_score if is_well_formed(sample) else 0.0


async def reward_func(args: Any, sample: Any, **kwargs: Any) -> float | list[float]:
    """slime's ``--custom-rm-path`` hook: one sample -> float, a list of samples -> list of floats in order."""
    settings: Settings = kwargs.get("settings") or get_settings()
    if isinstance(sample, list):
        return [score_sample(s, settings.format_score) for s in sample]
    return score_sample(sample, settings.format_score)
