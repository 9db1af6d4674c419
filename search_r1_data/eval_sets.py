"""The Search-R1 benchmarks as slime-ready eval sets: FlashRAG jsonl -> ``<local_dir>/eval/<set>.parquet``.

Search-R1 reports exact match on seven QA sets, taken from the FlashRAG release (``RUC-NLPIR/FlashRAG_datasets`` on the
Hugging Face Hub, one folder per set holding ``<split>.jsonl``, one JSON object per line with ``id``, ``question`` and
``golden_answers``). Each line goes through :func:`search_r1_data.convert.convert_row`, the conversion the training data
goes through, so an eval row has exactly the training row's prompt, tools, label and metadata: what evaluation measures
is the trained behaviour, not a prompt the policy never saw. ``data_source`` is the set's name, so the evaluation
report and slime's ``eval/<set>/...`` metrics are per benchmark.

The run script (``run_qwen2.5-3B-it.sh``) evaluates on every ``*.parquet`` in ``EVAL_DIR``, ``DATA_DIR/eval`` by
default, named by file stem: writing ``<local_dir>/eval/<set>.parquet`` makes the two agree with no setting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search_r1_data.check import DEFAULT_BATCH_SIZE
from search_r1_data.convert import (
    ConvertedRow,
    DataError,
    RowRejected,
    SplitSummary,
    convert_row,
    shorten,
    stream_convert,
)
from search_r1_oai.prompts import SYSTEM_PROMPT

DEFAULT_EVAL_HF_REPO_ID = "RUC-NLPIR/FlashRAG_datasets"
EVAL_SUBDIR = "eval"

# Set -> the split Search-R1 evaluates on (its qa_search_test_merge.py: test where the release has one, else dev).
# HotpotQA, 2WikiMultihopQA and MuSiQue publish no test answers, so their dev split is the benchmark.
EVAL_SETS: dict[str, str] = {
    "nq": "test",
    "triviaqa": "test",
    "popqa": "test",
    "hotpotqa": "dev",
    "2wikimultihopqa": "dev",
    "musique": "dev",
    "bamboogle": "test",
}
ALL = "all"

# The summary's "target origin" for eval rows: FlashRAG has no reward_model, so golden_answers is the label by design
# (the training summary's "taken from golden_answers (reward_model had none)" line would read like a warning).
FLASHRAG_ORIGIN = "flashrag golden_answers"


def layout_hint() -> str:
    """The folder layout ``--input_dir`` must have for eval sets, for error messages and ``--help``."""
    by_split: dict[str, list[str]] = {}
    for name, split in EVAL_SETS.items():
        by_split.setdefault(split, []).append(name)
    splits = "; ".join(f"{split}: {', '.join(names)}" for split, names in by_split.items())
    return f"FlashRAG layout DIR/<set>/<split>.jsonl ({splits})"


def parse_eval_sets(text: str) -> list[str]:
    """``"nq,hotpotqa"`` -> ``["nq", "hotpotqa"]``; ``"all"`` is every set. Unknown, empty or repeated names are a
    :class:`DataError` naming the known sets, raised before anything is downloaded."""
    names = [part.strip().lower() for part in text.split(",")]
    if names == [ALL]:
        return list(EVAL_SETS)
    known = ", ".join(EVAL_SETS)
    if not all(names):
        raise DataError(f"--eval_sets has an empty name: {text!r} (known: {known}, or {ALL})")
    if len(set(names)) != len(names):
        raise DataError(f"--eval_sets repeats a name: {text!r}")
    unknown = [name for name in names if name not in EVAL_SETS]
    if unknown:
        raise DataError(f"--eval_sets: unknown set(s) {', '.join(unknown)}; known: {known} (or {ALL})")
    return names


def eval_filename(name: str) -> str:
    """The set's file inside the FlashRAG release (and inside ``--input_dir``): ``<set>/<split>.jsonl``."""
    return f"{name}/{EVAL_SETS[name]}.jsonl"


