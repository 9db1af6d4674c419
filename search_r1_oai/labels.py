"""Gold answers from a sample's label and the answer normalisation: one parser for the reward and the data checks.

The reward scores with :func:`gold_answers` and :func:`normalize_answer`; ``data_preprocess.py --check`` (and the
preflight) run :func:`label_problems`, which reads a label through the same :func:`raw_answers` walk and the same
normaliser, so a label the checks pass is one the reward can score, and a label shape the reward learns is one the
checks accept.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1/SQuAD normalisation: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def raw_answers(label: Any) -> list[Any]:
    """The answer items of slime's label, unconverted: ``{"ground_truth": {"target": [...]}}``, a dict with
    ``target``, a str or a list (parquet may hand lists over as numpy arrays). Raises ``ValueError`` for anything
    else. The items are what the file holds (the checks need to see a ``None`` or a number before ``str()``)."""
    if isinstance(label, dict):
        if "ground_truth" in label:
            return raw_answers(label["ground_truth"])
        if "target" in label:
            return raw_answers(label["target"])
        raise ValueError(f"label dict has neither 'ground_truth' nor 'target': {sorted(label)}")
    if isinstance(label, str):
        return [label]
    if hasattr(label, "tolist"):
        label = label.tolist()
    if isinstance(label, Iterable):
        return list(label)
    raise ValueError(f"unsupported label type {type(label).__name__}")


def gold_answers(label: Any) -> list[str]:
    """Gold answers from slime's label (shapes as in :func:`raw_answers`), each as text. Raises ``ValueError`` for
    a label that is none of those shapes."""
    return [str(item) for item in raw_answers(label)]


def label_problems(label: Any) -> Iterator[str]:
    """What would make the reward misjudge this label: unreadable, no answers, an answer that is not text (the
    reward would compare against ``str(None)``), or one whose exact-match key is empty (an empty answer matches it).
    Yields nothing for a good label."""
    try:
        items = raw_answers(label)
    except ValueError as exc:
        yield str(exc)
        return
    if not items:
        yield "has no gold answers: no prediction can ever match"
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            yield f"gold answer {i} is {item!r}, not a non-empty string"
        elif not normalize_answer(item):
            yield f"gold answer {i} {item!r} normalises to an empty answer"
