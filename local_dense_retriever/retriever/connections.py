"""Connection-level limits uvicorn lacks: a cap on open connections and a deadline for the request head.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) only after a first response; a connection
that never sends anything, or sends its headers a byte at a time, is kept forever. With an open-file limit of 80,
76 such connections locked everyone out. :func:`guarded_protocol` builds an h11 protocol that

- refuses a connection over ``max_connections`` at once with a JSON 503 (the answer is written, then the
  connection is closed when the client has read it, or after a second), so the open files stay bounded;
- answers 408 and closes a connection whose request head (request line + headers) is not complete
  ``header_timeout_s`` after the connection opened or after the first byte of the next request on a kept-alive
  connection; one that sent nothing at all is closed without an answer;
- reports every such refusal, and uvicorn's 400 for malformed HTTP, to ``on_refused`` (the /health counters).

Slow bodies are the app's business (a deadline on reading the body, ``BodyDeadline`` in api.py): the body is read
inside the request's own task, where a 408 can be answered normally.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

logger = logging.getLogger(__name__)

# Open files the process needs besides its connections: the corpus, libraries, the event loop, worker threads'
# pipes, and one to accept (and refuse) the connection over the cap.
FD_HEADROOM = 32
REFUSAL_LINGER_S = 1.0


def _response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"detail": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def open_file_count() -> int:
    """Files this process has open now (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(requested: int) -> int:
    """``requested`` lowered to what the open-file limit leaves: a connection over it would make accept() fail,
    and asyncio then stops accepting anyone for a second at a time."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - open_file_count() - FD_HEADROOM))


def guarded_protocol(
    max_connections: int, header_timeout_s: float, on_refused: Callable[[str], None]
) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass with the limits above, for ``uvicorn.Config(http=...)``."""
    over_cap = _response(
        503,
        "Service Unavailable",
        f"too many open connections (the limit is {max_connections}, --max_connections); retry later",
    )
    too_slow = _response(
        408, "Request Timeout", f"request headers not received within {header_timeout_s} s (--header_timeout_s)"
    )

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _refused = False
        _received = False
        _seen_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse(over_cap, "connections")
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # the request of a refused connection is read and dropped until it closes
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_head_timer()  # the first bytes of the next request on a kept-alive connection
            self._received = True
            super().data_received(data)
            if self.cycle is not self._seen_cycle:  # the head is complete: the request is the app's now
                self._seen_cycle = self.cycle
                self._disarm_head_timer()

        def eof_received(self) -> bool | None:
            if self._refused:
                self.transport.close()
            return super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            on_refused("bad_http")
            super().send_400_response(msg)

        def _refuse(self, answer: bytes, kind: str) -> None:
            on_refused(kind)
            self._refused = True
            self._disarm_head_timer()
            self.transport.write(answer)
            # Closing before the client has sent its request would reset the connection and could drop the answer
            # from the client's buffer: half-close, read and drop what comes, close on its EOF or after a second.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(REFUSAL_LINGER_S, self.transport.close)

        def _arm_head_timer(self) -> None:
            self._received = False
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._received:
                self._refuse(too_slow, "slow_header")
            else:
                self.transport.close()  # idle: nothing to answer

    return GuardedH11Protocol


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn's config for the retriever app (made by ``create_app``): h11 with the limits above, refusals counted
    in the app's /health counters, the keep-alive timeout of the settings."""
    cap = connection_cap(settings.max_connections)
    if cap < settings.max_connections:
        logger.warning(
            "--max_connections %d lowered to %d: the open-file limit (ulimit -n) is %d",
            settings.max_connections,
            cap,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
    protocol = guarded_protocol(cap, settings.header_timeout_s, app.state.refusals.count)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
    )
