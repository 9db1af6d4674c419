"""The tools a rollout can offer, and the runner that turns one turn's calls into tool messages.

A tool is one object (:class:`~search_r1_oai.tool_base.Tool`: schema, client, settings, counters) registered with
:func:`register_tool`; ``search`` is registered here. Each rollout context builds every registered tool once
(:func:`build_tools`), the rollout metrics and the evaluation report read every registered tool's counters, and the
loop does not know which tools exist.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from search_r1_oai.config import ConfigError, Settings
from search_r1_oai.result import RolloutStats
from search_r1_oai.search_tool import SEARCH
from search_r1_oai.text import bound_result, clean_text
from search_r1_oai.tool_base import Tool, ToolReply, ToolSetup, ToolSpec
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.tool_stats import ToolStats, add_kind, kinds, remove_kind

_SPECS: dict[str, ToolSpec] = {}


def register_tool(spec: ToolSpec) -> None:
    """Make a tool part of every rollout context built from now on, and its counters part of every sample's
    metadata, the metrics and the evaluation table. Its counters' keys must be its own."""
    if spec.name in _SPECS:
        raise ValueError(f"a tool named {spec.name!r} is already registered")
    taken = {f.name: "the rollout's own counters" for f in dataclasses.fields(RolloutStats)}
    taken |= {key: f"tool {kind.tool!r}" for kind in kinds() for key in kind.metadata_keys()}
    clashes = [f"{key} (taken by {taken[key]})" for key in spec.stats.metadata_keys() if key in taken]
    if clashes:
        raise ValueError(f"tool {spec.name!r}: counter names already in use: {', '.join(clashes)}")
    _SPECS[spec.name] = spec
    add_kind(spec.stats)


def unregister_tool(name: str) -> None:
    _SPECS.pop(name, None)
    remove_kind(name)


@contextmanager
def tool_registered(spec: ToolSpec) -> Iterator[ToolSpec]:
    """``spec`` registered for the ``with`` block only (a test, a notebook cell)."""
    register_tool(spec)
    try:
        yield spec
    finally:
        unregister_tool(spec.name)


def registered_tools() -> dict[str, ToolSpec]:
    return dict(_SPECS)


def counter_kinds() -> tuple[type[ToolStats], ...]:
    """Every registered tool's counters' kind: what the metrics, the evaluation records and its table read."""
    return kinds()


def import_tool_modules(modules: Sequence[str]) -> None:
    """Import the modules of ``SEARCH_R1_TOOL_MODULES``; each registers its tools when imported (a module already
    imported is not run again, so a process can build many contexts)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"SEARCH_R1_TOOL_MODULES names {module!r}, which cannot be imported ({type(exc).__name__}: {exc}); "
                "it must be importable from the project root (e.g. my_tools for my_tools.py there)"
            ) from exc


def build_tools(setup: ToolSetup, given: Mapping[str, Tool[Any]] | None = None) -> dict[str, Tool[Any]]:
    """Every registered tool built for one context, with ``given`` ones (by name) in place of, or beside, them."""
    given = dict(given or {})
    built = {name: spec.build(setup) for name, spec in _SPECS.items() if name not in given}
    return built | given


register_tool(SEARCH)


# ---- the runner --------------------------------------------------------------------------------------------------


class ToolHost(Protocol):
    """What the runner needs of a rollout context: the tools, and the settings and tokenizer that bound results."""

    settings: Settings
    tokenizer: Any
    tools: dict[str, Tool[Any]]


async def run_tool_calls(
    calls: list[ToolCall], tools: list[dict], context: ToolHost, stats: RolloutStats
) -> list[dict[str, Any]]:
    """One tool message per call, in call order. Only the tools the sample offers (its ``tools`` schemas) can run;
    each tool gets all of its calls of the turn at once, and its own counters. Every message is valid Unicode and
    bounded (:func:`~search_r1_oai.text.bound_result`) before anything tokenizes it."""
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
        tool = context.tools[name]
        answers = await tool.run([calls[i] for i in indices], stats.of(tool.stats_type))
        replies.update(zip(indices, answers, strict=True))

    stats.tool_calls += len(calls)
    settings = context.settings
    messages = []
    for i, call in enumerate(calls):
        reply = replies[i]
        content = reply.content
        if reply.error is not None:
            content = f"Error: {reply.error}"
            stats.record_tool_error(reply.error)
            stats.bad_tool_calls += reply.bad_call
        content = await bound_result(
            content, settings.tool_result_max_chars, settings.tool_result_max_tokens, context.tokenizer
        )
        name, call_id = clean_text(str(call.name or "")), clean_text(str(call.id))
        messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": content})
    return messages


def _available(names: list[str]) -> str:
    if len(names) == 1:
        return f"the only available tool is {names[0]!r}"
    return "available tools: " + ", ".join(repr(n) for n in names) if names else "no tool is available"
