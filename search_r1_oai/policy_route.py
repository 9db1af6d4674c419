"""Where the policy calls go: through slime's router only when it keeps the token-id fields, else straight to its
SGLang workers, one worker per trajectory.

Why: slime starts SGLang's Rust router (``sglang-router``) and hands the rollout its address. Measured with
``sglang-router==0.3.2``, the router re-serialises ``/v1/chat/completions`` from a typed request and drops
``input_ids``, ``return_prompt_token_ids`` and ``return_meta_info`` (responses pass through whole). Through it,
the first turn gets no prompt ids and later turns are re-rendered from messages: not token-exact. The router lists
its workers (``GET /workers``), so the rollout sends each trajectory's turns to one worker (SGLang's prefix cache
then serves turn k+1 from turn k), moves a trajectory to another worker only when its worker fails, and re-reads
the list when that happens. slime's own abort posts to every listed worker, so it still reaches these requests.

What the endpoint is, and whether the router forwards the fields, is found out once per process with a one-token
probe, never assumed. When no path returns server token ids, every sample fails with one message that says what
was tried (unless the re-encoding fallback is allowed, which goes through the router as before).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from search_r1_oai.chat_template import render_prompt_ids
from search_r1_oai.config import Settings
from search_r1_oai.errors import PolicyError, RouteError
from search_r1_oai.httpclients import (
    DEFAULT_POOLS,
    ClientPools,
    PostResult,
    RequestFailed,
    is_retryable,
    post_json,
    request_json,
)
from search_r1_oai.replicas import ReplicaSet
from search_r1_oai.sglang_wire import CHAT_PATH, parse_chat_response, probe_request

logger = logging.getLogger(__name__)

ROUTING_KEY_HEADER = "X-SMG-Routing-Key"
# The probe's one user message; a test server can recognise it.
PROBE_TEXT = "search-r1-oai routing probe: reply with one token"
_WORKER_LIST_MAX_AGE_S = 30.0
_WORKER_LIST_MIN_INTERVAL_S = 2.0
_RETRY_FAILED_RESOLVE_S = 30.0
_PROBE_TIMEOUT_S = 60.0

RouteMode = Literal["server", "router", "workers"]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    note: str


class PolicyRoute:
    """The route to one policy URL, shared by every trajectory of the process (on one event loop)."""

    def __init__(self, base_url: str, settings: Settings, tokenizer: Any, pools: ClientPools | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.tokenizer = tokenizer
        self.pools = pools or DEFAULT_POOLS
        self.mode: RouteMode | None = None
        self.workers = ReplicaSet([])
        self._workers_read_at = 0.0
        self._refreshing: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._failure: tuple[float, str] | None = None
        # When the policy last could not be reached while resolving, and why (told to those who waited meanwhile).
        self._unreachable: tuple[float, str] | None = None

    # ---- resolution ------------------------------------------------------------------------------------------

    async def resolve(self) -> RouteMode:
        """Find out once how to reach the policy; raises :class:`RouteError` (for every caller, re-checked after
        a while) when no path returns token ids."""
        if self.mode is not None:
            if self.mode == "workers" and time.monotonic() - self._workers_read_at > _WORKER_LIST_MAX_AGE_S:
                self._refresh_in_background()
            return self.mode
        asked_at = time.monotonic()
        async with self._lock:
            if self.mode is not None:
                return self.mode
            if self._failure is not None and time.monotonic() - self._failure[0] < _RETRY_FAILED_RESOLVE_S:
                raise RouteError(self._failure[1])
            if self._unreachable is not None and self._unreachable[0] >= asked_at:
                # Found out while this call waited for the lock: every waiter would otherwise spend a whole
                # policy deadline of its own, one after the other.
                raise PolicyError(self._unreachable[1])
            try:
                self.mode = await self._discover()
            except RouteError as exc:
                self._failure = (time.monotonic(), str(exc))
                logger.error("%s", exc)
                raise
            except PolicyError as exc:
                self._unreachable = (time.monotonic(), str(exc))
                raise
            logger.info("policy route: %s (%s)", self.mode, self.describe())
            return self.mode

    def describe(self) -> str:
        if self.mode == "workers":
            return f"{len(self.workers.urls)} worker(s) behind the router at {self.base_url}: {list(self.workers.urls)}"
        if self.mode == "router":
            return f"through the router at {self.base_url} with {ROUTING_KEY_HEADER}"
        return f"straight to {self.base_url}"

    async def _discover(self) -> RouteMode:
        workers = await self._read_workers()
        if workers is None:
            # Not a router: an SGLang server itself. Whether it returns ids is checked on every sample's first turn.
            self.workers.update([self.base_url])
            return "server"
        router = await self._probe(self.base_url)
        if router.ok:
            return "router"
        notes = []
        for url in workers:
            probe = await self._probe(url)
            if probe.ok:
                self.workers.update(workers)
                self._workers_read_at = time.monotonic()
                return "workers"
            notes.append(f"{url}: {probe.note}")
        if self.settings.allow_reencode_fallback:
            logger.warning("no path returns token ids; SEARCH_R1_ALLOW_REENCODE_FALLBACK=1: going through the router")
            return "router"
        tried = "; ".join(notes) if notes else "the router lists no workers"
        raise RouteError(
            f"no token-exact path to the policy: the router at {self.base_url} does not forward the token-id fields "
            f"({router.note}), and its workers were tried directly: {tried}. Make the workers the router lists "
            f"reachable from the rollout process and run SGLang >= 0.5.13 on them, or set "
            f"SEARCH_R1_ALLOW_REENCODE_FALLBACK=1 to train on re-encoded text (not token-exact)"
        )

    async def _read_workers(self) -> list[str] | None:
        """The router's healthy workers (all listed ones if none is healthy); ``None`` when the URL is no router.

        Raises :class:`PolicyError` when the policy cannot be reached (after the policy retries): not a verdict on
        the route, so it is not remembered."""
        client = self.pools.client("policy-admin", self.settings, self.settings.connect_timeout_s)
        url = self.base_url + "/workers"
        try:
            reply = await request_json(
                client,
                "GET",
                url,
                self.settings.policy_retries,
                self.settings,
                attempt_timeout_s=self.settings.connect_timeout_s,
                deadline_s=self.settings.policy_deadline_s,
            )
        except RequestFailed as exc:
            if isinstance(exc.__cause__, httpx.HTTPStatusError) and not is_retryable(exc.__cause__):
                return None  # 404 and friends: an SGLang server, not a router
            if isinstance(exc.__cause__, ValueError):
                return None
            raise PolicyError(f"cannot reach the policy server {exc}") from exc
        try:
            entries = [
                (str(w["url"]).rstrip("/"), w.get("is_healthy", True) is not False) for w in reply.body["workers"]
            ]
        except (KeyError, TypeError, AttributeError):
            return None
        healthy = [url for url, ok in entries if ok]
        return healthy or [url for url, _ in entries]

    async def _probe(self, url: str) -> ProbeResult:
        """One-token request with ``input_ids``: does ``url`` condition on them and return the ids?"""
        messages = [{"role": "user", "content": PROBE_TEXT}]
        ids = render_prompt_ids(self.tokenizer, messages, None)
        body = probe_request(self.settings.policy_model, messages, ids)
        client = self.pools.client("policy-admin", self.settings, _PROBE_TIMEOUT_S)
        try:
            reply = await request_json(
                client,
                "POST",
                url + CHAT_PATH,
                self.settings.policy_retries,
                self.settings,
                attempt_timeout_s=min(_PROBE_TIMEOUT_S, self.settings.policy_timeout_s),
                deadline_s=self.settings.policy_deadline_s,
                json=body,
            )
            output = parse_chat_response(reply.body)
        except (RequestFailed, PolicyError) as exc:
            return ProbeResult(False, str(exc))
        if output.prompt_ids is None or not output.has_token_ids:
            return ProbeResult(False, "the reply has no prompt_token_ids / meta_info token ids")
        if output.prompt_ids != ids:
            return ProbeResult(False, "the server did not condition on the input_ids sent")
        return ProbeResult(True, "token ids returned")

    # ---- worker list upkeep ----------------------------------------------------------------------------------

    def _refresh_in_background(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        if time.monotonic() - self._workers_read_at < _WORKER_LIST_MIN_INTERVAL_S:
            return
        self._workers_read_at = time.monotonic()
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            workers = await self._read_workers()
        except PolicyError as exc:
            logger.warning("could not re-read the router's workers: %s", exc)
            return
        if workers:
            self.workers.update(workers)

    def worker_failed(self, url: str, exc: BaseException) -> None:
        """A worker call failed: skip it if it is down, and re-read the router's list soon."""
        self.workers.record_failure(url, exc)
        if self.mode == "workers":
            self._refresh_in_background()

    def session(self) -> PolicySession:
        return PolicySession(self)


