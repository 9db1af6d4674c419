"""The HTTP surface: /retrieve, /health and FastAPI's /docs.

The app answers immediately after the port opens and loads the engine in the background on the worker
thread, so a supervisor can poll /health (503 while loading, 200 when ready) instead of guessing. Request
handlers only validate, enqueue and await: all compute happens on the worker, the event loop never blocks.

Every request /retrieve refuses is counted by reason (:class:`Refusals`, in /health's ``refused``): a client that
sees retries or failures can tell from the server's side whether it was overloaded, still loading, or sent
requests it should never have sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from .batcher import Batcher, BatchFailedError, OverloadedError
from .settings import MAX_TOPK, Settings

logger = logging.getLogger(__name__)


class RetrieveRequest(BaseModel):
    """Body of POST /retrieve. Types are strict: ``"3"`` is not a topk, ``1`` is not a query."""

    queries: Annotated[list[StrictStr], Field(min_length=1, description="One or more search queries.")]
    topk: Annotated[StrictInt, Field(ge=1, le=MAX_TOPK)] | None = Field(
        default=None, description="Passages per query; the server's --topk when omitted."
    )
    return_scores: StrictBool = Field(default=False, description="Wrap each passage as {document, score}.")


class Document(BaseModel):
    id: str
    contents: str = Field(description='wiki-18 form: "Title"\\ntext')
    title: str
    text: str


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[Document]] | list[list[ScoredDocument]] = Field(description="One list per query, in order.")


class EngineLike(Protocol):
    """What the app needs from a loaded engine (RetrievalEngine in production, wrappers in tests)."""

    size: int
    model_name: str

    def search(self, queries: list[str], k: int) -> list[list[tuple[dict[str, Any], float]]]: ...


@dataclass
class Refusals:
    """Requests refused with a 503 or 4xx, by reason; /health shows them (plus their ``total``)."""

    overloaded: int = 0  # 503: more than --max_pending queries waiting
    not_ready: int = 0  # 503: the engine is still loading (or failed to load)
    body_too_large: int = 0  # 413: over --max_body_mb
    invalid_json: int = 0  # 422: the body is not a JSON document (empty, truncated, not UTF-8)
    wrong_content_type: int = 0  # 422: the body was not sent as application/json
    invalid_fields: int = 0  # 422: valid JSON of the wrong shape (missing/empty queries, wrong types, topk range)
    too_many_queries: int = 0  # 422: over --max_queries
    query_too_long: int = 0  # 422: a query over --max_query_chars
    invalid_unicode: int = 0  # 422: a query with a lone surrogate

    def count(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        return {"total": sum(data.values()), **data}


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413 before they are buffered in memory.

    ``on_refused`` hears of every body refused (the /health counter).
    """

    def __init__(self, app: Any, max_bytes: int, on_refused: Callable[[], None] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused or (lambda: None)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        message = f"request body too large: the limit is {limit} bytes (--max_body_mb)"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.on_refused()
            response = JSONResponse({"detail": message}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:
                    self.on_refused()
                    # FastAPI re-raises HTTPException from body reading, so this becomes a plain 413.
                    raise HTTPException(status_code=413, detail=message)
            return event

        await self.app(scope, limited_receive, send)


def _summarise(errors: list[dict[str, Any]]) -> str:
    """One line naming each problem, e.g. ``queries.2: Input should be a valid string``."""
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            parts.append(f"invalid JSON body at character {error['loc'][-1]}: {reason}")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")


def _validation_kind(errors: list[dict[str, Any]], content_type: str) -> str:
    """Which :class:`Refusals` counter a 422 from request validation goes to."""
    if "json" not in content_type:
        return "wrong_content_type"
    for error in errors:
        if error.get("type") == "json_invalid" or (error.get("type") == "missing" and error.get("loc") == ["body"]):
            return "invalid_json"  # an empty body is no JSON document either
    return "invalid_fields"


def _limits_problem(request: RetrieveRequest, settings: Settings) -> tuple[str, str] | None:
    """What makes a well-typed request unacceptable under the server's limits, as ``(Refusals counter,
    message)`` (None: nothing)."""
    if len(request.queries) > settings.max_queries:
        return "too_many_queries", f"too many queries: {len(request.queries)} > {settings.max_queries} (--max_queries)"
    for position, query in enumerate(request.queries):
        if len(query) > settings.max_query_chars:
            return "query_too_long", (
                f"queries[{position}] has {len(query)} characters; the limit is {settings.max_query_chars} "
                "(--max_query_chars)"
            )
        # A JSON escape like "\ud800" decodes to a lone surrogate; the tokenizer would raise on it inside the
        # worker and fail every request batched with this one.
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            return "invalid_unicode", f"queries[{position}] is not valid Unicode: {exc.reason} at character {exc.start}"
    return None


def create_app(settings: Settings, load_engine: Callable[[], EngineLike] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:  # fmt: skip
    """Build the app. ``load_engine`` runs on the worker thread at start-up (default: RetrievalEngine.load).

    ``on_load_error`` lets the CLI stop the process when the data cannot be loaded, instead of serving 503
    forever.
    """
    if load_engine is None:

        def load_engine() -> EngineLike:
            from .encoder import set_cpu_threads
            from .engine import RetrievalEngine

            set_cpu_threads(settings.num_threads)
            return RetrievalEngine.load(settings)

    started = time.monotonic()
    state: dict[str, Any] = {"engine": None, "error": None, "ready_after_s": None}
    batcher = Batcher(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        cache_size=settings.cache_size,
        batching=settings.batching,
        max_pending=settings.max_pending,
    )

    async def load() -> None:
        try:
            engine = await batcher.run_in_worker(load_engine)
        except Exception as exc:
            state["error"] = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the retriever failed")
            if on_load_error is not None:
                on_load_error(exc)
            return
        batcher.set_search(engine.search)
        state["engine"] = engine
        state["ready_after_s"] = round(time.monotonic() - started, 3)
        logger.info("ready: %d passages, %.1f s after start", engine.size, state["ready_after_s"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        loader = asyncio.create_task(load(), name="retriever-load")
        try:
            yield
        finally:
            loader.cancel()
            await batcher.stop()

    app = FastAPI(
        title="Local dense retriever",
        description="E5 + FAISS passage retrieval with cross-request batching. Poll /health until 200.",
        lifespan=lifespan,
    )
    refusals = Refusals()
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.refusals = refusals
    app.add_middleware(
        BodySizeLimit,
        max_bytes=int(settings.max_body_mb * (1 << 20)),
        on_refused=lambda: refusals.count("body_too_large"),
    )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed back: it can be megabytes, and the message names the problem.
        errors = [{k: v for k, v in error.items() if k != "input"} for error in jsonable_encoder(exc.errors())]
        message = _summarise(errors)
        content_type = request.headers.get("content-type", "")
        refusals.count(_validation_kind(errors, content_type))
        if "json" not in content_type:
            # FastAPI parses a body as JSON only when it says so; e.g. requests' data= sends a form content type.
            message += f" (the body is read as JSON only with content-type: application/json; got {content_type!r})"
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.get("/health", summary="200 with index and queue facts when ready; 503 while loading or failed")
    async def health() -> JSONResponse:
        uptime = round(time.monotonic() - started, 3)
        engine = state["engine"]
        if engine is None:
            status = "failed" if state["error"] else "loading"
            body = {"status": status, "error": state["error"], "uptime_s": uptime, "refused": refusals.as_dict()}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "index_size": engine.size,
                "model": engine.model_name,
                "retriever_name": settings.retriever_name,
                "uptime_s": uptime,
                "ready_after_s": state["ready_after_s"],
                "queue_depth": batcher.queue_depth,
                "batching": settings.batching,
                "cache_entries": batcher.cache_entries,
                "stats": batcher.stats.as_dict(),
                "refused": refusals.as_dict(),
            }
        )

    @app.post("/retrieve", response_model=RetrieveResponse, summary="Top-k passages for each query")
    async def retrieve(request: RetrieveRequest) -> JSONResponse:
        problem = _limits_problem(request, settings)
        if problem is not None:
            kind, message = problem
            refusals.count(kind)
            raise HTTPException(422, detail=message)
        if state["engine"] is None:
            refusals.count("not_ready")
            raise HTTPException(503, detail=f"retriever not ready: {state['error'] or 'still loading'}")
        topk = request.topk if request.topk is not None else settings.topk
        try:
            hits = await batcher.retrieve(request.queries, topk)
        except OverloadedError as exc:
            refusals.count("overloaded")
            raise HTTPException(503, detail=str(exc)) from exc
        except BatchFailedError as exc:
            raise HTTPException(500, detail=str(exc)) from exc
        if request.return_scores:
            result: list[list[Any]] = [[{"document": doc, "score": score} for doc, score in row] for row in hits]
        else:
            result = [[doc for doc, _ in row] for row in hits]
        # Returning a Response skips FastAPI's re-validation of thousands of nested dicts.
        return JSONResponse({"result": result})

    return app
