"""Search-R1 QA parquet -> slime-ready parquet (tool-calling messages + label); :mod:`search_r1_data.check` checks it.

slime reads the output with ``--input-key prompt --label-key reward_model --tool-key tools`` and without
``--apply-chat-template``: it iterates ``ParquetFile.iter_batches()`` and ``to_pylist()``, so ``sample.prompt`` is the
messages list, ``sample.label`` the ``reward_model`` dict, and ``tools`` (``json.loads`` of a string) goes into
``sample.metadata["tools"]``. Everything here is built around that reading path; :func:`search_r1_data.check.check_file`
replays it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from search_r1_data.check import DEFAULT_BATCH_SIZE
from search_r1_data.files import atomic_path
from search_r1_oai.labels import raw_answers
from search_r1_oai.prompts import SYSTEM_PROMPT, build_messages, tools_json
from search_r1_oai.reward import normalize_answer

logger = logging.getLogger(__name__)

DEFAULT_HF_REPO_ID = "PeterJinGo/nq_hotpotqa_train"
UNKNOWN_SOURCE = "unknown"
MAX_EXAMPLES = 5

# Columns the converter needs from the input; the rest (old prompt text, ability, ...) is never read.
INPUT_COLUMNS = ("question", "golden_answers", "reward_model", "data_source")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("tools", pa.string(), nullable=False),
        pa.field(
            "reward_model",
            pa.struct(
                [
                    pa.field("ground_truth", pa.struct([pa.field("target", pa.list_(pa.string()))])),
                    pa.field("style", pa.string()),
                ]
            ),
            nullable=False,
        ),
        pa.field("data_source", pa.string(), nullable=False),
        pa.field(
            "metadata",
            pa.struct(
                [
                    pa.field("question", pa.string()),
                    pa.field("split", pa.string()),
                    pa.field("index", pa.int64()),
                    pa.field("data_source", pa.string()),
                ]
            ),
            nullable=False,
        ),
        pa.field("question", pa.string(), nullable=False),
        pa.field("golden_answers", pa.list_(pa.string()), nullable=False),
    ]
)


class DataError(Exception):
    """A problem the user must fix (missing input, bad arguments); the CLI prints it and exits non-zero."""


class RowRejected(Exception):
    """One input row cannot become a training sample; the reason is counted and shown, never swallowed."""


# ---------------------------------------------------------------------------------------------------------------------
# Answer normalisation


def _flatten(value: Any) -> Iterator[Any]:
    if value is None:
        return
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _answer_text(value: Any) -> str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, int, float, bool)):
        return str(value).strip()
    return None


def normalise_targets(value: Any) -> list[str]:
    """Accepted answers as the reward expects them: a flat list of distinct, stripped, non-empty strings.

    Accepts what parquet readers hand back (numpy arrays, tuples, nested lists, scalars, numbers). Case is kept: the
    reward lowercases at comparison time. Targets whose exact-match key is empty ("the", "!") are dropped because an
    empty answer would match them.
    """
    out: list[str] = []
    seen: set[str] = set()
    for item in _flatten(value):
        text = _answer_text(item)
        if not text or text in seen or not normalize_answer(text):
            continue
        seen.add(text)
        out.append(text)
    return out


def _reward_model_targets(reward_model: Any) -> Any:
    """The answers in an upstream ``reward_model``, read by the reward's own label parser; ``None`` when unusable.

    Upstream files sometimes store the label as JSON text; that is decoded first (the reward would take the whole
    string for one answer). Anything else the reward could not read falls back to ``golden_answers``.
    """
    if isinstance(reward_model, str):
        try:
            reward_model = json.loads(reward_model)
        except json.JSONDecodeError:
            return None
    if not isinstance(reward_model, dict):
        return None
    try:
        return raw_answers(reward_model)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Row conversion


@dataclass(frozen=True)
class ConvertedRow:
    """One output row plus where its targets came from (for the summary)."""

    row: dict[str, Any]
    target_origin: str


def convert_row(row: dict[str, Any], *, split: str, index: int, system_prompt: str = SYSTEM_PROMPT) -> ConvertedRow:
    """Turn one upstream row into the output row; raise :class:`RowRejected` when it cannot train anything."""
    question = row.get("question")
    if question is None:
        raise RowRejected("missing question")
    if not isinstance(question, str):
        raise RowRejected(f"question is {type(question).__name__}, not text")
    question = question.strip()
    if not question:
        raise RowRejected("empty question")

    targets = normalise_targets(_reward_model_targets(row.get("reward_model")))
    origin = "reward_model"
    if not targets:
        targets = normalise_targets(row.get("golden_answers"))
        origin = "golden_answers"
    if not targets:
        raise RowRejected("no answers in reward_model or golden_answers")

    source = row.get("data_source")
    source = source.strip() if isinstance(source, str) and source.strip() else UNKNOWN_SOURCE
    out = {
        "prompt": build_messages(question, system_prompt),
        "tools": tools_json(),
        "reward_model": {"ground_truth": {"target": targets}, "style": "rule"},
        "data_source": source,
        "metadata": {"question": question, "split": split, "index": index, "data_source": source},
        "question": question,
        "golden_answers": targets,
    }
    return ConvertedRow(out, origin)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming conversion of one split


@dataclass
class SplitSummary:
    """What happened to one split: enough to see at a glance that nothing was lost."""

    split: str
    input_path: Path
    output_path: Path
    rows_in: int = 0
    rows_out: int = 0
    per_source: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[tuple[int, str, str]] = field(default_factory=list)
    target_origin: Counter[str] = field(default_factory=Counter)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def format(self) -> str:
        """A human-readable multi-line report."""
        lines = [
            f"[{self.split}] {self.input_path} -> {self.output_path}",
            f"  rows in: {self.rows_in}  rows out: {self.rows_out}  rejected: {self.rows_rejected}",
        ]
        for source, count in sorted(self.per_source.items()):
            lines.append(f"  data_source {source}: {count}")
        if self.target_origin.get("golden_answers"):
            lines.append(
                f"  targets taken from golden_answers (reward_model had none): {self.target_origin['golden_answers']}"
            )
        for reason, count in self.rejected.most_common():
            lines.append(f"  rejected ({reason}): {count}")
        if self.rejected_examples:
            lines.append(f"  first rejected rows (of {self.rows_rejected}):")
            lines.extend(f"    row {index}: {reason}: {snippet}" for index, reason, snippet in self.rejected_examples)
        return "\n".join(lines)


def shorten(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters with ``...`` (a rejected row as the summary shows it)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snippet(row: dict[str, Any]) -> str:
    return shorten(
        json.dumps({key: row.get(key) for key in INPUT_COLUMNS if key in row}, ensure_ascii=False, default=str)
    )


def _open_parquet(path: Path) -> pq.ParquetFile:
    """``path`` opened as parquet, or a :class:`DataError` saying so: a wrong file (a jsonl, a download page) is a
    mistake in the input folder, not a bug, and deserves one line rather than pyarrow's traceback."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"{path} cannot be read as parquet ({exc}); the training input must be Search-R1 <split>.parquet files"
        ) from exc


