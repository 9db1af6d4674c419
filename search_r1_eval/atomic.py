"""Write a final file so that nobody ever sees it half written: a unique temporary name in the target folder, then
``os.replace`` (atomic on one filesystem). Two writers of the same file each write their own temporary; the last
rename wins whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step; on any error the old file (if any) is untouched and the
    temporary is removed. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def remove_stale_temps(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporaries :func:`write_atomic` left for ``names`` in ``folder`` when a run was killed
    mid-write; call it only while holding the lock that keeps every other writer of the folder out."""
    removed = []
    for name in names:
        for path in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
