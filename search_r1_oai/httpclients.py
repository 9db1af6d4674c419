"""Shared HTTP plumbing: one pooled ``httpx.AsyncClient`` per event loop and purpose, and a bounded retry policy.

A rollout runs thousands of short requests; opening a connection per request costs more than the request.
Clients are bound to the event loop that created them (httpx connections are), so they are cached per loop.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from search_r1_oai.config import Settings

T = TypeVar("T")

_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(purpose: str, settings: Settings, read_timeout_s: float) -> httpx.AsyncClient:
    """The pooled client for ``purpose`` on the running loop, created on first use with the pool size from settings."""
    loop = asyncio.get_running_loop()
    per_loop = _CLIENTS.setdefault(loop, {})
    key = (purpose, settings.concurrency, read_timeout_s, settings.connect_timeout_s)
    client = per_loop.get(key)
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        timeout = httpx.Timeout(read_timeout_s, connect=settings.connect_timeout_s)
        client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
        per_loop[key] = client
    return client


async def aclose_clients() -> None:
    """Close every client of the running loop (tests and clean shutdowns call this)."""
    per_loop = _CLIENTS.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client.aclose()


def is_retryable(exc: BaseException) -> bool:
    """Connection problems, timeouts, 5xx and 429 may pass; any other 4xx is the request's fault and never will."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status >= 500 or status == 429
    return isinstance(exc, httpx.TransportError)


async def call_with_retries(func: Callable[[], Awaitable[T]], retries: int, settings: Settings) -> T:
    """Run ``func`` with up to ``retries`` extra attempts on retryable errors; the last error is re-raised."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=settings.retry_initial_wait_s, max=settings.retry_max_wait_s)
        + wait_random(0, settings.retry_initial_wait_s),
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )
    return await retrying(func)


def error_detail(response: httpx.Response, limit: int = 500) -> str:
    """The server's own error message (FastAPI ``detail``, OpenAI ``error.message``) or the start of the body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:limit]
    if isinstance(body, dict):
        for key in ("detail", "message"):
            if key in body:
                return str(body[key])[:limit]
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:limit]
        if error is not None:
            return str(error)[:limit]
    return json.dumps(body)[:limit]


def describe_error(exc: BaseException) -> str:
    """One line for a failed call, suitable for a tool message or sample metadata."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}: {error_detail(exc.response)}"
    if isinstance(exc, httpx.TransportError):
        where = f" calling {exc.request.url}" if _has_request(exc) else ""
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out{where} ({type(exc).__name__})"
        return f"cannot reach the server{where} ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request  # noqa: B018 - the property raises when no request is attached
    except RuntimeError:
        return False
    return True
