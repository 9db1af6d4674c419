"""The eval sets of a training run: every ``*.parquet`` in ``EVAL_DIR`` is one set, named by its file name.

Each set is checked before Ray is touched (a parquet file with the columns slime's key flags name, and rows), and
capped without a copy: slime reads ``PATH@[start:end]`` as those rows of PATH (slime/utils/data.py, read_file), on
whichever node its rollout manager runs. The paths go into an ``--eval-config`` file, not onto the job's command
line, which Ray runs through a shell (where ``[0:500]`` would be a glob).

Without pyarrow (only a dry run allows that: a login node's python3 may lack it) a set is checked for the parquet
magic alone, and the description says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_r1_oai.columns import SLIME_KEY_FLAGS

# What slime reads from each row of an eval set: the columns its key flags name (the eval flags are the same keys).
NEEDED_COLUMNS: tuple[str, ...] = tuple(SLIME_KEY_FLAGS.values())
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MAGIC = b"PAR1"


class EvalSetError(ValueError):
    """An eval set that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class EvalSets:
    """The sets as slime's ``--eval-config`` lists them, and one description of each for the log."""

    datasets: tuple[dict[str, str], ...]
    described: tuple[str, ...]

    def config(self) -> dict[str, Any]:
        """The ``--eval-config`` content (JSON is YAML)."""
        return {"eval": {"datasets": [dict(d) for d in self.datasets]}}


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None
    return pq


def _check_magic(path: Path, where: str) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            tail = f.read(4)
    except OSError as error:
        raise EvalSetError(f"{where} cannot be read: {error.strerror or error}") from None
    if head != _MAGIC or tail != _MAGIC:
        raise EvalSetError(f"{where} is not a parquet file: rebuild it with data_preprocess.py --eval_sets")


def _rows(pq: Any, path: Path, where: str) -> int:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # ArrowInvalid and kin: the message says what is wrong
        raise EvalSetError(f"{where} cannot be read as parquet: {error}") from None
    names = list(parquet.schema_arrow.names)
    missing = [name for name in NEEDED_COLUMNS if name not in names]
    if missing:
        raise EvalSetError(
            f"{where} lacks column(s) {', '.join(missing)} (it has {', '.join(names)}): make it with"
            " data_preprocess.py --eval_sets, which writes slime-ready sets"
        )
    rows = int(parquet.metadata.num_rows)
    if rows == 0:
        raise EvalSetError(f"{where} has no rows")
    return rows


def find_eval_sets(folder: Path, cap: int, pyarrow_required: bool, pq: Any = None) -> EvalSets:
    """The sets in ``folder``, each capped at ``cap`` rows (0: all). Without pyarrow, ``pyarrow_required`` (a live
    run) is an error; a dry run describes the sets it could not open."""
    pq = pq if pq is not None else _pyarrow_parquet()
    if pq is None and pyarrow_required:
        raise EvalSetError("python3 cannot import pyarrow to check the eval sets: run in slime's image")
    datasets: list[dict[str, str]] = []
    described: list[str] = []
    for path in sorted(folder.glob("*.parquet")):
        where = f"eval set {path}"
        if not _SET_NAME.fullmatch(path.stem):
            raise EvalSetError(
                f"{where}: its file name is the set's name in eval/<name>/... metrics; use letters, digits, _.+-"
            )
        _check_magic(path, where)
        if pq is None:
            rows_text = f"up to {cap} rows" if cap else "all rows"
            described.append(f"{path.stem} ({rows_text}; not opened: python3 has no pyarrow)")
        else:
            rows = _rows(pq, path, where)
            described.append(f"{path.stem} ({f'first {cap} of {rows}' if 0 < cap < rows else f'all {rows}'} rows)")
        datasets.append({"name": path.stem, "path": f"{path}@[0:{cap}]" if cap else str(path)})
    return EvalSets(tuple(datasets), tuple(described))