def resolve_eval_input(name: str, *, input_dir: Path | None, hf_repo_id: str) -> Path:
    """The local path of the set's jsonl: ``input_dir/<set>/<split>.jsonl``, else downloaded (or taken from the
    Hugging Face cache, which ``HF_HUB_OFFLINE=1`` restricts it to)."""
    filename = eval_filename(name)
    if input_dir is not None:
        path = Path(input_dir) / filename
        if not path.is_file():
            raise DataError(f"{path} not found: --input_dir must hold eval sets in the {layout_hint()}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=hf_repo_id, filename=filename, repo_type="dataset"))
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        message = " ".join(str(exc).split())
        raise DataError(
            f"could not download {filename} from dataset {hf_repo_id}: {message} "
            f"(offline: pass --input_dir with the {layout_hint()})"
        ) from exc


def resolve_eval_inputs(names: list[str], *, input_dir: Path | None, hf_repo_id: str) -> dict[str, Path]:
    """Every set's jsonl, resolved before any conversion so a missing file fails before minutes of work."""
    return {name: resolve_eval_input(name, input_dir=input_dir, hf_repo_id=hf_repo_id) for name in names}


def _count_lines(path: Path) -> int:
    """Lines in ``path`` for the progress bar's total; a byte scan, cheap next to the conversion."""
    count = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


def iter_jsonl(path: Path, *, max_rows: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(index, line)`` for each non-blank line, numbered from 0, at most ``max_rows`` of them.

    Lines stay bytes: decoding and JSON parsing happen in :func:`parse_line`, inside the conversion, so a bad line is
    one rejected row in the summary rather than the end of the run. Blank lines (a trailing newline) are not rows.
    """
    index = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            if max_rows is not None and index >= max_rows:
                return
            yield index, line
            index += 1


def parse_line(line: bytes) -> dict[str, Any]:
    """One FlashRAG jsonl line as a dict, or :class:`RowRejected` saying why it is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowRejected("line is not UTF-8 text") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowRejected("line is not valid JSON") from exc
    if not isinstance(value, dict):
        raise RowRejected(f"line is a JSON {type(value).__name__}, not an object")
    return value


def convert_line(line: bytes, *, name: str, split: str, index: int, system_prompt: str = SYSTEM_PROMPT) -> ConvertedRow:
    """One FlashRAG line -> the training row form (:func:`convert_row`), labelled by ``golden_answers`` and with
    ``data_source`` = the set's name whatever the line says (the metrics are keyed by it)."""
    record = parse_line(line)
    row = {"question": record.get("question"), "golden_answers": record.get("golden_answers"), "data_source": name}
    converted = convert_row(row, split=split, index=index, system_prompt=system_prompt)
    return dataclasses.replace(converted, target_origin=FLASHRAG_ORIGIN)


def _line_snippet(line: bytes) -> str:
    return shorten(line.decode("utf-8", errors="replace").strip())


def convert_eval_set(
    name: str,
    input_path: Path,
    output_path: Path,
    *,
    system_prompt: str = SYSTEM_PROMPT,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> SplitSummary:
    """Stream one set's jsonl into ``output_path``; the summary is labelled ``<set>/<split>``."""
    if max_rows is not None and max_rows < 0:
        raise DataError(f"eval_max_samples must be >= 0, got {max_rows}")
    split = EVAL_SETS[name]
    input_path, output_path = Path(input_path), Path(output_path)
    total = _count_lines(input_path)
    if max_rows is not None:
        total = min(total, max_rows)
    return stream_convert(
        iter_jsonl(input_path, max_rows=max_rows),
        SplitSummary(split=f"{name}/{split}", input_path=input_path, output_path=output_path),
        convert=lambda index, line: convert_line(
            line, name=name, split=split, index=index, system_prompt=system_prompt
        ),
        snippet=_line_snippet,
        total=total,
        batch_size=batch_size,
        progress=progress,
    )


def convert_eval_sets(
    inputs: dict[str, Path],
    local_dir: Path,
    *,
    system_prompt: str = SYSTEM_PROMPT,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> list[SplitSummary]:
    """Convert each resolved set into ``local_dir/eval/<set>.parquet`` (the run script's default ``EVAL_DIR``)."""
    return [
        convert_eval_set(
            name,
            path,
            Path(local_dir) / EVAL_SUBDIR / f"{name}.parquet",
            system_prompt=system_prompt,
            max_rows=max_rows,
            batch_size=batch_size,
            progress=progress,
        )
        for name, path in inputs.items()
    ]
