"""Interchangeable servers shared by every rollout of a process: the retriever replicas, the policy workers.

Why a shared view: with one replica of two dead, a retry that picks a replica at random (or from a counter shared
by hundreds of concurrent rollouts) lands on the dead one about half the time, and four such coin flips still fail
a few percent of searches for good. Instead each call steps through the replicas in order, and a replica that
refused a connection or answered 503 is skipped by every caller for a few seconds, so one caller's discovery saves
the others their attempts.

Why one probe: when the few seconds run out, the first caller to ask tries that replica first and everyone else
keeps skipping it until that probe has failed (skipped again) or succeeded (back in the rotation). Without it,
every call started in the moment after the skip ends would go there: harmless for a refused connection (it fails
in a millisecond), but a host that drops packets holds each of them for the whole connect timeout.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

import httpx

DEFAULT_SKIP_S = 5.0

logger = logging.getLogger(__name__)


def means_replica_down(exc: BaseException) -> bool:
    """A refused or failed connection, or a 503 (overloaded or still loading): try the others first for a while.

    Timeouts do not count: a slow replica is busy, and moving its load to the others would make them slow too.
    """
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 503
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def failure_name(exc: BaseException) -> str:
    """A short name for a log line: ``HTTP 503``, ``ConnectError``."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


class ReplicaSet:
    """Base URLs in a fixed order plus, per URL, until when it is skipped.

    :meth:`order` gives each call its attempt order: a rotation (so calls spread over the replicas) with the skipped
    replicas moved to the end, still tried when nothing else is left. A replica whose skip has run out is first in
    exactly one caller's order (its probe) and stays skipped for the others until :meth:`record_success` or a new
    :meth:`mark_down`; a probe that reports neither within ``skip_s`` puts it back in the rotation too.

    Safe to share between threads: every read-modify-write of the marks holds one lock.
    """

    def __init__(
        self, urls: Iterable[str], *, skip_s: float = DEFAULT_SKIP_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._urls: tuple[str, ...] = ()
        self._skip_until: dict[str, float] = {}  # marked down: skipped until then, then due for a probe
        self._probe_until: dict[str, float] = {}  # one caller is probing it: the others skip it until then
        self._rotation = itertools.count()
        self._skip_s = skip_s
        self._clock = clock
        self._lock = threading.Lock()
        self.update(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    def update(self, urls: Iterable[str]) -> None:
        """Replace the list (e.g. the router's current workers); marks of URLs still listed are kept."""
        with self._lock:
            self._urls = tuple(dict.fromkeys(url.rstrip("/") for url in urls))
            self._skip_until = {url: until for url, until in self._skip_until.items() if url in self._urls}
            self._probe_until = {url: until for url, until in self._probe_until.items() if url in self._urls}

    def is_skipped(self, url: str) -> bool:
        """Marked down, due for a probe nobody has started yet, or being probed by another caller."""
        with self._lock:
            return self._skipped(url, self._clock())

    def _skipped(self, url: str, now: float) -> bool:
        probe_until = self._probe_until.get(url)
        if probe_until is not None:
            if probe_until > now:
                return True
            # The probe reported no failure for a whole skip period: the replica is back.
            del self._probe_until[url]
            return False
        return url in self._skip_until

    def _claim_probe(self, url: str, now: float) -> bool:
        """Make this caller the probe of ``url`` when its skip has run out and nobody probes it yet."""
        until = self._skip_until.get(url)
        if until is None or until > now or url in self._probe_until:
            return False
        del self._skip_until[url]
        self._probe_until[url] = now + self._skip_s
        return True

    def order(self) -> list[str]:
        """Every replica once: a probe this caller was given first, then the next rotation's usable replicas,
        then the skipped ones."""
        if not self._urls:
            return []
        with self._lock:
            now = self._clock()
            start = next(self._rotation) % len(self._urls)
            rotated = self._urls[start:] + self._urls[:start]
            probes = [url for url in rotated if self._claim_probe(url, now)]
            usable = [url for url in rotated if url not in probes and not self._skipped(url, now)]
            return probes + usable + [url for url in rotated if url not in probes and url not in usable]

    def mark_down(self, url: str, reason: str = "") -> None:
        """Skip ``url`` for everyone for the next few seconds (a probe that failed: again)."""
        with self._lock:
            if url not in self._urls:
                return
            was_up = url not in self._skip_until and url not in self._probe_until
            self._probe_until.pop(url, None)
            self._skip_until[url] = self._clock() + self._skip_s
        if was_up:
            logger.warning("replica %s is skipped for %.0f s%s", url, self._skip_s, f" ({reason})" if reason else "")

    def record_failure(self, url: str, exc: BaseException) -> None:
        """Mark ``url`` down when ``exc`` says it cannot serve (see :func:`means_replica_down`)."""
        if means_replica_down(exc):
            self.mark_down(url, failure_name(exc))

    def record_success(self, url: str) -> None:
        """``url`` answered: whatever marked it down is over, so it rejoins the rotation at once."""
        with self._lock:
            was_down = self._skip_until.pop(url, None) is not None
            was_probed = self._probe_until.pop(url, None) is not None
        if was_down or was_probed:
            logger.warning("replica %s answers again", url)

    def plan(self) -> AttemptPlan:
        """The attempt order of one call (see :class:`AttemptPlan`)."""
        return AttemptPlan(self)


class AttemptPlan:
    """Which replica each attempt of one call goes to: a callable ``attempt index -> base URL``.

    The first attempt takes the head of :meth:`ReplicaSet.order`. Each retry looks again at what every caller has
    learned since and takes, among the replicas not skipped now (all of them when every one is), the one this call
    has tried least, earliest in its order first: with one replica of two dead, a call that met the dead one moves
    to the live one and stays there, instead of flipping a coin per attempt.
    """

    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas
        self._order = replicas.order()
        if not self._order:
            raise ValueError("no replica to send the request to")
        self._uses: Counter[str] = Counter()
        self.tried: list[str] = []

    def __call__(self, attempt: int) -> str:
        url = self._order[0] if attempt == 0 else self._least_tried_usable()
        self._uses[url] += 1
        self.tried.append(url)
        return url

    def _least_tried_usable(self) -> str:
        usable = [url for url in self._order if not self._replicas.is_skipped(url)] or self._order
        return min(usable, key=lambda url: self._uses[url])
