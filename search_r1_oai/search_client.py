"""Client of the retriever's ``POST /retrieve``: pooled, retried with backoff, failed over between replicas, formatted.

A search failure must never end a trajectory: :class:`SearchError` carries a one-line reason that the rollout
turns into the tool message, so the policy reads what went wrong and carries on. That reason is for the policy: it
says what happened in words and never names a URL, host or port (they are noise to the policy, and a trained policy
should not learn the cluster's addresses); :attr:`SearchError.detail` keeps them for metadata and logs.

Replicas: every attempt of one search steps through the configured replicas (:class:`~search_r1_oai.replicas
.AttemptPlan`) and one :class:`~search_r1_oai.replicas.ReplicaSet` per process and replica list, shared by every
rollout, remembers which replica refused a connection or answered 503, so with one replica of two down no search
fails.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from search_r1_oai.config import Settings
from search_r1_oai.errors import ToolError
from search_r1_oai.httpclients import (
    DEFAULT_POOLS,
    AttemptTimeout,
    ClientPools,
    ReplyTooLarge,
    RequestFailed,
    describe_error,
    error_detail,
    post_json,
)
from search_r1_oai.replicas import ReplicaSet
from search_r1_oai.text import clean_text

logger = logging.getLogger(__name__)

RETRIEVE_PATH = "/retrieve"
# At most one warning per this many seconds for failed searches; the others are counted into the next one.
LOG_EVERY_S = 10.0


class SearchError(ToolError):
    """The retriever could not answer (down, 5xx after retries, bad request, malformed reply).

    ``str(error)`` is the policy-facing reason (no URL, host or port); ``detail`` is the same with the URLs and the
    underlying error; ``attempts`` and ``replicas_tried`` (base URL of each attempt, in order) say what was tried.
    """

    def __init__(
        self, message: str, *, detail: str | None = None, attempts: int = 0, replicas_tried: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.detail = detail or message
        self.attempts = attempts
        self.replicas_tried = replicas_tried


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    title: str
    text: str


@dataclass(frozen=True)
class RetrievalResult:
    """Passages per query (in query order) plus what the call cost: its attempts and the replica (base URL) that
    answered."""

    passages: list[list[Passage]]
    latency_s: float
    attempts: int
    replica: str = ""


def passage_from_item(item: Any) -> Passage:
    """Read a result item; ``title``/``text`` when given, else split wiki-18 ``contents`` (``"Title"\\ntext``)."""
    if not isinstance(item, dict):
        raise SearchError(f"retriever returned a non-object passage: {item!r:.100}")
    title, text = item.get("title"), item.get("text")
    if isinstance(title, str) and isinstance(text, str):
        return Passage(title=clean_text(title), text=clean_text(text))
    contents = item.get("contents")
    if not isinstance(contents, str):
        raise SearchError("retriever passage has neither title/text nor contents")
    first, _, rest = clean_text(contents).partition("\n")
    return Passage(title=first.strip().strip('"'), text=rest.strip())


def passages_from_body(body: Any, count: int) -> list[list[Passage]]:
    """The ``result`` of a reply: one list of passages per query; :class:`SearchError` when it is not that."""
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list) or len(result) != count:
        raise SearchError(f"retriever reply has no 'result' list with one entry per query: {body!s:.200}")
    passages = []
    for found in result:
        if not isinstance(found, list):
            raise SearchError("retriever 'result' entry is not a list of passages")
        passages.append([passage_from_item(item) for item in found])
    return passages


def format_passages(passages: list[Passage]) -> str:
    """Numbered passages with titles, the form Search-R1 trains on."""
    if not passages:
        return "No passages found."
    return "\n".join(f"Doc {i} (Title: {p.title}) {p.text}" for i, p in enumerate(passages, start=1))


def format_search_results(queries: list[str], results: list[list[Passage]]) -> str:
    """One tool message for one call: plain numbered docs for one query, a header per query for several."""
    if len(queries) == 1:
        return format_passages(results[0])
    blocks = [
        f'Results for "{query}":\n{format_passages(found)}' for query, found in zip(queries, results, strict=True)
    ]
    return "\n\n".join(blocks)


# -- policy-facing reasons ---------------------------------------------------------------------------------------

_ADDRESS = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+"  # any URL
    r"|\[[0-9a-f.]*:[0-9a-f:.]*\](?::\d+)?"  # [IPv6](:port); a colon inside, so "queries[1]" is no address
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"  # IPv4(:port)
    r"|\blocalhost(?::\d+)?\b",
    re.IGNORECASE,
)


def scrub_addresses(text: str, hosts: tuple[str, ...] = ()) -> str:
    """``text`` with URLs, IP addresses, ``localhost`` and the given host names (each with its port) blanked."""
    text = _ADDRESS.sub("<address>", text)
    for host in hosts:
        text = re.sub(rf"\b{re.escape(host)}(?::\d+)?\b", "<address>", text, flags=re.IGNORECASE)
    return text


def server_reason(response: httpx.Response, limit: int = 300) -> str:
    """What the server said (:func:`~search_r1_oai.httpclients.error_detail`), on one line."""
    return " ".join(error_detail(response, limit=2000).split())[:limit]


REFUSED_KEY_HINT = "RETRIEVER_API_KEY / retriever_api_key to the key the retriever was started with"


def failure_reason(exc: BaseException, timeout_s: float) -> str:
    """What went wrong with the last attempt, in words the policy can read: no URL, host or port."""
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
        # Not retried (a 4xx): the same key would be refused again; the server's own text adds nothing.
        return f"the retriever refused the key (HTTP 401): set {REFUSED_KEY_HINT}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"it answered HTTP {exc.response.status_code}: {server_reason(exc.response)}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "cannot reach the server (the connection timed out)"
    if isinstance(exc, AttemptTimeout):
        return f"timed out: no reply within {exc.limit_s:.3g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out: no reply within {timeout_s:g} s"
    if isinstance(exc, httpx.ConnectError):
        return "cannot reach the server (connection refused or failed)"
    if isinstance(exc, httpx.TransportError):
        return f"the connection failed ({type(exc).__name__})"
    if isinstance(exc, ReplyTooLarge):
        return f"{exc} (SEARCH_R1_RETRIEVAL_MAX_REPLY_MB)"
    if isinstance(exc, ValueError):
        return "its reply is not JSON"
    return type(exc).__name__


# -- rate-limited warnings ---------------------------------------------------------------------------------------


class _ThrottledWarning:
    """One warning per ``every_s``; the failures in between are counted into the next one, so an outage seen by
    hundreds of rollouts logs a line every few seconds, not thousands."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._next_at = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def __call__(self, detail: str) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_at:
                self._held += 1
                return
            held, self._held, self._next_at = self._held, 0, now + self._every_s
        more = f" (+{held} more failed searches not logged)" if held else ""
        logger.warning("search failed: %s%s", detail, more)


