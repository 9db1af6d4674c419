"""How the training wrapper talks: one prefixed line per event, and the two ways a run ends early.

Every line starts with ``[with-retrieval]`` so that it stands out from what the retriever, the preflight and
training print into the same terminal; an error is one line on stderr that says what to do.
"""

from __future__ import annotations

import sys

PREFIX = "[with-retrieval]"


class LaunchError(Exception):
    """A mistake or failure that ends the run with exit code 1; ``lines`` are printed one per line on stderr."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: the run stops, cleans up and exits with ``code`` (128 + signal number)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stopped by a signal (exit code {code})")
        self.code = code


def log(message: str) -> None:
    """A progress line on stdout, flushed at once so that it comes before what a child prints next."""
    print(f"{PREFIX} {message}", flush=True)


def error(*lines: str) -> None:
    """The error lines of a LaunchError, on stderr."""
    for line in lines:
        print(f"{PREFIX} error: {line}", file=sys.stderr, flush=True)
