"""Serve an ASGI app with uvicorn on 127.0.0.1 in a background thread, for tests that need a real server; free ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn

logger = logging.getLogger(__name__)


class _QuickServer(uvicorn.Server):
    """uvicorn's server, stopping in milliseconds instead of about 0.2 s: the suite starts and stops hundreds.

    uvicorn notices ``should_exit`` on a 0.1 s tick and then always waits another 0.1 s for connections to finish;
    here the tick is 5 ms and, when no request is in flight, idle connections are closed at once. A request still
    running is drained by uvicorn's own shutdown, as before."""

    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(ticks):
            ticks = (ticks + 1) % 864000
            await asyncio.sleep(0.005)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.tasks:
            await super().shutdown(sockets)
            return
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await self.lifespan.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for "down, then up" scenarios on a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(
    app: Any,
    *,
    port: int = 0,
    name: str = "test-server",
    startup_timeout_s: float = 20.0,
    lifespan: Literal["on", "off"] = "off",
) -> Iterator[str]:
    """Yield the base URL of ``app`` served on 127.0.0.1; stop the server and join its thread on exit.

    The socket is bound here (port 0: a free one) and handed to uvicorn, so there is no race for the port; a fixed
    ``port`` serves "down, then up" scenarios. ``lifespan="on"`` runs the app's startup/shutdown hooks (the
    retriever loads its engine there); the URL is yielded once startup has finished.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
    server = _QuickServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name} server thread exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start on port {port} within {startup_timeout_s}s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()
        if thread.is_alive():
            logger.error("%s server thread on port %d did not stop within 10s", name, port)
