"""Interchangeable servers shared by every rollout of a process: the retriever replicas, the policy workers.

Why a shared view: with one replica of two dead, a retry that picks a replica at random (or from a counter shared
by hundreds of concurrent rollouts) lands on the dead one about half the time, and four such coin flips still fail
a few percent of searches for good. Instead each call steps through the replicas in order, and a replica that
refused a connection or answered 503 is skipped by every caller for a few seconds, so one caller's discovery saves
the others their attempts.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

import httpx

DEFAULT_SKIP_S = 5.0


def means_replica_down(exc: BaseException) -> bool:
    """A refused or failed connection, or a 503 (overloaded or still loading): try the others first for a while.

    Timeouts do not count: a slow replica is busy, and moving its load to the others would make them slow too.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 503
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


class ReplicaSet:
    """Base URLs in a fixed order plus, per URL, until when it is skipped.

    :meth:`order` gives each call its attempt order: a rotation (so calls spread over the replicas) with the skipped
    replicas moved to the end, still tried when nothing else is left.
    """

    def __init__(
        self, urls: Iterable[str], *, skip_s: float = DEFAULT_SKIP_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._urls: tuple[str, ...] = ()
        self._skip_until: dict[str, float] = {}
        self._rotation = itertools.count()
        self._skip_s = skip_s
        self._clock = clock
        self.update(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    def update(self, urls: Iterable[str]) -> None:
        """Replace the list (e.g. the router's current workers); marks of URLs still listed are kept."""
        self._urls = tuple(dict.fromkeys(url.rstrip("/") for url in urls))
        self._skip_until = {url: until for url, until in self._skip_until.items() if url in self._urls}

    def is_skipped(self, url: str) -> bool:
        until = self._skip_until.get(url)
        if until is None:
            return False
        if until <= self._clock():
            del self._skip_until[url]
            return False
        return True

    def order(self) -> list[str]:
        """Every replica once: the next rotation, usable ones first, skipped ones after."""
        if not self._urls:
            return []
        start = next(self._rotation) % len(self._urls)
        rotated = self._urls[start:] + self._urls[:start]
        usable = [url for url in rotated if not self.is_skipped(url)]
        return usable + [url for url in rotated if url not in usable]

    def mark_down(self, url: str) -> None:
        """Skip ``url`` for everyone for the next few seconds."""
        if url in self._urls:
            self._skip_until[url] = self._clock() + self._skip_s

    def record_failure(self, url: str, exc: BaseException) -> None:
        """Mark ``url`` down when ``exc`` says it cannot serve (see :func:`means_replica_down`)."""
        if means_replica_down(exc):
            self.mark_down(url)
