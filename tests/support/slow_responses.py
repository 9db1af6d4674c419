"""HTTP responses that never complete in time, for the "nothing waits forever" tests of both servers.

``trickle`` sends the headers, then the body one byte per ``interval_s`` (1 s by default): every read gets data, so
a per-read timeout never trips. ``stall`` sends the headers and then nothing. Either stops after ``limit_s`` (or
when the client goes away: Starlette cancels the stream on disconnect), so a test server never keeps a request
alive past the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi.responses import StreamingResponse

Fault = Literal["trickle", "stall"]
FAULTS: tuple[Fault, ...] = ("trickle", "stall")


def slow_response(
    fault: Fault, body: bytes, *, status: int = 200, interval_s: float = 1.0, limit_s: float = 30.0
) -> StreamingResponse:
    """A response with ``body`` (JSON) that ``fault`` keeps from completing."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")

    async def chunks() -> AsyncIterator[bytes]:
        ends_at = time.monotonic() + limit_s
        if fault == "stall":
            await asyncio.sleep(limit_s)
            return
        for position in range(len(body)):
            if time.monotonic() >= ends_at:
                return
            yield body[position : position + 1]
            await asyncio.sleep(interval_s)

    return StreamingResponse(chunks(), status_code=status, media_type="application/json")
