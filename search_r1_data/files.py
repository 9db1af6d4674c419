"""A final name only for complete files, and one writer per output folder.

Every file this package writes goes through :func:`atomic_path`: a unique temporary name in the target's folder,
renamed over the target at the end. Two runs into one folder never share a temporary file (the old fixed
``train.parquet.tmp`` let a second run truncate the first one's file under it, leaving a ``train.parquet`` with
PAR1 at both ends and garbage between). :func:`folder_lock` lets ``data_preprocess.py`` refuse a second run into
the same folder, so files from two runs with different settings never mix either.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names the folder and what to do."""


def _create_unique(target: Path) -> Path:
    """Create an empty ``.NAME.XXXXXXXX.tmp`` next to ``target``, the name taken by no one else (O_EXCL).

    Not :func:`tempfile.mkstemp`: its files are 0600, and the renamed result must get the mode any new file gets
    (0666 less the umask), as the plain ``open`` it replaces gave.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name for {target} after 100 tries")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A fresh temporary path (``.NAME.XXXXXXXX.tmp``) in ``target``'s folder that becomes ``target`` on a clean exit.

    ``target`` is only ever absent, the old file or the complete new one. On any exception (Ctrl-C included) the
    temporary file is removed; one a SIGKILL left is swept by :func:`remove_stale_temps` under the folder's lock.
    """
    tmp = _create_unique(Path(target))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: Path, data: bytes) -> Path:
    """Replace ``target`` (its folder created if missing) with ``data`` through :func:`atomic_path`, flushed to disk
    before the rename, so a crash leaves the old file or the new one whole. Returns ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return target


def remove_stale_temps(target: Path) -> None:
    """Delete temporary files :func:`atomic_path` left for ``target`` in a killed run; call it only under the lock
    that keeps every other writer of ``target`` out."""
    target = Path(target)
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        logger.info("removing %s, left by an interrupted run", path)
        path.unlink(missing_ok=True)


@contextmanager
def folder_lock(directory: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``directory`` itself (no lock file is left behind), or raise :class:`FolderBusy` at
    once: waiting would only redo the other run's work. ``what`` names that work in the message."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FolderBusy(f"{what} into {directory}: wait for it to finish, or choose another folder") from exc
        except OSError as exc:  # e.g. NFS, where flock needs a descriptor open for writing, which a folder's cannot be
            logger.warning("cannot lock %s (%s): a second run into it will not be detected", directory, exc)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
