"""Fetch a file only when it is not already complete, then verify its size against the Hub's."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .files import DownloadError

# Called as checkpoint(step, file name) after each durable step; lets callers trace progress or stop at a step.
Checkpoint = Callable[[str, str], None]


def no_checkpoint(step: str, name: str) -> None:
    """The default checkpoint: do nothing."""


def check_size(path: Path, expected: int | None) -> None:
    """Raise a clear error when ``path`` does not have the ``expected`` size (None: nothing to compare with)."""
    actual = path.stat().st_size
    if expected is not None and actual != expected:
        raise DownloadError(
            f"{path} is {actual} bytes but the Hub lists {expected}: the download is incomplete or corrupt. "
            f"Delete {path.name} and rerun download.py to fetch it again."
        )


def ensure_file(
    directory: Path,
    name: str,
    fetch: Callable[[str], Path],
    expected: int | None,
    checkpoint: Checkpoint = no_checkpoint,
) -> int:
    """Make ``directory/name`` the complete file and return its size; ``fetch(name)`` runs unless it already is.

    A file already present at the expected size is trusted without a network call; with no expected size the
    fetcher decides (huggingface_hub skips files whose recorded etag still matches).
    """
    path = directory / name
    if not (path.exists() and expected is not None and path.stat().st_size == expected):
        fetched = Path(fetch(name))
        if not fetched.exists():
            raise DownloadError(f"fetching {name} reported {fetched}, which does not exist")
        if fetched.resolve() != path.resolve():
            os.replace(fetched, path)
        checkpoint("fetched", name)
    check_size(path, expected)
    return path.stat().st_size
