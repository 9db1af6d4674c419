"""Shared HTTP plumbing: pooled ``httpx.AsyncClient`` shards per event loop and purpose, and a bounded retry policy.

A rollout runs thousands of short requests; opening a connection per request costs more than the request.
Clients are bound to the event loop that created them (httpx connections are), so they are cached per loop.

Why shards: httpcore 1.0's pool re-scans all of its connections for every idle connection and every queued request
each time a request starts or ends (encode/httpx#3215), so its CPU cost grows with the square of the connections
one client holds. Measured on the 2-core dev machine, 256 rollouts searching through ``SearchClient`` against a
retriever answering in 0.3 s: one client managed 49 searches/s with a whole core (20 ms of client CPU per search);
32 shards, 346 searches/s at 2.8 ms each. A smaller pool does not help: waiting requests are scanned the same way. HTTP/2 is no way out: httpx negotiates it only over TLS, and uvicorn (the retriever) has none.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from search_r1_oai.config import Settings
from search_r1_oai.text import clean_text

# Concurrent requests per client shard, so each httpcore pool only ever tracks a handful of connections.
CONNECTIONS_PER_SHARD = 8

_NEXT_SHARD = itertools.count()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One CA bundle load for every shard (each costs tens of milliseconds)."""
    return httpx.create_ssl_context()


class ClientPools:
    """Pooled client shards per event loop and purpose; a rollout context owns one, so closing it closes them all."""

    def __init__(self) -> None:
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, list[httpx.AsyncClient]]] = (
            weakref.WeakKeyDictionary()
        )

    def client(self, purpose: str, settings: Settings, read_timeout_s: float) -> httpx.AsyncClient:
        """A pooled client for ``purpose`` on the running loop; successive calls rotate over
        ``ceil(concurrency / CONNECTIONS_PER_SHARD)`` shards, created on first use.

        Each shard may open up to ``settings.concurrency`` connections, so an uneven spread never makes a request
        wait for a connection while another shard has room; the callers' own concurrency bounds the total.
        """
        per_loop = self._per_loop.setdefault(asyncio.get_running_loop(), {})
        key = (purpose, settings.concurrency, read_timeout_s, settings.connect_timeout_s)
        shards = per_loop.get(key)
        if shards is None or shards[0].is_closed:
            limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
            timeout = httpx.Timeout(read_timeout_s, connect=settings.connect_timeout_s)
            count = -(-settings.concurrency // CONNECTIONS_PER_SHARD)
            shards = [
                httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False, verify=_ssl_context())
                for _ in range(count)
            ]
            per_loop[key] = shards
        return shards[next(_NEXT_SHARD) % len(shards)]

    async def aclose(self) -> None:
        """Close every client of the running loop."""
        per_loop = self._per_loop.pop(asyncio.get_running_loop(), {})
        for shards in per_loop.values():
            for client in shards:
                await client.aclose()


# For clients used on their own (tests, tools); a rollout context brings its own pools.
DEFAULT_POOLS = ClientPools()


def shared_client(purpose: str, settings: Settings, read_timeout_s: float) -> httpx.AsyncClient:
    """A client from :data:`DEFAULT_POOLS` (see :meth:`ClientPools.client`)."""
    return DEFAULT_POOLS.client(purpose, settings, read_timeout_s)


async def aclose_clients() -> None:
    """Close every client :func:`shared_client` made on the running loop."""
    await DEFAULT_POOLS.aclose()


