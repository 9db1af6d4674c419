"""The HTTP surface: /retrieve, /health and FastAPI's /docs.

The app answers immediately after the port opens and loads the engine in the background on the worker
thread, so a supervisor can poll /health (503 while loading, 200 when ready) instead of guessing. Request
handlers only validate, enqueue and await: all compute happens on the worker, the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413 before they are buffered in memory."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        message = f"request body too large: the limit is {limit} bytes (--max_body_mb)"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
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


def _limits_problem(request: RetrieveRequest, settings: Settings) -> str | None:
    """What makes a well-typed request unacceptable under the server's limits (None: nothing)."""
    if len(request.queries) > settings.max_queries:
        return f"too many queries: {len(request.queries)} > {settings.max_queries} (--max_queries)"
    for position, query in enumerate(request.queries):
        if len(query) > settings.max_query_chars:
            return (
                f"queries[{position}] has {len(query)} characters; the limit is {settings.max_query_chars} "
                "(--max_query_chars)"
            )
        # A JSON escape like "\ud800" decodes to a lone surrogate; the tokenizer would raise on it inside the
        # worker and fail every request batched with this one.
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"queries[{position}] is not valid Unicode: {exc.reason} at character {exc.start}"
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
            return RetrievalEngine.load(
                settings.index_path,
                settings.corpus_path,
                settings.retriever_model,
                retriever_name=settings.retriever_name,
                faiss_gpu=settings.faiss_gpu,
                fp16=settings.fp16,
                query_max_length=settings.query_max_length,
                encode_batch_size=settings.encode_batch_size,
                cache_dir=settings.cache_dir,
            )

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
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.max_body_mb * (1 << 20)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed back: it can be megabytes, and the message names the problem.
        errors = [{k: v for k, v in error.items() if k != "input"} for error in jsonable_encoder(exc.errors())]
        message = _summarise(errors)
        content_type = request.headers.get("content-type", "")
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
            return JSONResponse({"status": status, "error": state["error"], "uptime_s": uptime}, status_code=503)
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
            }
        )

    @app.post("/retrieve", response_model=RetrieveResponse, summary="Top-k passages for each query")
    async def retrieve(request: RetrieveRequest) -> JSONResponse:
        problem = _limits_problem(request, settings)
        if problem is not None:
            raise HTTPException(422, detail=problem)
        if state["engine"] is None:
            raise HTTPException(503, detail=f"retriever not ready: {state['error'] or 'still loading'}")
        topk = request.topk if request.topk is not None else settings.topk
        try:
            hits = await batcher.retrieve(request.queries, topk)
        except OverloadedError as exc:
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
