"""Join split index parts into one file without ever holding all parts and the result at once.

The first part is renamed into place (no copy), every later part is appended in chunks and deleted as soon
as it is in; peak disk is the final file plus one part. A small state file next to the target records, after
each durable step, which parts are in and how many bytes they make. Any crash leaves one of these states, and
a rerun continues from it:

- a part half appended: the state's ``length`` is unchanged, so the rerun truncates back to it and appends again
  (bytes are never appended twice);
- the first part renamed but not yet recorded: its recorded size matches the partial file, so it counts as in;
- a part recorded but not yet deleted: it is deleted on the rerun;
- the partial file renamed to the target but the caller has not yet written its manifest: the target's size is
  checked against the state and accepted.

The target only ever appears complete: the parts are joined under ``NAME.partial`` and renamed at the end. That name
is fixed, not unique, because it is the resume state a rerun continues from; two merges never share it since the
caller (:func:`.pipeline.run_download`) holds the folder's lock for the whole download. The state file is replaced
through a unique temporary name (:func:`.files.write_json_atomic`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fetching import Checkpoint, ensure_file, no_checkpoint
from .files import CHUNK_BYTES, DownloadError, OnChunk, append_file, fsync_dir, read_json, write_json_atomic
from .index_check import flat_index_problem

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".merge-state.json"
PARTIAL_SUFFIX = ".partial"


@dataclass
class MergeState:
    """Progress of one merge: ``parts[:merged]`` are fully inside the partial file, which is ``length`` bytes."""

    parts: list[str]
    sizes: dict[str, int] = field(default_factory=dict)
    merged: int = 0
    length: int = 0

    @classmethod
    def load(cls, path: Path) -> MergeState | None:
        data = read_json(path)
        if data is None:
            return None
        try:
            return cls(**data)
        except TypeError as exc:
            raise DownloadError(f"{path} is not a merge state written by this tool; delete it and rerun") from exc

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


def state_path(directory: Path, target_name: str) -> Path:
    return directory / (target_name + STATE_SUFFIX)


def _progress_lost(state: MergeState, partial: Path, target: Path) -> bool:
    if state.merged == 0:
        return False
    if state.merged == len(state.parts) and target.exists() and target.stat().st_size == state.length:
        return False
    return not partial.exists() or partial.stat().st_size < state.length


def merge_parts(
    directory: Path,
    parts: list[str],
    target_name: str,
    *,
    fetch_part: Callable[[str], Path],
    expected_size: Callable[[str], int | None],
    keep_parts: bool = False,
    checkpoint: Checkpoint = no_checkpoint,
    chunk_bytes: int = CHUNK_BYTES,
    on_chunk: OnChunk | None = None,
) -> int:
    """Fetch and join ``parts`` (in order) into ``directory/target_name``; return its size.

    ``fetch_part(name)`` downloads a part to ``directory/name`` (or returns where it put it); it is called only
    for parts not already there at their ``expected_size(name)`` (the Hub's size, None when unknown).
    The state file stays behind on success: delete it with :func:`clear_state` once the result is recorded.
    """
    if not parts:
        raise DownloadError("no index parts given")
    target = directory / target_name
    partial = directory / (target_name + PARTIAL_SUFFIX)
    spath = state_path(directory, target_name)
    state = MergeState.load(spath)
    if state is not None and state.parts != list(parts):
        raise DownloadError(
            f"{spath} records a merge of {state.parts}, not {list(parts)}: delete it and {partial.name} and rerun"
        )
    if state is not None and _progress_lost(state, partial, target):
        logger.warning("%s is missing or shorter than recorded in %s: starting the merge over", partial, spath.name)
        state = None
    if state is None:
        state = MergeState(parts=list(parts))
        state.save(spath)

    if not keep_parts:
        for name in parts[: state.merged]:
            (directory / name).unlink(missing_ok=True)

    while state.merged < len(parts):
        name = parts[state.merged]
        part = directory / name
        first_already_moved = (
            state.merged == 0
            and name in state.sizes
            and not part.exists()
            and partial.exists()
            and partial.stat().st_size == state.sizes[name]
        )
        if not first_already_moved:
            state.sizes[name] = ensure_file(directory, name, fetch_part, expected_size(name), checkpoint)
            state.save(spath)
            if state.merged == 0 and not keep_parts:
                os.replace(part, partial)
                fsync_dir(directory)
                checkpoint("moved", name)
            else:
                new_length = append_file(
                    part, partial, state.length, desc=f"merge {name}", chunk_bytes=chunk_bytes, on_chunk=on_chunk
                )
                if new_length != state.length + state.sizes[name]:
                    raise DownloadError(f"appending {part} to {partial} gave {new_length} bytes; disk full?")
                checkpoint("appended", name)
        state.length += state.sizes[name]
        state.merged += 1
        state.save(spath)
        checkpoint("recorded", name)
        if not keep_parts:
            part.unlink(missing_ok=True)
            fsync_dir(directory)
            checkpoint("deleted", name)

    if partial.exists():
        _check_merged(partial, state, expected_size, spath)
        os.replace(partial, target)
        fsync_dir(directory)
        checkpoint("renamed", target_name)
    if not target.exists() or target.stat().st_size != state.length:
        raise DownloadError(f"{target} does not hold the {state.length} merged bytes; delete it and {spath} and rerun")
    return state.length


def _check_merged(partial: Path, state: MergeState, expected_size: Callable[[str], int | None], spath: Path) -> None:
    size = partial.stat().st_size
    hub_sizes = [expected_size(name) for name in state.parts]
    expected_total = sum(s for s in hub_sizes if s is not None) if None not in hub_sizes else None
    problem = None
    if size != state.length:
        problem = f"{partial} is {size} bytes but the merged parts total {state.length}"
    elif expected_total is not None and size != expected_total:
        problem = f"{partial} is {size} bytes but the Hub parts total {expected_total}"
    else:
        problem = flat_index_problem(partial)
    if problem:
        raise DownloadError(f"{problem}. Delete {partial.name} and {spath.name} and rerun to download the parts again.")


def clear_state(directory: Path, target_name: str) -> None:
    """Forget a finished merge (call after the result has been recorded elsewhere)."""
    state_path(directory, target_name).unlink(missing_ok=True)
