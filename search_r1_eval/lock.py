"""One writer per ``--out``: an exclusive ``flock`` on ``OUT/evaluate.lock``, which names its holder.

The kernel drops a ``flock`` when its process dies, however it dies, so a lock whose file still names a holder
but that nobody holds was left by a killed run: it is taken over, with a message. The file is emptied (not removed)
on a clean exit: removing it would let a second run lock a file that a third has already replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "evaluate.lock"


class OutLocked(RuntimeError):
    """Another live evaluate.py holds the folder; the message names it."""


def _describe(raw: bytes) -> str:
    """The holder named in a lock file, checked before it is trusted (another process wrote it)."""
    try:
        holder = json.loads(raw.decode("utf-8"))
        pid, host = holder["pid"], holder["host"]
        if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(host, str):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        return "a process that has not written its PID yet" if not raw.strip() else "an unreadable lock file"
    since = holder.get("since")
    return f"PID {pid} on {host}" + (f", started {since}" if isinstance(since, str) else "")


class OutLock:
    """Hold ``folder/evaluate.lock`` from :meth:`acquire` to :meth:`release` (or the end of a ``with``)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; raises :class:`OutLocked` while another process holds it. Returns a message when a
        stale lock (its holder died without releasing it) was taken over, else ``None``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise OutLocked(
                f"{self.path.parent} is being written by another evaluate.py ({holder}; lock {self.path}): "
                "wait for it to finish or pass another --out"
            ) from None
        previous = os.pread(fd, 4096, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        if previous.strip():
            return f"taking over a stale lock in {self.path.parent}: {_describe(previous)} left it and is no longer running"
        return None

    def release(self) -> None:
        """Empty the file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
