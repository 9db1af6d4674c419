"""The HTTP surface: /retrieve, /health, and /docs and /redoc served without a CDN (docs_page.py).

The app answers immediately after the port opens and loads the engine in the background on the worker
thread, so a supervisor can poll /health (503 while loading, 200 when ready) instead of guessing. Request
handlers only validate, enqueue and await: all compute happens on the worker, the event loop never blocks.

Every 4xx/5xx the server sends is counted by reason (:class:`Refusals`, in /health's ``refused``): a client that
sees retries or failures can tell from the server's side whether it was overloaded, still loading, or sent
requests it should never have sent. One client cannot stall the others: bad bodies are checked in time
proportional to their size with a bounded error list, large ones in a worker process (request_body.py), bodies
have a deadline (:class:`BodyDeadline`), connections a cap and a header deadline (connections.py), and the
queries of a client that hung up are dropped before they are searched (:func:`_unless_disconnected`, batcher.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from .batcher import Batcher, BatchFailedError, OverloadedError
from .docs_page import add_docs_pages
from .request_body import BodyParser, BodyProblem
from .settings import MAX_TOPK, Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RetrieveRequest(BaseModel):
    """Body of POST /retrieve. Types are strict: ``"3"`` is not a topk, ``1`` is not a query."""

    queries: Annotated[list[StrictStr], Field(min_length=1, description="One or more search queries.")]
    topk: Annotated[StrictInt, Field(ge=1, le=MAX_TOPK)] | None = Field(
        default=None, description="Passages per query; the server's --topk when omitted."
    )
    return_scores: StrictBool = Field(default=False, description="Wrap each passage as {document, score}.")


# /retrieve reads its body itself (request_body.py), so the schema FastAPI would have derived is given here.
_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}},
    }
}


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
    """Requests refused with a 4xx or 5xx, by reason; /health shows them (plus their ``total``). /health's own 503
    while loading is a status, not a refusal."""

    overloaded: int = 0  # 503: more than --max_pending queries waiting
    not_ready: int = 0  # 503: the engine is still loading (or failed to load)
    connections: int = 0  # 503: a connection over --max_connections (answered and closed before any request)
    body_too_large: int = 0  # 413: over --max_body_mb
    invalid_json: int = 0  # 422: the body is not a JSON document (empty, truncated, not UTF-8, nested too deeply)
    wrong_content_type: int = 0  # 422: the body was not sent as application/json
    invalid_fields: int = 0  # 422: valid JSON of the wrong shape (missing/empty queries, wrong types, topk range)
    too_many_queries: int = 0  # 422: over --max_queries
    query_too_long: int = 0  # 422: a query over --max_query_chars
    invalid_unicode: int = 0  # 422: a query with a lone surrogate
    unauthorized: int = 0  # 401: RETRIEVER_API_KEY is set and the request did not carry it as a bearer token
    slow_header: int = 0  # 408: request headers not complete within --header_timeout_s
    slow_body: int = 0  # 408: request body not complete within --body_timeout_s
    bad_http: int = 0  # 400: not HTTP/1.1 that uvicorn can parse
    failed: int = 0  # 500: the search failed inside the worker, or an unexpected error
    other: int = 0  # any other 4xx/5xx: unknown path (404), wrong method (405), ...

    def count(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        return {"total": sum(data.values()), **data}


def _mark(scope: dict, kind: str) -> None:
    """Name the :class:`Refusals` counter of the error response this request is about to get ("": none)."""
    scope.setdefault("state", {})["refusal"] = kind


class RefusalCounter:
    """Count every 4xx/5xx response the app sends, under the reason the handler marked (:func:`_mark`), else
    under ``other``. The outermost middleware, so a refusal from any layer is seen."""

    def __init__(self, app: Any, refusals: Refusals):
        self.app = app
        self.refusals = refusals

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                kind = scope.get("state", {}).get("refusal", "other")
                if kind:
                    self.refusals.count(kind)
            await send(message)

        await self.app(scope, receive, counting_send)


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
            _mark(scope, "body_too_large")
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
                    _mark(scope, "body_too_large")
                    # FastAPI re-raises HTTPException from body reading, so this becomes a plain 413.
                    raise HTTPException(status_code=413, detail=message)
            return event

        await self.app(scope, limited_receive, send)


class BodyDeadline:
    """Answer 408 (and close) when a request body is not complete ``timeout_s`` after the app got the request.

    uvicorn has no such timeout: a client sending a body a byte a minute held its connection and its task forever.
    Only the body is timed; waiting for the client to hang up after the body (see :func:`_unless_disconnected`)
    is not.
    """

    def __init__(self, app: Any, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False

        async def timed_receive() -> dict:
            nonlocal complete
            if complete:
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                _mark(scope, "slow_body")
                detail = f"request body not received within {self.timeout_s} s (--body_timeout_s)"
                raise HTTPException(408, detail=detail, headers={"connection": "close"}) from None
            complete = event["type"] != "http.request" or not event.get("more_body", False)
            return event

        await self.app(scope, timed_receive, send)


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


def model_label(model: str) -> str:
    """What /health calls the encoder: a Hugging Face repo id as given, the repo id of a Hub cache folder
    (``.../models--org--name/snapshots/<sha>``), else the folder's name; never the filesystem path."""
    path = Path(model)
    if not path.exists():
        return model
    for part in reversed(path.parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return path.resolve().name or model


def _authorized(header: str | None, api_key: bytes) -> bool:
    """Whether an ``Authorization`` header carries the bearer token (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), api_key)


async def _unless_disconnected(work: Awaitable[T], receive: Callable[[], Awaitable[dict]]) -> T | None:
    """``work``'s result, or None (``work`` cancelled) as soon as the client hangs up.

    Starlette does not cancel a handler whose client went away; without this, the queries of a client that hung
    up stayed queued and were encoded and searched while the next request waited behind them.
    """

    async def hang_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


def create_app(settings: Settings, load_engine: Callable[[], EngineLike] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None,
               api_key: str | None = None) -> FastAPI:  # fmt: skip
    """Build the app. ``load_engine`` runs on the worker thread at start-up (default: RetrievalEngine.load).

    ``on_load_error`` lets the CLI stop the process when the data cannot be loaded, instead of serving 503
    forever. ``api_key`` (the CLI takes it from ``RETRIEVER_API_KEY``): /retrieve then answers only requests that
    carry ``Authorization: Bearer <api_key>``, 401 otherwise.
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
        cache_bytes=int(settings.cache_mb * (1 << 20)),
    )
    key = api_key.encode("utf-8", "surrogateescape") if api_key else None
    body_parser = BodyParser()

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
            await body_parser.aclose()

    app = FastAPI(
        title="Local dense retriever",
        description="E5 + FAISS passage retrieval with cross-request batching. Poll /health until 200.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_docs_pages(app)
    refusals = Refusals()
    app.state.batcher = batcher
    app.state.settings = settings
    app.state.refusals = refusals
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.max_body_mb * (1 << 20)))
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s)
    app.add_middleware(RefusalCounter, refusals=refusals)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers these outside every middleware, so they are counted here (uvicorn logs the traceback).
        refusals.count("failed")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def refuse(
        request: Request, kind: str, status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any
    ) -> JSONResponse:
        _mark(request.scope, kind)
        return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)

    @app.get("/health", summary="200 with index and queue facts when ready; 503 while loading or failed")
    async def health(request: Request) -> JSONResponse:
        uptime = round(time.monotonic() - started, 3)
        engine = state["engine"]
        if engine is None:
            _mark(request.scope, "")  # a status report, not a refusal
            status = "failed" if state["error"] else "loading"
            body = {"status": status, "error": state["error"], "uptime_s": uptime, "refused": refusals.as_dict()}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "index_size": engine.size,
                "model": model_label(engine.model_name),
                "retriever_name": settings.retriever_name,
                "uptime_s": uptime,
                "ready_after_s": state["ready_after_s"],
                "queue_depth": batcher.queue_depth,
                "batching": settings.batching,
                "cache_entries": batcher.cache_entries,
                "cache_mb": round(batcher.cache_bytes / (1 << 20), 3),
                "auth": key is not None,
                "stats": batcher.stats.as_dict(),
                "refused": refusals.as_dict(),
            }
        )

    @app.post(
        "/retrieve",
        response_model=RetrieveResponse,
        summary="Top-k passages for each query",
        openapi_extra=_REQUEST_BODY_DOC,
        responses={422: {"description": "Bad body: detail lists the first few problems, message sums them up"}},
    )
    async def retrieve(request: Request) -> JSONResponse:
        if key is not None and not _authorized(request.headers.get("authorization"), key):
            return refuse(
                request,
                "unauthorized",
                401,
                "this retriever needs Authorization: Bearer <RETRIEVER_API_KEY>",
                headers={"www-authenticate": "Bearer"},
            )
        parsed = await body_parser.parse(await request.body(), request.headers.get("content-type", ""), RetrieveRequest)
        if isinstance(parsed, BodyProblem):
            return refuse(request, parsed.kind, 422, parsed.errors, message=parsed.message, errors=parsed.total)
        problem = _limits_problem(parsed, settings)
        if problem is not None:
            kind, message = problem
            return refuse(request, kind, 422, message)
        if state["engine"] is None:
            return refuse(request, "not_ready", 503, f"retriever not ready: {state['error'] or 'still loading'}")
        topk = parsed.topk if parsed.topk is not None else settings.topk
        try:
            hits = await _unless_disconnected(batcher.retrieve(parsed.queries, topk), request.receive)
        except OverloadedError as exc:
            return refuse(request, "overloaded", 503, str(exc))
        except BatchFailedError as exc:
            return refuse(request, "failed", 500, str(exc))
        if hits is None:  # the client hung up; nobody reads this
            return refuse(request, "", 499, "client closed the request")
        if parsed.return_scores:
            result: list[list[Any]] = [[{"document": doc, "score": score} for doc, score in row] for row in hits]
        else:
            result = [[doc for doc, _ in row] for row in hits]
        # Returning a Response skips FastAPI's re-validation of thousands of nested dicts.
        return JSONResponse({"result": result})

    return app