async def post_turn(
    pools: ClientPools,
    settings: Settings,
    url: str | Callable[[int], str],
    content: bytes,
    headers: dict[str, str] | None = None,
    on_failure: Callable[[str, BaseException], None] | None = None,
) -> PostResult:
    """POST one encoded turn with the policy's timeouts, retries and deadline (:class:`RequestFailed` when every
    attempt failed); ``url`` and ``on_failure`` as in :func:`~search_r1_oai.httpclients.post_json`."""
    client = pools.client("policy", settings, settings.policy_timeout_s)
    return await post_json(
        client,
        url,
        settings.policy_retries,
        settings,
        attempt_timeout_s=settings.policy_timeout_s,
        deadline_s=settings.policy_deadline_s,
        on_failure=on_failure,
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
    )


class PolicySession:
    """One trajectory's way to the policy: the same worker for every turn, another one only after a failure."""

    def __init__(self, route: PolicyRoute) -> None:
        self.route = route
        self.key = uuid.uuid4().hex
        self.worker: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {ROUTING_KEY_HEADER: self.key} if self.route.mode == "router" else {}

    def url(self, attempt: int) -> str:
        """The URL for an attempt of a turn (``post_json`` asks before each attempt)."""
        if self.route.mode == "router":
            return self.route.base_url + CHAT_PATH
        if (
            self.worker is None
            or self.route.workers.is_skipped(self.worker)
            or self.worker not in self.route.workers.urls
        ):
            order = self.route.workers.order()
            self.worker = order[0] if order else self.route.base_url
        return self.worker + CHAT_PATH

    async def post(self, content: bytes) -> PostResult:
        """POST one encoded turn along this trajectory's way: each attempt asks :meth:`url` where to go, and a
        failed one moves the trajectory to another worker (:meth:`on_failure`)."""
        await self.route.resolve()  # RouteError (a PolicyError) when no path returns token ids
        reply = await post_turn(
            self.route.pools, self.route.settings, self.url, content, self.headers, on_failure=self.on_failure
        )
        self.on_success(reply.url)
        return reply

    def on_success(self, url: str) -> None:
        """The worker answered: if it had been skipped, it is back in everyone's rotation."""
        if self.route.mode != "router":
            self.route.workers.record_success(url.removesuffix(CHAT_PATH))

    def on_failure(self, url: str, exc: BaseException) -> None:
        if self.route.mode == "router":
            return
        worker = url.removesuffix(CHAT_PATH)
        self.route.worker_failed(worker, exc)
        if is_retryable(exc) and len(self.route.workers.urls) > 1:
            # Move on now rather than retrying a worker that just failed; later turns stay on the new one.
            others = [w for w in self.route.workers.order() if w != worker]
            self.worker = others[0]