def is_retryable(exc: BaseException) -> bool:
    """Connection problems, timeouts, 5xx and 429 may pass; any other 4xx is the request's fault and never will."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status >= 500 or status == 429
    return isinstance(exc, httpx.TransportError)


class AttemptTimeout(httpx.TimeoutException):
    """One attempt got no complete reply within its overall limit (connect to last byte). httpx's own timeouts
    are per read, so a server that trickles a byte a second, or stalls after its headers, never trips them."""

    def __init__(self, limit_s: float, by_deadline: bool, request: httpx.Request) -> None:
        what = "the call's deadline" if by_deadline else "the attempt's timeout"
        super().__init__(f"no complete reply within {limit_s:.3g} s ({what})", request=request)
        self.limit_s = limit_s


class ReplyTooLarge(httpx.DecodingError):
    """A reply longer than the caller allows: reading stopped there, nothing of it is parsed (not retried: the
    server would send the same again)."""

    def __init__(self, limit_bytes: int, request: httpx.Request) -> None:
        super().__init__(f"the reply is larger than {limit_bytes / 2**20:.3g} MiB", request=request)
        self.limit_bytes = limit_bytes


async def read_reply(response: httpx.Response, max_bytes: int | None) -> httpx.Response:
    """``response`` (opened with ``client.stream``) read whole, or :class:`ReplyTooLarge` as soon as it passes
    ``max_bytes`` (by its declared length, before reading anything, or while reading)."""
    if max_bytes is None:
        await response.aread()
        return response
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ReplyTooLarge(max_bytes, response.request)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ReplyTooLarge(max_bytes, response.request)
        chunks.append(chunk)
    # Decoded already (aiter_bytes undoes the content encoding): the copy carries no encoding header.
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=response.request)


class RequestFailed(Exception):
    """A request that still failed after its retries; the message says after how many attempts and why."""

    def __init__(self, message: str, attempts: int, urls: list[str]) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.urls = urls


@dataclass(frozen=True)
class PostResult:
    """A decoded reply, the attempts it took and the URL that gave it."""

    body: Any
    attempts: int
    url: str


async def post_json(
    client: httpx.AsyncClient,
    url: str | Callable[[int], str],
    retries: int,
    settings: Settings,
    *,
    attempt_timeout_s: float,
    deadline_s: float,
    on_failure: Callable[[str, BaseException], None] | None = None,
    max_reply_bytes: int | None = None,
    **request: Any,
) -> PostResult:
    """POST and decode the JSON reply, with up to ``retries`` extra attempts on retryable errors (backoff with
    jitter). A callable ``url`` is asked for every attempt with the attempt's index (0 first), so a retry can go to
    another replica; ``on_failure(url, error)`` hears of every failed attempt (to mark a replica down).

    Nothing waits forever: each attempt must be complete (connect to last byte) within ``attempt_timeout_s``, and
    the whole call, attempts and backoff together, within ``deadline_s``: no attempt runs past it, no wait sleeps
    past it and no attempt starts after it. A cut attempt is an :class:`AttemptTimeout` (retryable). A reply longer
    than ``max_reply_bytes`` is a :class:`ReplyTooLarge`, read no further."""
    return await request_json(
        client,
        "POST",
        url,
        retries,
        settings,
        attempt_timeout_s=attempt_timeout_s,
        deadline_s=deadline_s,
        on_failure=on_failure,
        max_reply_bytes=max_reply_bytes,
        **request,
    )


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    url: str | Callable[[int], str],
    retries: int,
    settings: Settings,
    *,
    attempt_timeout_s: float,
    deadline_s: float,
    on_failure: Callable[[str, BaseException], None] | None = None,
    max_reply_bytes: int | None = None,
    **request: Any,
) -> PostResult:
    """:func:`post_json` for any method."""
    tried: list[str] = []
    ends_at = time.monotonic() + deadline_s

    async def attempt() -> Any:
        target = url(len(tried)) if callable(url) else url
        tried.append(target)
        limit = max(0.0, min(attempt_timeout_s, ends_at - time.monotonic()))
        try:
            try:
                async with asyncio.timeout(limit), client.stream(method, target, **request) as streamed:
                    response = await read_reply(streamed, max_reply_bytes)
                response.raise_for_status()
                return response.json()
            except TimeoutError:
                raise AttemptTimeout(limit, limit < attempt_timeout_s, httpx.Request(method, target)) from None
        except (httpx.HTTPError, ValueError) as exc:
            if on_failure is not None:
                on_failure(target, exc)
            raise

    try:
        body: Any = await _retrying(settings, retries, deadline_s, ends_at)(attempt)
    except (httpx.HTTPError, ValueError) as exc:
        raise RequestFailed(f"after {len(tried)} attempt(s): {describe_error(exc)}", len(tried), tried) from exc
    return PostResult(body=body, attempts=len(tried), url=tried[-1])


def _retrying(settings: Settings, retries: int, deadline_s: float, ends_at: float) -> AsyncRetrying:
    """Up to ``retries`` more attempts on retryable errors, with jittered exponential backoff whose waits are clipped
    to what is left before ``ends_at``."""
    backoff = wait_exponential(multiplier=settings.retry_initial_wait_s, max=settings.retry_max_wait_s) + wait_random(
        0, settings.retry_initial_wait_s
    )

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(backoff(state), ends_at - time.monotonic()))

    return AsyncRetrying(
        # stop_before_delay counts the coming wait: no retry that would start at (or after) the deadline.
        stop=stop_after_attempt(retries + 1) | stop_before_delay(deadline_s),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )


def error_detail(response: httpx.Response, limit: int = 500) -> str:
    """The server's own error message (SGLang's or our retriever's ``message``, FastAPI's ``detail``: a validation
    list becomes ``field: problem; ...``, OpenAI's ``error.message``) or the start of the body; always valid
    Unicode (it reaches logs, tool messages and result files)."""
    return clean_text(_error_detail(response, limit))


def _error_detail(response: httpx.Response, limit: int) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:limit]
    if isinstance(body, dict):
        for key in ("message", "detail"):
            value = body.get(key)
            if isinstance(value, str):
                return value[:limit]
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                return "; ".join(_validation_item(item) for item in value[:5])[:limit]
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:limit]
        if error is not None:
            return str(error)[:limit]
    return json.dumps(body)[:limit]


def _validation_item(item: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
    return f"{where}: {item.get('msg', 'invalid')}"


def describe_error(exc: BaseException) -> str:
    """One line for a failed call, suitable for a tool message or sample metadata."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}: {error_detail(exc.response)}"
    if isinstance(exc, httpx.TransportError):
        where = f" calling {exc.request.url}" if _has_request(exc) else ""
        if isinstance(exc, AttemptTimeout):
            return f"timed out{where}: {exc}"
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
