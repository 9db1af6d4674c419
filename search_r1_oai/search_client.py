"""Client of the retriever's ``POST /retrieve``: pooled, retried with backoff, balanced over replicas, formatted.

A search failure must never end a trajectory: :class:`SearchError` carries a one-line reason that the rollout
turns into the tool message, so the policy reads what went wrong and carries on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from search_r1_oai.config import Settings
from search_r1_oai.httpclients import RequestFailed, post_json, shared_client

_ROUND_ROBIN = itertools.count()


class SearchError(RuntimeError):
    """The retriever could not answer (down, 5xx after retries, bad request, malformed reply)."""


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    title: str
    text: str


@dataclass(frozen=True)
class RetrievalResult:
    """Passages per query (in query order) plus what the call cost."""

    passages: list[list[Passage]]
    latency_s: float
    attempts: int


def passage_from_item(item: Any) -> Passage:
    """Read a result item; ``title``/``text`` when given, else split wiki-18 ``contents`` (``"Title"\\ntext``)."""
    if not isinstance(item, dict):
        raise SearchError(f"retriever returned a non-object passage: {item!r:.100}")
    title, text = item.get("title"), item.get("text")
    if isinstance(title, str) and isinstance(text, str):
        return Passage(title=title, text=text)
    contents = item.get("contents")
    if not isinstance(contents, str):
        raise SearchError("retriever passage has neither title/text nor contents")
    first, _, rest = contents.partition("\n")
    return Passage(title=first.strip().strip('"'), text=rest.strip())


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


class SearchClient:
    """Calls ``/retrieve`` on the configured replicas; one instance can serve many concurrent rollouts."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _next_url_for_retrieve(self, _attempt: int) -> str:
        urls = self._settings.retrieval_urls
        return urls[next(_ROUND_ROBIN) % len(urls)] + "/retrieve"

    async def retrieve(self, queries: list[str]) -> RetrievalResult:
        """Top-k passages for every query in one call; raises :class:`SearchError` with the reason on failure."""
        if not queries:
            raise SearchError("no queries to search")
        client = shared_client("retriever", self._settings, self._settings.retrieval_timeout_s)
        payload = {"queries": queries, "topk": self._settings.topk, "return_scores": False}
        started = time.perf_counter()
        try:
            reply = await post_json(
                client, self._next_url_for_retrieve, self._settings.retrieval_retries, self._settings, json=payload
            )
        except RequestFailed as exc:
            raise SearchError(f"retriever failed {exc}") from exc
        latency = time.perf_counter() - started
        body, attempts = reply.body, reply.attempts
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise SearchError(f"retriever reply has no 'result' list with one entry per query: {body!s:.200}")
        passages = []
        for found in result:
            if not isinstance(found, list):
                raise SearchError("retriever 'result' entry is not a list of passages")
            passages.append([passage_from_item(item) for item in found])
        return RetrievalResult(passages=passages, latency_s=latency, attempts=attempts)
