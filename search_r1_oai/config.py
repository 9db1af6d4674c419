"""Rollout and reward settings, read from the environment once: the one place every knob lives.

Ray workers do not inherit the launching shell, so the run script forwards ``RETRIEVAL_SERVER_URL`` and every
``SEARCH_R1_*`` variable into the job's runtime environment. Unset variables take the defaults below.

Environment variables:

``RETRIEVAL_SERVER_URL`` (default ``http://127.0.0.1:8000``)
    Base URL of the retriever (``POST /retrieve``). A comma-separated list names several replicas; the attempts of
    a search step through them, and a replica that refused a connection or answered 503 is skipped by every rollout
    of the process for a few seconds (``search_r1_oai.replicas``).
``SEARCH_R1_TOPK`` (default ``3``)
    Passages returned per search query.
``SEARCH_R1_MAX_TURNS`` (default ``4``)
    Most assistant turns (policy calls) per trajectory; a trajectory still calling tools after the last one
    stops TRUNCATED.
``SEARCH_R1_CONTEXT_BUDGET`` (default ``16384``)
    Most tokens in a whole trajectory (prompt + every turn + tool results). Each turn's ``max_tokens`` is
    ``max_new_tokens`` from slime's sampling params, capped by what is left of this budget.
``SEARCH_R1_POLICY_MODEL`` (default ``default``)
    ``model`` field sent to ``/v1/chat/completions`` (SGLang serves its one model under any name).
``SEARCH_R1_POLICY_TIMEOUT_S`` (default ``600``)
    Read timeout of one policy call (a whole turn's generation), seconds.
``SEARCH_R1_RETRIEVAL_TIMEOUT_S`` (default ``30``)
    Timeout of one ``/retrieve`` call, seconds.
``SEARCH_R1_CONNECT_TIMEOUT_S`` (default ``10``)
    TCP connect timeout for both servers, seconds.
``SEARCH_R1_CONCURRENCY`` (default ``256``)
    Most concurrent requests expected per server (policy, retriever); match slime's rollout concurrency. Requests
    are spread over ``ceil(N / 8)`` pooled clients, each allowed N connections (why: ``httpclients``).
``SEARCH_R1_POLICY_RETRIES`` (default ``3``)
    Extra attempts after a policy call fails with a connection error, timeout, 5xx or 429. Other 4xx are never
    retried: the sample fails at once with the server's message.
``SEARCH_R1_RETRIEVAL_RETRIES`` (default ``3``)
    Extra attempts after a retriever call fails the same way; after the last one the tool message says so.
``SEARCH_R1_RETRY_INITIAL_WAIT_S`` (default ``0.5``) and ``SEARCH_R1_RETRY_MAX_WAIT_S`` (default ``8``)
    Exponential backoff (with jitter) between attempts: first wait, and the cap of any one wait.
``SEARCH_R1_LOG_EVERY`` (default ``100``)
    Log one trajectory turn by turn (through ``logging``, logger ``search_r1_oai.rollout``) every N samples;
    ``0`` turns it off.
``SEARCH_R1_ALLOW_REENCODE_FALLBACK`` (default ``0``)
    ``1`` lets the rollout run against an SGLang older than 0.5.13 (no token ids in the response) by
    re-encoding text; the trajectory is then NOT token-exact and the drift is counted in
    ``sample.metadata["drift_tokens"]``. With ``0`` such a server fails every sample with a message naming the
    version needed.
``SEARCH_R1_VERIFY_PROMPT_IDS`` (default ``0``)
    ``1`` asks the server for its prompt ids on every turn and checks them id for id against ours (costs JSON
    proportional to the conversation per turn). By default only the first turn's ids come from the server;
    later turns send ``input_ids``, which SGLang uses verbatim, and are checked by count (``prompt_tokens``).
``SEARCH_R1_FORMAT_SCORE`` (default ``0.2``)
    Reward of a well-formed trajectory whose answer is wrong (Search-R1's format reward); ``0`` disables it.
``SEARCH_R1_TOOL_CALL_START`` / ``SEARCH_R1_TOOL_CALL_END`` (defaults ``<tool_call>`` / ``</tool_call>``)
    Markers of a tool call in the model's raw output, used to find calls the server's parser rejected
    (malformed JSON, unknown tool) so that they become an error message instead of a silent final answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

DEFAULT_RETRIEVAL_URL = "http://127.0.0.1:8000"
ENV_PREFIX = "SEARCH_R1_"


class ConfigError(ValueError):
    """A setting in the environment has a value that cannot be used."""


_Number = TypeVar("_Number", int, float)


def _number(env: Mapping[str, str], name: str, default: _Number, minimum: _Number) -> _Number:
    """An int or float setting, parsed as the type of ``default``."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def _urls(raw: str) -> tuple[str, ...]:
    urls = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    if not urls:
        raise ConfigError("RETRIEVAL_SERVER_URL names no URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"RETRIEVAL_SERVER_URL entry {url!r} must start with http:// or https://")
    return urls


@dataclass(frozen=True)
class Settings:
    """Every rollout/reward knob; build it with :meth:`from_env` (or directly in tests). The defaults here are the
    only ones: :meth:`from_env` falls back to them."""

    retrieval_urls: tuple[str, ...] = (DEFAULT_RETRIEVAL_URL,)
    topk: int = 3
    max_turns: int = 4
    context_budget: int = 16384
    policy_model: str = "default"
    policy_timeout_s: float = 600.0
    retrieval_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    concurrency: int = 256
    policy_retries: int = 3
    retrieval_retries: int = 3
    retry_initial_wait_s: float = 0.5
    retry_max_wait_s: float = 8.0
    log_every: int = 100
    allow_reencode_fallback: bool = False
    verify_prompt_ids: bool = False
    format_score: float = 0.2
    tool_call_markers: tuple[str, str] = ("<tool_call>", "</tool_call>")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the variables documented in this module; a bad value raises :class:`ConfigError` naming it."""
        env = os.environ if env is None else env
        d, p = cls(), ENV_PREFIX
        return cls(
            retrieval_urls=_urls(env.get("RETRIEVAL_SERVER_URL") or DEFAULT_RETRIEVAL_URL),
            topk=_number(env, p + "TOPK", d.topk, 1),
            max_turns=_number(env, p + "MAX_TURNS", d.max_turns, 1),
            context_budget=_number(env, p + "CONTEXT_BUDGET", d.context_budget, 16),
            policy_model=env.get(p + "POLICY_MODEL") or d.policy_model,
            policy_timeout_s=_number(env, p + "POLICY_TIMEOUT_S", d.policy_timeout_s, 0.001),
            retrieval_timeout_s=_number(env, p + "RETRIEVAL_TIMEOUT_S", d.retrieval_timeout_s, 0.001),
            connect_timeout_s=_number(env, p + "CONNECT_TIMEOUT_S", d.connect_timeout_s, 0.001),
            concurrency=_number(env, p + "CONCURRENCY", d.concurrency, 1),
            policy_retries=_number(env, p + "POLICY_RETRIES", d.policy_retries, 0),
            retrieval_retries=_number(env, p + "RETRIEVAL_RETRIES", d.retrieval_retries, 0),
            retry_initial_wait_s=_number(env, p + "RETRY_INITIAL_WAIT_S", d.retry_initial_wait_s, 0.0),
            retry_max_wait_s=_number(env, p + "RETRY_MAX_WAIT_S", d.retry_max_wait_s, 0.0),
            log_every=_number(env, p + "LOG_EVERY", d.log_every, 0),
            allow_reencode_fallback=_bool(env, p + "ALLOW_REENCODE_FALLBACK", d.allow_reencode_fallback),
            verify_prompt_ids=_bool(env, p + "VERIFY_PROMPT_IDS", d.verify_prompt_ids),
            format_score=_number(env, p + "FORMAT_SCORE", d.format_score, 0.0),
            tool_call_markers=(
                env.get(p + "TOOL_CALL_START") or d.tool_call_markers[0],
                env.get(p + "TOOL_CALL_END") or d.tool_call_markers[1],
            ),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use (``get_settings.cache_clear()`` re-reads)."""
    return Settings.from_env()
