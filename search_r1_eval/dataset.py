"""The evaluation items of slime-ready parquet files, read the way slime reads them for training.

Columns as ``data_preprocess.py`` writes them (and slime's ``--input-key prompt --label-key reward_model
--tool-key tools --metadata-key metadata`` reads): the messages, the tools JSON, the label, the data source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_r1_oai.labels import gold_answers

REQUIRED = ("prompt", "tools", "reward_model")


class EvalDataError(ValueError):
    """A data file cannot be evaluated; the message names the file and what to do."""


@dataclass(frozen=True)
class EvalItem:
    """One question; ``id`` is stable across runs (file name and row), so a results file can be resumed."""

    id: str
    data_source: str
    question: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    label: Any

    @property
    def gold(self) -> list[str]:
        return gold_answers(self.label)


def load_items(path: Path, max_samples: int | None = None) -> list[EvalItem]:
    """The first ``max_samples`` rows of one file (all when ``None``)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise EvalDataError(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for non-parquet input
        raise EvalDataError(
            f"{path}: cannot be read as parquet ({exc}); pass a file data_preprocess.py wrote"
        ) from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise EvalDataError(
            f"{path}: missing column(s) {', '.join(missing)}; this is not slime-ready data, run data_preprocess.py on it"
        )
    if max_samples is not None:
        table = table.slice(0, max_samples)
    items = []
    for index, row in enumerate(table.to_pylist()):
        metadata = row.get("metadata") or {}
        tools = row["tools"]
        items.append(
            EvalItem(
                id=f"{path.name}:{index}",
                data_source=str(row.get("data_source") or metadata.get("data_source") or path.stem),
                question=str(row.get("question") or metadata.get("question") or ""),
                messages=list(row["prompt"]),
                tools=json.loads(tools) if isinstance(tools, str) else list(tools or []),
                label=row["reward_model"],
            )
        )
    return items
