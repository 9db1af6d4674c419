"""The tools the policy can call, and the runner that turns one turn's calls into tool messages.

A tool is a schema (what the policy is shown, in the sample's ``tools`` column) and one async function that
answers every call to it made in a turn, so a tool can batch them (``search`` sends all of a turn's queries in one
``/retrieve`` request). Adding a tool is writing that function and its schema and adding a :class:`Tool` to
:data:`TOOLS`; the rollout loop does not know which tools exist.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_r1_oai.prompts import SEARCH_TOOL, SEARCH_TOOL_NAME
from search_r1_oai.result import RolloutStats
from search_r1_oai.search_client import SearchError, format_search_results
from search_r1_oai.text import clean_text
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.trajectory import encode_text_off_loop

if TYPE_CHECKING:
    from search_r1_oai.context import RolloutContext


@dataclass(frozen=True)
class ToolReply:
    """The answer to one call. ``error`` becomes ``Error: ...`` in the tool message; ``bad_call`` says the policy
    got the call wrong (it then forfeits the format score), as opposed to a tool that failed on a good call."""

    content: str = ""
    error: str | None = None
    bad_call: bool = False


ToolFunction = Callable[[list[ToolCall], "RolloutContext", RolloutStats], Awaitable[list[ToolReply]]]


@dataclass(frozen=True)
class Tool:
    schema: dict[str, Any]
    run: ToolFunction

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]


def call_arguments(call: ToolCall, like: str = "{...}") -> tuple[dict[str, Any] | None, str | None]:
    """The call's arguments as a dict (a JSON string is parsed), or the error to report to the policy (``like``
    shows the policy an example of the expected object)."""
    arguments = call.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"the arguments of {call.name!r} are not valid JSON ({exc.msg})"
    if not isinstance(arguments, dict):
        return None, f"the arguments of {call.name!r} must be an object like {like}"
    return arguments, None


# ---- search ------------------------------------------------------------------------------------------------------


def search_queries(call: ToolCall) -> tuple[list[str], str | None]:
    """The queries of a ``search`` call (``queries`` list or a plain ``query`` string), or an error to report."""
    arguments, error = call_arguments(call, like='{"queries": ["..."]}')
    if arguments is None:
        return [], error
    raw = arguments.get("queries", arguments.get("query"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(q, str) for q in raw):
        return [], f'{SEARCH_TOOL_NAME!r} needs "queries": a list of strings'
    # JSON the policy wrote may escape a lone surrogate ("\\ud800"): searched as U+FFFD, never an encoding error.
    queries = [clean_text(q.strip()) for q in raw if q.strip()]
    if not queries:
        return [], f'{SEARCH_TOOL_NAME!r} got no non-empty query; pass "queries": ["..."]'
    return queries, None


async def run_search(calls: list[ToolCall], context: RolloutContext, stats: RolloutStats) -> list[ToolReply]:
    """Every query of the turn's calls in one ``/retrieve`` request; a retriever failure is told to the policy
    (without addresses) and is not the policy's fault."""
    parsed = [search_queries(call) for call in calls]
    all_queries = list(dict.fromkeys(q for queries, error in parsed if error is None for q in queries))
    found: dict[str, Any] = {}
    search_error: str | None = None
    if all_queries:
        try:
            result = await context.search.retrieve(all_queries)
            found = dict(zip(all_queries, result.passages, strict=True))
            stats.searches += 1
            stats.search_queries += len(all_queries)
            stats.queries.extend(all_queries)
            stats.retrieval_latency_s += result.latency_s
            stats.search_latencies_s.append(result.latency_s)
            stats.search_attempts.append(result.attempts)
            stats.search_replicas.append(result.replica)
        except SearchError as exc:
            search_error = f"search failed: {exc}"
            stats.search_attempts.append(exc.attempts)
            stats.search_replicas.append("")
            stats.record_search_error(exc.detail)
    replies = []
    for queries, error in parsed:
        if error is not None:
            replies.append(ToolReply(error=error, bad_call=True))
        elif search_error is not None:
            replies.append(ToolReply(error=search_error))
        else:
            replies.append(ToolReply(content=format_search_results(queries, [found[q] for q in queries])))
    return replies


TOOLS: dict[str, Tool] = {SEARCH_TOOL_NAME: Tool(SEARCH_TOOL, run_search)}


# ---- the runner --------------------------------------------------------------------------------------------------


async def run_tool_calls(
    calls: list[ToolCall], tools: list[dict], context: RolloutContext, stats: RolloutStats
) -> list[dict[str, Any]]:
    """One tool message per call, in call order. Only the tools the sample offers (its ``tools`` schemas) can run;
    each tool gets all of its calls of the turn at once. Every message is valid Unicode and bounded
    (:func:`bound_result`) before anything tokenizes it."""
    offered = [schema["function"]["name"] for schema in tools]
    replies: dict[int, ToolReply] = {}
    by_tool: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        if call.error is not None:
            replies[i] = ToolReply(error=call.error, bad_call=True)
        elif call.name not in offered:
            replies[i] = ToolReply(error=f"unknown tool {call.name!r}; {_available(offered)}", bad_call=True)
        elif call.name not in context.tools:
            replies[i] = ToolReply(error=f"tool {call.name!r} is not available in this rollout")
        else:
            by_tool.setdefault(call.name, []).append(i)
    for name, indices in by_tool.items():
        answers = await context.tools[name].run([calls[i] for i in indices], context, stats)
        replies.update(zip(indices, answers, strict=True))

    stats.tool_calls += len(calls)
    messages = []
    for i, call in enumerate(calls):
        reply = replies[i]
        content = reply.content
        if reply.error is not None:
            error = clean_text(reply.error)
            content = f"Error: {error}"
            stats.record_tool_error(error)
            stats.bad_tool_calls += reply.bad_call
        content = await bound_result(content, context)
        name, call_id = clean_text(str(call.name or "")), clean_text(str(call.id))
        messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})
    return messages


async def bound_result(text: str, context: RolloutContext) -> str:
    """``text`` cut to ``tool_result_max_chars`` characters, then to ``tool_result_max_tokens`` tokens, with a note
    for the policy, and valid Unicode. The character cut comes first so a result of megabytes is never scanned or
    tokenized whole; the token count is only computed when the UTF-8 length could exceed it (a token covers at
    least one byte)."""
    settings = context.settings
    note = ""
    if len(text) > settings.tool_result_max_chars:
        note = f"\n[cut: the result had {len(text)} characters; the first {settings.tool_result_max_chars} are shown]"
        text = text[: settings.tool_result_max_chars]
    text = clean_text(text)
    limit = settings.tool_result_max_tokens
    if len(text.encode("utf-8")) <= limit:
        return text + note
    ids = await encode_text_off_loop(context.tokenizer, text)
    if len(ids) > limit:
        text = context.tokenizer.decode(ids[:limit], skip_special_tokens=False)
        note = f"\n[cut: the result was longer than {limit} tokens; the first {limit} are shown]"
    return text + note


def _available(names: list[str]) -> str:
    if len(names) == 1:
        return f"the only available tool is {names[0]!r}"
    return "available tools: " + ", ".join(repr(n) for n in names) if names else "no tool is available"