_warn_search_failed = _ThrottledWarning(LOG_EVERY_S)


# -- the client --------------------------------------------------------------------------------------------------


class SearchClient:
    """Calls ``/retrieve`` on the configured replicas; one instance can serve many concurrent rollouts.

    ``replicas`` is what the searches of a process learn about ``settings.retrieval_urls`` (the search tool of a
    rollout context shares one set between all of its searches); a new set by default.
    """

    def __init__(
        self, settings: Settings, replicas: ReplicaSet | None = None, pools: ClientPools | None = None
    ) -> None:
        self._settings = settings
        self._replicas = replicas or ReplicaSet(settings.retrieval_urls)
        self._pools = pools or DEFAULT_POOLS
        self._hosts = tuple(sorted({urlsplit(url).hostname or "" for url in self._replicas.urls} - {""}))

    @property
    def replicas(self) -> ReplicaSet:
        """What this client's searches have learned about the replicas (shared with whoever passed it in)."""
        return self._replicas

    def _record_failure(self, url: str, exc: BaseException) -> None:
        self._replicas.record_failure(url.removesuffix(RETRIEVE_PATH), exc)

    async def retrieve(self, queries: list[str]) -> RetrievalResult:
        """Top-k passages for every query in one call; raises :class:`SearchError` with the reason on failure."""
        if not queries:
            raise SearchError("no queries to search")
        client = self._pools.client("retriever", self._settings, self._settings.retrieval_timeout_s)
        payload = {"queries": queries, "topk": self._settings.topk, "return_scores": False}
        # The key goes only where it is asked for: a retriever without RETRIEVER_API_KEY never sees one.
        key = self._settings.retriever_api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        plan = self._replicas.plan()
        started = time.perf_counter()
        try:
            reply = await post_json(
                client,
                lambda attempt: plan(attempt) + RETRIEVE_PATH,
                self._settings.retrieval_retries,
                self._settings,
                attempt_timeout_s=self._settings.retrieval_timeout_s,
                deadline_s=self._settings.retrieval_deadline_s,
                on_failure=self._record_failure,
                max_reply_bytes=int(self._settings.retrieval_max_reply_mb * 2**20),
                json=payload,
                headers=headers,
            )
        except RequestFailed as exc:
            raise self._failed(exc) from exc
        latency = time.perf_counter() - started
        replica = reply.url.removesuffix(RETRIEVE_PATH)
        self._replicas.record_success(replica)
        try:
            passages = passages_from_body(reply.body, len(queries))
        except SearchError as exc:
            raise self._malformed(exc, replica, reply.attempts) from None
        return RetrievalResult(passages=passages, latency_s=latency, attempts=reply.attempts, replica=replica)

    def _failed(self, exc: RequestFailed) -> SearchError:
        """The policy-facing error of a request that failed for good, logged (throttled) with its URLs."""
        cause = exc.__cause__ or exc
        reason = failure_reason(cause, self._settings.retrieval_timeout_s)
        message = f"retriever failed after {exc.attempts} attempt(s): {scrub_addresses(reason, self._hosts)}"
        tried = tuple(url.removesuffix(RETRIEVE_PATH) for url in exc.urls)
        detail = f"retriever failed after {exc.attempts} attempt(s) (tried {', '.join(tried)}): {describe_error(cause)}"
        _warn_search_failed(detail)
        return SearchError(message, detail=detail, attempts=exc.attempts, replicas_tried=tried)

    def _malformed(self, exc: SearchError, replica: str, attempts: int) -> SearchError:
        """A reply that came back but is not a result: the same error, with the attempts and the replica."""
        detail = f"{exc} (reply of {replica})"
        _warn_search_failed(detail)
        message = scrub_addresses(str(exc), self._hosts)
        return SearchError(message, detail=detail, attempts=attempts, replicas_tried=(replica,))
