"""Tool calls of one assistant turn, from the server's parsed ``tool_calls`` or, when its parser rejected them,
from the raw output text.

A call the server's parser rejects (bad JSON, unknown function) disappears from the response, yet its tokens
were generated. Finding it in the raw text lets the policy be told what was wrong instead of the turn silently
counting as a final answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One requested call; ``error`` is set when the call could not even be read."""

    id: str
    name: str | None
    arguments: Any
    error: str | None = None


def calls_from_server(tool_calls: Any) -> list[ToolCall]:
    """The OpenAI ``message.tool_calls`` list as :class:`ToolCall` objects (arguments left as sent)."""
    calls = []
    for index, raw in enumerate(tool_calls or []):
        function = raw.get("function") if isinstance(raw, dict) else None
        call_id = (raw.get("id") if isinstance(raw, dict) else None) or f"call_{index}"
        if not isinstance(function, dict):
            calls.append(ToolCall(id=call_id, name=None, arguments=None, error="tool call without a function"))
            continue
        calls.append(ToolCall(id=call_id, name=function.get("name"), arguments=function.get("arguments")))
    return calls


def calls_from_text(text: str, markers: tuple[str, str]) -> list[ToolCall]:
    """Every ``START {json} END`` block in ``text``; a block cut off before END runs to the end of the text."""
    start, end = markers
    calls: list[ToolCall] = []
    position = text.find(start)
    while position != -1:
        body_start = position + len(start)
        body_end = text.find(end, body_start)
        body = text[body_start:] if body_end == -1 else text[body_start:body_end]
        call_id = f"call_{len(calls)}"
        calls.append(_call_from_block(call_id, body.strip(), closed=body_end != -1, end=end))
        if body_end == -1:
            break
        position = text.find(start, body_end + len(end))
    return calls


def _call_from_block(call_id: str, body: str, closed: bool, end: str) -> ToolCall:
    if not closed:
        return ToolCall(id=call_id, name=None, arguments=None, error=f"the tool call is not closed with {end}")
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall(
            id=call_id,
            name=None,
            arguments=None,
            error=f"the tool call is not valid JSON ({exc.msg} at char {exc.pos})",
        )
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return ToolCall(
            id=call_id,
            name=None,
            arguments=None,
            error='the tool call must be a JSON object {"name": ..., "arguments": {...}}',
        )
    return ToolCall(id=call_id, name=parsed["name"], arguments=parsed.get("arguments"))