def _iter_rows(path: Path, *, batch_size: int, max_rows: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    parquet = _open_parquet(path)
    columns = [name for name in INPUT_COLUMNS if name in parquet.schema_arrow.names]
    if "question" not in columns:
        raise DataError(f"{path} has no 'question' column (columns: {parquet.schema_arrow.names})")
    index = 0
    batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as exc:  # a truncated or corrupt file fails part-way
            raise DataError(f"{path} is damaged: reading failed after {index} rows ({exc}); download it again") from exc
        if batch is None:
            return
        for row in batch.to_pylist():
            if max_rows is not None and index >= max_rows:
                return
            yield index, row
            index += 1


def convert_file(
    input_path: Path,
    output_path: Path,
    *,
    split: str,
    system_prompt: str = SYSTEM_PROMPT,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> SplitSummary:
    """Stream the upstream parquet ``input_path`` into ``output_path`` (see :func:`stream_convert`)."""
    if max_rows is not None and max_rows < 0:
        raise DataError(f"max_samples must be >= 0, got {max_rows}")
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise DataError(f"input file not found: {input_path}")
    total = _open_parquet(input_path).metadata.num_rows
    if max_rows is not None:
        total = min(total, max_rows)
    return stream_convert(
        _iter_rows(input_path, batch_size=batch_size, max_rows=max_rows),
        SplitSummary(split=split, input_path=input_path, output_path=output_path),
        convert=lambda index, row: convert_row(row, split=split, index=index, system_prompt=system_prompt),
        snippet=_snippet,
        total=total,
        batch_size=batch_size,
        progress=progress,
    )


def stream_convert(
    rows: Iterator[tuple[int, Any]],
    summary: SplitSummary,
    *,
    convert: Callable[[int, Any], ConvertedRow],
    snippet: Callable[[Any], str],
    total: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> SplitSummary:
    """Convert ``(index, input row)`` pairs into ``summary.output_path`` batch by batch, so memory stays flat however
    large the input; rejections are counted in ``summary``.

    One loop for the training parquet and the FlashRAG eval jsonl (:mod:`search_r1_data.eval_sets`): both sides
    produce their rows through ``convert`` (built on :func:`convert_row`), so the files have the same form and the
    same accounting. The output is written to a unique temporary name in its folder and renamed at the end
    (:func:`search_r1_data.files.atomic_path`): an interrupted run never leaves a partial file that looks complete,
    and two runs never write into one file.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    output_path = Path(summary.output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    buffer: list[dict[str, Any]] = []
    with (
        atomic_path(output_path) as tmp_path,
        pq.ParquetWriter(tmp_path, OUTPUT_SCHEMA, write_page_checksum=True) as writer,
        tqdm(total=total, desc=summary.split, unit="rows", disable=not progress) as bar,
    ):
        for index, row in rows:
            summary.rows_in += 1
            bar.update(1)
            try:
                converted = convert(index, row)
            except RowRejected as exc:
                reason = str(exc)
                summary.rejected[reason] += 1
                if len(summary.rejected_examples) < MAX_EXAMPLES:
                    summary.rejected_examples.append((index, reason, snippet(row)))
                continue
            summary.per_source[converted.row["data_source"]] += 1
            summary.target_origin[converted.target_origin] += 1
            buffer.append(converted.row)
            if len(buffer) >= batch_size:
                _write(writer, buffer)
                summary.rows_out += len(buffer)
                buffer.clear()
        if buffer:
            _write(writer, buffer)
            summary.rows_out += len(buffer)
    logger.info(
        "%s: %d rows in, %d out, %d rejected", summary.split, summary.rows_in, summary.rows_out, summary.rows_rejected
    )
    return summary


def _write(writer: pq.ParquetWriter, rows: list[dict[str, Any]]) -> None:
    writer.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))


# ---------------------------------------------------------------------------------------------------------------------
# Input resolution


def resolve_input(split: str, *, input_dir: Path | None, hf_repo_id: str) -> Path:
    """The local path of ``<split>.parquet``: from ``input_dir`` when given, else downloaded from the Hub."""
    filename = f"{split}.parquet"
    if input_dir is not None:
        path = Path(input_dir) / filename
        if not path.is_file():
            raise DataError(f"{path} not found (--input_dir must hold <split>.parquet for every split)")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=hf_repo_id, filename=filename, repo_type="dataset"))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise DataError(f"could not download {filename} from dataset {hf_repo_id}: {exc}") from exc


def parse_splits(text: str) -> list[str]:
    """``"train,test"`` -> ``["train", "test"]``, rejecting empty or repeated names."""
    splits = [part.strip() for part in text.split(",")]
    if not all(splits):
        raise DataError(f"--splits has an empty name: {text!r}")
    if len(set(splits)) != len(splits):
        raise DataError(f"--splits repeats a name: {text!r}")
    bad = [name for name in splits if "/" in name or name.startswith(".")]
    if bad:
        raise DataError(f"--splits names must be plain file stems, got {bad}")
    return splits


def read_system_prompt(path: Path | None) -> str:
    """The system prompt text: the shared default, or the stripped contents of ``path``."""
    if path is None:
        return SYSTEM_PROMPT
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DataError(f"cannot read --system_prompt_file {path}: {exc}") from exc
    if not text:
        raise DataError(f"--system_prompt_file {path} is empty")
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Whole run


def resolve_inputs(splits: list[str], *, input_dir: Path | None, hf_repo_id: str) -> dict[str, Path]:
    """Every split's local input, resolved before any conversion so a typo or a missing file fails fast."""
    return {split: resolve_input(split, input_dir=input_dir, hf_repo_id=hf_repo_id) for split in splits}


def convert_splits(
    inputs: dict[str, Path],
    local_dir: Path,
    *,
    system_prompt: str = SYSTEM_PROMPT,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> list[SplitSummary]:
    """Convert each resolved ``<split>.parquet`` into ``local_dir/<split>.parquet``."""
    return [
        convert_file(
            path,
            Path(local_dir) / f"{split}.parquet",
            split=split,
            system_prompt=system_prompt,
            max_rows=max_rows,
            batch_size=batch_size,
            progress=progress,
        )
        for split, path in inputs.items()
    ]


def preprocess(
    splits: list[str],
    local_dir: Path,
    *,
    input_dir: Path | None = None,
    hf_repo_id: str = DEFAULT_HF_REPO_ID,
    system_prompt: str = SYSTEM_PROMPT,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> list[SplitSummary]:
    """Convert every split into ``local_dir/<split>.parquet``; inputs are all resolved first so a typo fails fast."""
    return convert_splits(
        resolve_inputs(splits, input_dir=input_dir, hf_repo_id=hf_repo_id),
        local_dir,
        system_prompt=system_prompt,
        max_rows=max_rows,
        batch_size=batch_size,
        progress=progress,
    )
