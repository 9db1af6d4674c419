"""A FastAPI stand-in of the retriever's ``POST /retrieve`` + ``GET /health`` with scriptable failures.

``FakeRetriever`` answers every query with ``topk`` deterministic passages (or, given a corpus, the passages
whose text shares the most words with the query). Set ``fail_next``/``fail_status`` for "5xx then ok",
``delay_s`` for a slow server, ``slow_next``/``slow_fault`` for answers that trickle a byte a second or stall after
the headers (``tests/support/slow_responses.py``), ``edit`` to change every answer before it is sent (written with
ASCII escapes, so a lone surrogate goes out as ``\ud800``); "down" is simply a port nobody serves (start the
server later for "then up").

Requests are validated with the real server's request model and answers are built with its response model
(``local_dense_retriever/retriever/api.py``), so a schema change on the server breaks the client's tests instead
of passing against a fake that still speaks the old schema. The models are imported through the project root
(``local_dense_retriever.retriever.api``): benches import this module without the retriever's folder on the path.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from local_dense_retriever.retriever.api import Document, RetrieveRequest, RetrieveResponse, ScoredDocument
from tests.support.live_server import serve_app
from tests.support.slow_responses import Fault, slow_response


@dataclass
class FakeRetriever:
    """Scriptable retriever; ``corpus`` is a list of ``{"id", "contents"}`` wiki-18 rows (optional)."""

    corpus: list[dict] | None = None
    fail_next: int = 0
    fail_status: int = 503
    delay_s: float = 0.0
    slow_next: int = 0
    slow_fault: Fault = "stall"
    edit: Callable[[dict], None] | None = None
    # What the real server's --topk would give a request without ``topk``.
    default_topk: int = 3
    requests: list[dict] = field(default_factory=list)

    def passages(self, query: str, topk: int) -> list[dict]:
        if not self.corpus:
            return [_row(f"{query}-{i}", f"Title {i} of {query}", f"Passage {i} about {query}.") for i in range(topk)]
        words = set(re.findall(r"\w+", query.lower()))
        scored = sorted(self.corpus, key=lambda row: -len(words & set(re.findall(r"\w+", row["contents"].lower()))))
        return [_split(row) for row in scored[:topk]]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok"}

        @app.post("/retrieve")
        async def retrieve(request: RetrieveRequest) -> Response:
            self.requests.append(request.model_dump())
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"detail": "scripted failure"}, status_code=self.fail_status)
            topk = request.topk or self.default_topk
            answer = self.response([self.passages(q, topk) for q in request.queries], request).model_dump()
            if self.slow_next > 0:
                self.slow_next -= 1
                return slow_response(self.slow_fault, json.dumps(answer).encode())
            if self.edit is None:
                return JSONResponse(answer)
            self.edit(answer)
            return Response(json.dumps(answer).encode("ascii"), media_type="application/json")

        return app

    def response(self, rows: list[list[dict]], request: RetrieveRequest) -> RetrieveResponse:
        """The answer in the real server's response model; ``return_scores`` wraps passages as the server does."""
        documents = [[Document(**row) for row in per_query] for per_query in rows]
        if not request.return_scores:
            return RetrieveResponse(result=documents)
        scored: list[list[Any]] = [
            [ScoredDocument(document=doc, score=1.0 / (rank + 1)) for rank, doc in enumerate(per_query)]
            for per_query in documents
        ]
        return RetrieveResponse(result=scored)


def _row(doc_id: str, title: str, text: str) -> dict:
    return {"id": doc_id, "contents": f'"{title}"\n{text}', "title": title, "text": text}


def _split(row: dict) -> dict:
    title, _, text = row["contents"].partition("\n")
    return {"id": row["id"], "contents": row["contents"], "title": title.strip('"'), "text": text}


def serve_fake_retriever(fake: FakeRetriever, port: int | None = None) -> AbstractContextManager[str]:
    """Serve ``fake`` on 127.0.0.1 (a free port unless given) in a thread; the context yields the base URL."""
    return serve_app(fake.app(), port=port or 0, name="fake-retriever")
