"""What every rollout of a process shares, built once: settings, tokenizer, HTTP pools, the route to the policy,
the tools (each with its own client), template and vocabulary caches, the sample counter.

One object instead of module globals, so a test or an evaluation run makes its own and closes it, and two of them
(say, two policies in one process) never see each other's state.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from search_r1_oai.chat_client import ChatClient
from search_r1_oai.chat_template import ToolTurnTemplate
from search_r1_oai.config import Settings
from search_r1_oai.httpclients import ClientPools
from search_r1_oai.policy_route import PolicyRoute
from search_r1_oai.reencode import TokenVocab
from search_r1_oai.tool_base import Tool, ToolSetup
from search_r1_oai.tools import build_tools, import_tool_modules


class RolloutContext:
    """Shared state of a process's rollouts against one policy URL.

    Every registered tool (:func:`search_r1_oai.tools.register_tool`, after importing ``SEARCH_R1_TOOL_MODULES``)
    is built once for the context, its own settings rows read from ``tool_args`` (slime's ``args``) and the
    environment; ``tools`` adds tools or replaces registered ones by name, and ``chat_factory`` replaces the policy
    client (the overhead benchmark replays recorded replies and canned passages through both).
    """

    def __init__(
        self,
        settings: Settings,
        tokenizer: Any,
        policy_url: str,
        *,
        tools: Mapping[str, Tool[Any]] | None = None,
        chat_factory: Callable[[], ChatClient] | None = None,
        tool_args: Any = None,
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.policy_url = policy_url.rstrip("/")
        self.pools = ClientPools()
        import_tool_modules(settings.tool_modules)
        self.tools = build_tools(ToolSetup(settings, self.pools, tool_args), tools)
        self._chat_factory = chat_factory
        # httpx connections belong to the loop that opened them, and so does the route's lock.
        self._routes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PolicyRoute] = weakref.WeakKeyDictionary()
        self._templates: dict[str, ToolTurnTemplate] = {}
        self._vocab: TokenVocab | None = None
        self._finished = itertools.count(1)

    def chat(self) -> ChatClient:
        """A policy client for one trajectory (it keeps the trajectory on one worker behind slime's router)."""
        if self._chat_factory is not None:
            return self._chat_factory()
        return ChatClient(self.policy_url, self.settings, route=self.route(), pools=self.pools)

    def route(self) -> PolicyRoute:
        """The route to the policy on the running loop (resolved lazily by the first call through it)."""
        loop = asyncio.get_running_loop()
        route = self._routes.get(loop)
        if route is None:
            route = self._routes[loop] = PolicyRoute(self.policy_url, self.settings, self.tokenizer, self.pools)
        return route

    def template(self, tools: list[dict] | None) -> ToolTurnTemplate:
        """The tool-turn template for this tools list, built on first use."""
        key = json.dumps(tools, sort_keys=True)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = ToolTurnTemplate(self.tokenizer, tools)
        return template

    @functools.cached_property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: every id a server returns must be below it."""
        return len(self.tokenizer)

    def token_vocab(self) -> TokenVocab:
        """The tokenizer's vocabulary maps, for the re-encoding fallback only."""
        if self._vocab is None:
            self._vocab = TokenVocab(self.tokenizer)
        return self._vocab

    def count_finished(self) -> int:
        """Number the trajectory that just finished (for logging one in every N)."""
        return next(self._finished)

    async def aclose(self) -> None:
        """Close the tools and the HTTP clients opened on the running loop."""
        for tool in self.tools.values():
            await tool.aclose()
        await self.pools.aclose()
