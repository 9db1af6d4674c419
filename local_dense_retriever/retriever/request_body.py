"""Parse and check a /retrieve body in time proportional to its size, with a bounded error list.

FastAPI's own path lists one error per bad item and runs every one through ``jsonable_encoder``: a 0.4 MiB body
of 100k numbers took 10 s of the event loop and an 18 MiB reply. Here the queries are type-checked in one C-level
pass first; only the first :data:`MAX_ERRORS` bad items get an error dict, the rest are counted, and pydantic
(the same :class:`RetrieveRequest` the fake retriever validates with) only ever sees a list it will accept.

Even so, json's C parser holds the GIL for the whole body: on the event loop, a 64 MiB body of small numbers or
empty lists held /health and every other request for seconds. :class:`BodyParser` parses bodies over
:data:`INLINE_PARSE_MAX_BYTES` in a worker process instead.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, StrictStr, TypeAdapter, ValidationError

MAX_ERRORS = 5
# Bodies up to this size are parsed on the event loop: a few milliseconds, less than handing them to a process.
INLINE_PARSE_MAX_BYTES = 256 * 1024
_QUERY = TypeAdapter(StrictStr)
M = TypeVar("M", bound=BaseModel)


@dataclass
class BodyProblem:
    """Why a body was refused: the ``Refusals`` counter, the validation errors (at most :data:`MAX_ERRORS`), how
    many there were in all, and a one-line message."""

    kind: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    note: str = ""

    @property
    def message(self) -> str:
        parts = []
        for error in self.errors:
            if error.get("type") == "json_invalid":
                parts.append(f"invalid JSON body: {error['msg']}")
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        more = self.total - len(self.errors)
        return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "") + self.note


def is_json_content_type(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters ignored (FastAPI's rule)."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_problem(msg: str, position: int | None = None) -> BodyProblem:
    loc: list[Any] = ["body"] if position is None else ["body", position]
    return BodyProblem("invalid_json", [{"type": "json_invalid", "loc": loc, "msg": msg}], 1)


def _plain(errors: list[Any]) -> list[dict[str, Any]]:
    """pydantic's error dicts as plain JSON (the offending input left out: it can be megabytes)."""
    out = []
    for error in errors:
        item = {"type": error["type"], "loc": ["body", *error["loc"]], "msg": error["msg"]}
        if error.get("ctx"):
            item["ctx"] = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in error["ctx"].items()}
        out.append(item)
    return out


def _query_errors(queries: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """Errors of the first :data:`MAX_ERRORS` items that are not strings, and how many items are not."""
    bad = len(queries) - Counter(map(type, queries)).get(str, 0)
    if not bad:
        return [], 0
    errors: list[dict[str, Any]] = []
    for position, query in enumerate(queries):
        if type(query) is not str:
            try:
                _QUERY.validate_python(query)
            except ValidationError as exc:
                errors.extend(_plain([{**e, "loc": ("queries", position)} for e in exc.errors(include_url=False)]))
            if len(errors) >= MAX_ERRORS:
                break
    return errors, bad


def parse_body(body: bytes, content_type: str, model: type[M]) -> M | BodyProblem:
    """The request model of ``body``, or why not. ``model`` has a ``queries: list[StrictStr]`` field."""
    if not is_json_content_type(content_type):
        note = f" (the body is read as JSON only with content-type: application/json; got {content_type!r})"
        return BodyProblem(
            "wrong_content_type",
            [{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a JSON object"}],
            1,
            note,
        )
    if not body:
        return _json_problem("the body is empty")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return _json_problem(f"{exc.msg} at character {exc.pos}", exc.pos)
    except UnicodeDecodeError as exc:
        return _json_problem(f"not UTF-8 ({exc.reason} at byte {exc.start})", exc.start)
    except RecursionError:
        return _json_problem("nested too deeply")
    errors: list[dict[str, Any]] = []
    total = 0
    if isinstance(data, dict) and isinstance(data.get("queries"), list) and data["queries"]:
        errors, total = _query_errors(data["queries"])
        if total:
            data = {**data, "queries": ["placeholder"]}  # the other fields' errors still get reported
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        other = _plain(exc.errors(include_url=False))
        return BodyProblem("invalid_fields", (errors + other)[:MAX_ERRORS], total + len(other))
    if total:
        return BodyProblem("invalid_fields", errors, total)
    return request


def _exit_with(parent: int) -> None:
    """The worker's initializer: it ends when the server does, however the server ended (a killed server sends it
    no shutdown, and the worker's own copy of its task pipe never reports the server gone)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


class BodyParser:
    """:func:`parse_body` for the server: small bodies on the event loop, larger ones in one worker process, spawned
    on the first large body (a server that never sees one never starts it). Large bodies queue for the worker; the
    event loop, and so /health and every small request, never waits for their parse."""

    def __init__(self, inline_max_bytes: int = INLINE_PARSE_MAX_BYTES) -> None:
        self.inline_max_bytes = inline_max_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, body: bytes, content_type: str, model: type[M]) -> M | BodyProblem:
        """What :func:`parse_body` gives, from wherever it ran (``model`` must be importable by name)."""
        if len(body) <= self.inline_max_bytes:
            return parse_body(body, content_type, model)
        if self._pool is None:
            # spawn, not fork: the server's process holds threads (the engine's worker, torch's pools).
            spawn = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, spawn, initializer=_exit_with, initargs=(os.getpid(),))
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, parse_body, body, content_type, model)
        except BrokenProcessPool:
            if self._pool is pool:  # the worker died (out of memory, killed): the next large body gets a new one
                self._pool = None
            raise

    async def aclose(self) -> None:
        """Stop the worker, if one was started, and wait for it (a parse still running is finished first)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
