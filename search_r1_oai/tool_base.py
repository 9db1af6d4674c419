"""What a tool is: one object with the schema the policy is shown, its own client (built from the settings), the
counters it keeps per trajectory (:class:`~search_r1_oai.tool_stats.ToolStats`) and one async function that answers
every call to it made in a turn, so a tool can batch them.

A tool is added with one file holding these and one :class:`ToolSpec` passed to
:func:`search_r1_oai.tools.register_tool`; nothing else in the core names it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

from search_r1_oai.config import Settings
from search_r1_oai.httpclients import ClientPools
from search_r1_oai.text import clean_text
from search_r1_oai.tool_calls import ToolCall
from search_r1_oai.tool_stats import S, ToolStats


@dataclass(frozen=True)
class ToolReply:
    """The answer to one call. ``error`` becomes ``Error: ...`` in the tool message; ``bad_call`` says the policy
    got the call wrong (it then forfeits the format score), as opposed to a tool that failed on a good call."""

    content: str = ""
    error: str | None = None
    bad_call: bool = False

    def __post_init__(self) -> None:
        # An error often quotes what the policy wrote, which may hold a lone surrogate: it goes into the tool
        # message and the sample's metadata, so it is valid Unicode from here on.
        if self.error is not None:
            object.__setattr__(self, "error", clean_text(self.error))


class Tool(ABC, Generic[S]):
    """One tool: ``schema`` (an OpenAI function schema, as in the sample's ``tools`` column), ``stats_type`` (its
    counters), :meth:`run` (every call of a turn at once) and :meth:`aclose` (its client's connections)."""

    schema: dict[str, Any]
    stats_type: type[S]

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    @abstractmethod
    async def run(self, calls: list[ToolCall], stats: S) -> list[ToolReply]:
        """One reply per call, in order; ``stats`` are this trajectory's counters of this tool."""

    async def aclose(self) -> None:
        """Close what the tool opened (pooled HTTP connections live in the context and are closed there)."""


@dataclass(frozen=True)
class ToolSetup:
    """What a tool is built from: the settings table, the process's HTTP pools, and where its own settings rows
    are read (slime's ``args`` first, then ``env``; see :func:`search_r1_oai.tool_settings.load_tool_settings`)."""

    settings: Settings
    pools: ClientPools
    args: Any = None
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A tool's registration: its counters' kind (which also names it) and how to build it for a context."""

    stats: type[ToolStats]
    build: Callable[[ToolSetup], Tool[Any]] = field(compare=False)

    @property
    def name(self) -> str:
        return self.stats.tool


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
