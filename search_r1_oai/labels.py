"""Gold answers from a sample's label: one parser for the reward and the data checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def gold_answers(label: Any) -> list[str]:
    """Gold answers from slime's label: ``{"ground_truth": {"target": [...]}}``, a dict with ``target``, a str or
    a list (parquet may hand lists over as numpy arrays). Raises ``ValueError`` for anything else."""
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
