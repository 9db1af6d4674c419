"""The evaluation items of slime-ready parquet files, read the way slime reads them for training.

Columns as ``data_preprocess.py`` writes them, all of :data:`search_r1_oai.columns.REQUIRED_COLUMNS` (slime's
``--input-key prompt --label-key reward_model --tool-key tools --metadata-key metadata`` reads them): the messages,
the tools JSON, the label, the data source, the metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from search_r1_oai.columns import DATA_SOURCE, LABEL, METADATA, PROMPT, REQUIRED_COLUMNS, TOOLS
from search_r1_oai.labels import gold_answers


class EvalDataError(ValueError):
    """A data file cannot be evaluated; the message names the file and what to do."""


def content_hash(data_source: str, question: str, gold: list[str], messages: list[dict[str, Any]]) -> str:
    """What makes two samples the same question, whatever folder their file is in: 16 hex digits."""
    content = json.dumps([data_source, question, gold, messages], ensure_ascii=True, sort_keys=True, default=str)
    return hashlib.sha256(content.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class EvalItem:
    """One question. ``id`` (file name and row) is for people; ``key`` (the id and a hash of the sample's content:
    data source, question, gold answers, prompt) is what resume matches, so ``eval/nq/test.parquet`` and
    ``eval/tq/test.parquet`` never take each other's results, and a moved data folder still resumes."""

    id: str
    data_source: str
    question: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    label: Any

    @property
    def gold(self) -> list[str]:
        return gold_answers(self.label)

    @cached_property
    def key(self) -> str:
        try:
            gold = self.gold
        except ValueError:  # an unreadable label still names a sample (its reward will say what is wrong)
            gold = [repr(self.label)]
        return f"{self.id}#{content_hash(self.data_source, self.question, gold, self.messages)}"


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
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise EvalDataError(
            f"{path}: missing column(s) {', '.join(missing)}; this is not slime-ready data, run data_preprocess.py on it"
        )
    if max_samples is not None:
        table = table.slice(0, max_samples)
    items = []
    for index, row in enumerate(table.to_pylist()):
        metadata = row.get(METADATA) or {}
        tools = row[TOOLS]
        items.append(
            EvalItem(
                id=f"{path.name}:{index}",
                data_source=str(row.get(DATA_SOURCE) or metadata.get("data_source") or path.stem),
                question=str(row.get("question") or metadata.get("question") or ""),
                messages=list(row[PROMPT]),
                tools=json.loads(tools) if isinstance(tools, str) else list(tools or []),
                label=row[LABEL],
            )
        )
    return items
