"""Crash-safe file primitives: a final name only for complete files, atomic JSON, chunked append from a known offset,
streaming gunzip, folder locks.

Every function here leaves either the old or the new state on disk (never a half-written manifest) and
fsyncs before the caller records progress, so a state file never claims bytes the disk may not hold.
build_index.py uses :func:`atomic_path` and :func:`folder_lock` too (this folder's one copy of them).
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import secrets
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024 * 1024

# Called with the number of bytes just written; lets callers observe (or interrupt) long copies.
OnChunk = Callable[[int], None]


class DownloadError(RuntimeError):
    """A problem the user must act on; the message says what is wrong and what to do."""


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock (:func:`folder_lock`); the message names the work and the folder."""


def fsync_dir(directory: Path) -> None:
    """Make a rename/unlink in ``directory`` durable before anything is recorded about it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_pattern(target: Path) -> str:
    """The glob that matches every temporary name :func:`atomic_path` may give ``target``."""
    return f".{target.name}.*.tmp"


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
    """A fresh temporary path in ``target``'s folder; on a clean exit it becomes ``target`` (``os.replace``).

    The name is unique (``.NAME.XXXXXXXX.tmp``), so two writers of one target never share a temporary file, and
    ``target`` is only ever absent, the old file or the complete new one. On any exception, Ctrl-C included, the
    temporary file is removed; a SIGKILL leaves it, and a later run holding the folder's lock may sweep it with
    :func:`remove_stale_temps`.
    """
    tmp = _create_unique(Path(target))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(target: Path) -> None:
    """Delete temporary files :func:`atomic_path` left for ``target`` when a run was killed.

    Only call this while holding the lock that keeps every other writer of ``target`` out.
    """
    for path in Path(target).parent.glob(temp_name_pattern(Path(target))):
        logger.info("removing %s, left by an interrupted run", path)
        path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so that a reader sees the old or the new version, never a mix."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise DownloadError(f"{path} is not valid JSON ({exc}); delete it and rerun") from exc


def append_file(
    src: Path, dst: Path, offset: int, *, desc: str, chunk_bytes: int = CHUNK_BYTES, on_chunk: OnChunk | None = None
) -> int:
    """Copy ``src`` into ``dst`` starting at byte ``offset`` and fsync; return the new length of ``dst``.

    ``dst`` is truncated to ``offset`` first: bytes an interrupted earlier attempt wrote past the committed
    length are dropped, so re-running an append can never duplicate data.
    """
    have = dst.stat().st_size if dst.exists() else 0
    if have < offset:
        raise DownloadError(f"{dst} holds {have} bytes but {offset} were recorded as merged; delete it and rerun")
    total = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "r+b" if dst.exists() else "wb") as fout:
        fout.truncate(offset)
        fout.seek(offset)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
            while chunk := fin.read(chunk_bytes):
                fout.write(chunk)
                bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
        return fout.tell()


def gunzip_file(
    src: Path, dst: Path, *, desc: str, chunk_bytes: int = CHUNK_BYTES, on_chunk: OnChunk | None = None
) -> int:
    """Decompress ``src`` into ``dst`` in chunks (constant memory), fsync, and return the decompressed size.

    gzip checks the CRC and length stored in the trailer, so a truncated or corrupt archive raises here.
    """
    total = src.stat().st_size
    try:
        with (
            open(src, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as fin,
            open(dst, "wb") as fout,
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar,
        ):
            while chunk := fin.read(chunk_bytes):
                fout.write(chunk)
                bar.update(raw.tell() - bar.n)
                if on_chunk is not None:
                    on_chunk(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
            return fout.tell()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        dst.unlink(missing_ok=True)
        raise DownloadError(
            f"{src} is truncated or corrupt ({exc}); delete it and rerun download.py to fetch it again"
        ) from exc


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path`` so two downloads never work on the same folder at once."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DownloadError(f"another download is running in {path.parent} (lock {path} is held)") from exc
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextmanager
def folder_lock(directory: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``directory`` itself (no lock file is left behind), or refuse at once.

    ``what`` names the work in the refusal, e.g. "another build_index.py is writing shards".
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FolderBusy(f"{what} in {directory}: wait for it to finish, or use another folder") from exc
        except OSError as exc:  # e.g. NFS, where flock needs a descriptor open for writing, which a folder's cannot be
            logger.warning("cannot lock %s (%s): a second run into it will not be detected", directory, exc)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
