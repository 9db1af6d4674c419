"""Processes by PID as the wrapper needs them: is it (still) the very process it started, and stop it.

A PID alone can be reused by an unrelated process once the first one ends, so what the wrapper records is the PID
plus its start time (field 22 of /proc/PID/stat); a recorded process is "ours" only while both match. A zombie
counts as ended: it has exited and its parent just has not reaped it yet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from search_r1_launch.wrapper_log import log

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None for no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """The start time of a running, non-zombie process (clock ticks since boot), or None."""
    fields = _stat_fields(pid) if pid > 0 else None
    if not fields or fields[0] == "Z":
        return None
    return fields[19]


def ours(pid: int | None, started: str | None) -> bool:
    """True while the process recorded as ``pid`` started at ``started`` still runs (a reused PID has another)."""
    return bool(pid and started) and start_time(pid or 0) == started


def running(pid: int) -> bool:
    """Whether ``pid`` runs (negative: whether any process of group ``-pid`` does), zombies not counted."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    if pid > 0:
        return start_time(pid) is not None
    group = str(-pid)
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[2] == group and fields[0] != "Z":
                return True
    return False


def stop(pid: int, what: str, grace_s: float) -> None:
    """SIGTERM ``pid`` (negative: its process group), SIGKILL if it still runs after ``grace_s`` seconds."""
    if not running(pid):
        return
    log(f"stopping {what} (pid {abs(pid)})")
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not running(pid):
            return
        time.sleep(0.5)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
