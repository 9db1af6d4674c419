"""Client of SGLang's ``/v1/chat/completions`` that asks for, and reads back, the exact token ids.

The request and reply formats (which fields each SGLang release takes and sends back) are in
:mod:`search_r1_oai.sglang_wire`; where a turn goes (a server, the router, one worker behind it) is
:mod:`search_r1_oai.policy_route`'s business. This client joins them for one trajectory.
"""

from __future__ import annotations

import time
from typing import Any

from search_r1_oai.config import Settings
from search_r1_oai.errors import BadServerValue, PolicyError
from search_r1_oai.httpclients import DEFAULT_POOLS, ClientPools, RequestFailed
from search_r1_oai.policy_route import PolicyRoute, PolicySession, post_turn
from search_r1_oai.sglang_wire import (
    CHAT_PATH,
    MIN_TOKEN_ID_VERSION,
    NEUTRAL_SAMPLING,
    TurnOutput,
    chat_request,
    chat_sampling_fields,
    encode_request,
    parse_chat_response,
)

# The wire names are re-exported: callers that only talk to the policy need one import.
__all__ = [
    "CHAT_PATH",
    "MIN_TOKEN_ID_VERSION",
    "NEUTRAL_SAMPLING",
    "BadServerValue",
    "ChatClient",
    "PolicyError",
    "TurnOutput",
    "chat_sampling_fields",
    "encode_request",
    "parse_chat_response",
]


class ChatClient:
    """One trajectory's policy calls; the pooled connections are shared by every rollout on the event loop.

    With a ``route`` the calls go where the route says: a worker behind slime's router, kept for every turn of the
    trajectory, or the router itself when it keeps the token-id fields. Without one they go to ``base_url``.
    """

    def __init__(
        self,
        base_url: str,
        settings: Settings,
        route: PolicyRoute | None = None,
        pools: ClientPools | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + CHAT_PATH
        self._settings = settings
        self._route = route
        self._pools = pools or DEFAULT_POOLS
        self._session: PolicySession | None = None

    def build_request(
        self,
        messages: list[dict],
        tools: list[dict] | None,
        sampling_fields: dict[str, Any],
        max_tokens: int,
        return_prompt_ids: bool = True,
    ) -> dict[str, Any]:
        """The request body (``input_ids`` goes to :meth:`complete` separately, already serialised)."""
        model = self._settings.policy_model
        return chat_request(model, messages, tools, sampling_fields, max_tokens, return_prompt_ids)

    async def complete(self, body: dict[str, Any], input_ids_json: str | None = None) -> TurnOutput:
        """POST one turn; retry transport errors/5xx/429 with backoff, fail at once on other 4xx.

        ``input_ids_json`` (from the second turn on) makes the server condition on exactly our ids instead of
        re-rendering the history.
        """
        content = encode_request(body, input_ids_json)
        started = time.perf_counter()
        try:
            if self._route is None:
                reply = await post_turn(self._pools, self._settings, self.url, content)
            else:
                if self._session is None:
                    self._session = self._route.session()
                reply = await self._session.post(content)
        except RequestFailed as exc:
            raise PolicyError(f"policy call failed {exc}") from exc
        return parse_chat_response(reply.body, time.perf_counter() - started)
