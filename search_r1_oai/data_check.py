"""Checks a slime-ready parquet file exactly the way slime reads it, and every label the way the reward reads it.

slime iterates ``ParquetFile.iter_batches()`` and ``to_pylist()``; each row must give a messages list (``prompt``), a
JSON list of tool schemas (``tools``), a label (``reward_model``) and a ``metadata`` dict. Labels are checked with
:func:`search_r1_oai.labels.label_problems`, the same parser the reward uses, so a label the checker passes is one the
reward can score. Used by ``data_preprocess.py --check`` (through :mod:`search_r1_data.check`) and by the preflight
before a run; it lives in the core because what it checks is the rollout's input, read as slime reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from search_r1_oai.columns import LABEL, METADATA, PROMPT, REQUIRED_COLUMNS, TOOLS
from search_r1_oai.labels import label_problems

# Rows per batch when reading; bounds memory (slime's own reads use pyarrow's default, the rows are the same).
DEFAULT_BATCH_SIZE = 4096
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Problem:
    """One thing slime (or the reward) would trip over: ``row`` is None for file-level problems."""

    row: int | None
    column: str
    message: str
    # The file itself is corrupt or truncated (not a bad row): data_preprocess.py --check says so in one line, exit 2.
    damaged: bool = False

    def __str__(self) -> str:
        where = "file" if self.row is None else f"row {self.row}"
        return f"{where}: {self.column}: {self.message}"


def _null_paths(value: Any, path: str = "") -> Iterator[str]:
    if value is None:
        yield path or "<value>"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _null_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _null_paths(item, f"{path}[{i}]")


def _check_prompt(value: Any) -> Iterator[str]:
    if not isinstance(value, list):
        yield f"must be a list of messages, got {type(value).__name__}"
        return
    if not value:
        yield "is an empty list of messages"
        return
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            yield f"message {i} is {type(message).__name__}, not a dict"
            continue
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            yield f"message {i} has role {role!r}, expected one of {list(MESSAGE_ROLES)}"
        if not isinstance(content, str) or not content.strip():
            yield f"message {i} has no text content ({content!r})"
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in value):
        yield "has no user message"


def _check_tools(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            yield f"is not valid JSON ({exc})"
            return
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        yield f"must decode to a list of tool schemas, got {type(value).__name__} (slime asserts a list)"
        return
    if not value:
        yield "is an empty list: the model would have no search tool"
        return
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            yield f"tool {i} is not a {{'type': 'function', 'function': {{...}}}} schema"
            continue
        function = tool["function"]
        if not isinstance(function.get("name"), str) or not function["name"]:
            yield f"tool {i} has no function name"
        if not isinstance(function.get("parameters"), dict):
            yield f"tool {i} has no parameters object"
    for path in _null_paths(value):
        yield f"holds a null at {path} (chat templates render it as a real property)"


def _check_reward_model(value: Any) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"must be a dict (parquet struct), got {type(value).__name__}"
        return
    yield from label_problems(value)
    if not isinstance(value.get("style"), str):
        yield f"style must be a string, got {value.get('style')!r}"


def _check_metadata(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield "is a string (JSON?), slime needs a dict: it does metadata['tools'] = tools"
        return
    if not isinstance(value, dict):
        yield f"must be a dict (parquet struct), got {type(value).__name__}"
        return
    for path in _null_paths(value):
        yield f"holds a null at {path}"


_ROW_CHECKS = {
    PROMPT: _check_prompt,
    TOOLS: _check_tools,
    LABEL: _check_reward_model,
    METADATA: _check_metadata,
}


def check_rows(rows: Iterable[dict[str, Any]], *, start: int = 0) -> Iterator[Problem]:
    """Problems of rows as slime's loader sees them (``to_pylist()`` dicts), numbered from ``start``."""
    for index, row in enumerate(rows, start):
        for column in REQUIRED_COLUMNS:
            if column not in row:
                continue
            value = row[column]
            if value is None:
                yield Problem(index, column, "is null")
                continue
            check = _ROW_CHECKS.get(column)
            if check is not None:
                for message in check(value):
                    yield Problem(index, column, message)
            elif not isinstance(value, str) or not value.strip():
                yield Problem(index, column, f"must be a non-empty string, got {value!r}")
        for column, value in row.items():
            if column not in REQUIRED_COLUMNS and value is None:
                yield Problem(index, column, "is null")


def _check_schema(schema: pa.Schema) -> Iterator[Problem]:
    for column in REQUIRED_COLUMNS:
        if column not in schema.names:
            yield Problem(None, column, f"column is missing (columns: {schema.names})")
    if TOOLS in schema.names and not pa.types.is_string(schema.field(TOOLS).type):
        yield Problem(
            None,
            TOOLS,
            f"column type is {schema.field(TOOLS).type}; store a JSON string "
            "(a list<struct> column is schema-unified across rows and grows null properties)",
        )
    if METADATA in schema.names and not pa.types.is_struct(schema.field(METADATA).type):
        yield Problem(None, METADATA, f"column type is {schema.field(METADATA).type}; slime needs a struct/dict")


def check_file(path: Path, *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Problem]:
    """Every problem in ``path``, read exactly as slime reads it (``iter_batches()`` then ``to_pylist()``).

    slime uses pyarrow's default batch size; the rows ``to_pylist()`` yields do not depend on it, so a smaller one
    only bounds memory (the default 65,536-row batches of chat prompts take about 1 GB as Python objects).
    """
    path = Path(path)
    if not path.exists():
        return [Problem(None, "<file>", "does not exist")]
    if path.is_dir():
        return [Problem(None, "<file>", "is a folder, not a parquet file")]
    try:
        # Page checksums (convert.py writes them) catch a broken middle that still has PAR1 at both ends.
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return [Problem(None, "<file>", f"cannot be read as parquet: {_one_line(exc)}", damaged=True)]
    problems = list(_check_schema(parquet.schema_arrow))
    start = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size):
            rows = batch.to_pylist()
            problems.extend(check_rows(rows, start=start))
            start += len(rows)
    except (OSError, pa.ArrowException, ValueError) as exc:  # a corrupt page fails part-way
        message = f"is damaged: reading failed after {start} rows ({_one_line(exc)})"
        return [*problems, Problem(None, "<file>", message, damaged=True)]
    if start != parquet.metadata.num_rows:
        message = f"is damaged: its footer promises {parquet.metadata.num_rows} rows, {start} could be read"
        problems.append(Problem(None, "<file>", message, damaged=True))
    elif start == 0:
        problems.append(Problem(None, "<file>", "has no rows"))
    return problems


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
