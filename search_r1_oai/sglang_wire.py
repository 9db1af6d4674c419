"""SGLang's ``/v1/chat/completions`` wire format, in one place: the request fields that ask for token ids, the
sampling fields, the routing probe's body, and the reply parsed whichever SGLang release sent it.

Releases (measured against each one's serving code): 0.5.13 and later accept ``input_ids``,
``return_prompt_token_ids`` and ``return_meta_info``, and return ``choices[0].prompt_token_ids`` and
``choices[0].meta_info.output_token_logprobs`` as ``[logprob, id, text]`` triples; 0.5.17 adds
``choices[0].token_ids``, which 0.5.18 renames ``response_token_ids`` (read with ``logprobs.content``). Older
servers return text logprobs only, which carry no ids: :class:`TurnOutput` then has ``output_ids=None`` and the
caller decides whether the re-encoding fallback is allowed.

Pure functions and data only (no I/O), so the chat client and the policy route both use it and neither imports
the other's internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from search_r1_oai.errors import BadServerValue, PolicyError
from search_r1_oai.text import clean_text

MIN_TOKEN_ID_VERSION = "0.5.13"
CHAT_PATH = "/v1/chat/completions"

# Every parameter that shapes the sampling distribution (and so the logprobs SGLang reports), with the value that
# leaves the distribution untouched. SGLang's chat endpoint fills any of these a request leaves out from the
# model's generation_config.json (Qwen2.5-3B-Instruct: temperature 0.7, top_p 0.8, top_k 20, repetition_penalty
# 1.05) and applies penalties before computing logprobs, while slime's trainer and its native /generate path use
# none of them: so each is sent on every turn, slime's value when it gives one, the neutral one otherwise.
NEUTRAL_SAMPLING: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
# slime's SGLang-native keys that only end generation; passed on under the same name when present.
_STOP_FIELDS = ("stop", "stop_token_ids")


def chat_sampling_fields(sampling_params: dict[str, Any]) -> dict[str, Any]:
    """Translate slime's SGLang-native ``sampling_params`` to chat-completions fields.

    Every key of :data:`NEUTRAL_SAMPLING` is always set (slime's value, else the neutral one), so the engine samples
    from exactly the distribution slime asked for and no server-side default (generation_config.json) leaks in.
    ``max_new_tokens`` becomes the per-turn ``max_tokens`` (set by the caller), ``sampling_seed`` becomes ``seed``.
    Detokenisation switches (``skip_special_tokens``, ``no_stop_trim``, ``spaces_between_special_tokens``) are
    dropped: they only shape the text, and the server's tool parser needs its normal text; ids are unaffected.
    """
    fields: dict[str, Any] = {
        key: neutral if sampling_params.get(key) is None else sampling_params[key]
        for key, neutral in NEUTRAL_SAMPLING.items()
    }
    fields.update({key: sampling_params[key] for key in _STOP_FIELDS if sampling_params.get(key) is not None})
    if sampling_params.get("sampling_seed") is not None:
        fields["seed"] = sampling_params["sampling_seed"]
    if sampling_params.get("custom_params"):
        fields["custom_params"] = sampling_params["custom_params"]
    return fields


def chat_request(
    model: str,
    messages: list[dict],
    tools: list[dict] | None,
    sampling_fields: dict[str, Any],
    max_tokens: int,
    return_prompt_ids: bool = True,
) -> dict[str, Any]:
    """A turn's request body: sampled ids and logprobs always asked for, the prompt's ids when wanted
    (``input_ids`` is spliced in by :func:`encode_request`, already serialised)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        **sampling_fields,
        "max_tokens": max_tokens,
        "logprobs": True,
        "return_meta_info": True,
        "stream": False,
    }
    if return_prompt_ids:
        body["return_prompt_token_ids"] = True
    if tools:
        body["tools"] = tools
    return body


def probe_request(model: str, messages: list[dict], input_ids: list[int]) -> dict[str, Any]:
    """The routing probe's body: one greedy token conditioned on ``input_ids``, asking for every id field, so the
    reply shows whether a path forwards the token-id fields."""
    body = chat_request(model, messages, None, {"temperature": 0.0}, 1, return_prompt_ids=True)
    body["input_ids"] = input_ids
    return body


def encode_request(body: dict[str, Any], input_ids_json: str | None = None) -> bytes:
    """The request as JSON bytes, with a pre-serialised ``input_ids`` array spliced in when given."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if input_ids_json is not None:
        text = f'{text[:-1]},"input_ids":{input_ids_json}}}'
    return text.encode("utf-8")


@dataclass
class TurnOutput:
    """What one policy call returned; id fields are ``None`` when the server did not send them."""

    prompt_ids: list[int] | None
    output_ids: list[int] | None
    output_logprobs: list[float] | None
    finish_reason: str
    content: str | None
    tool_calls: list[dict] | None
    logprob_content: list[dict] | None
    latency_s: float
    prompt_tokens: int | None = None

    @property
    def has_token_ids(self) -> bool:
        """Whether the sampled ids and logprobs came back (all that later turns need)."""
        return self.output_ids is not None and self.output_logprobs is not None


def parse_chat_response(body: Any, latency_s: float = 0.0) -> TurnOutput:
    """Read one non-streaming chat completion, whichever SGLang release produced it."""
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise PolicyError(f"policy reply has no choices[0]: {body!s:.200}") from None
    meta = choice.get("meta_info") or {}
    finish = choice.get("finish_reason")
    if finish is None and isinstance(meta.get("finish_reason"), dict):
        finish = meta["finish_reason"].get("type")
    logprob_content = (choice.get("logprobs") or {}).get("content")
    output_ids, output_logprobs = _sampled_ids(choice, meta, logprob_content)
    # Ids and logprobs are taken as sent, unconverted: server_values checks them before they are used.
    return TurnOutput(
        prompt_ids=choice.get("prompt_token_ids"),
        output_ids=output_ids,
        output_logprobs=output_logprobs,
        finish_reason=str(finish or "stop"),
        content=message.get("content"),
        tool_calls=_clean_strings(message.get("tool_calls")) or None,
        logprob_content=logprob_content,
        latency_s=latency_s,
        prompt_tokens=meta.get("prompt_tokens"),
    )


def _clean_strings(value: Any) -> Any:
    """``value`` with lone surrogates replaced in every string. Tool-call arguments are JSON the policy wrote, and
    ``"\\ud800"`` in it is a lone surrogate once parsed: the calls are kept (searched with U+FFFD), not refused."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean_strings(item) for item in value]
    if isinstance(value, dict):
        return {key: _clean_strings(item) for key, item in value.items()}
    return value


def _sampled_ids(
    choice: dict, meta: dict, logprob_content: list[dict] | None
) -> tuple[list[int] | None, list[float] | None]:
    """The sampled ids and logprobs: ``meta_info`` triples (0.5.13+), else ``token_ids`` (0.5.17) or
    ``response_token_ids`` (0.5.18+) beside ``logprobs.content``; ``None`` for a release that sends neither."""
    triples = meta.get("output_token_logprobs")
    if triples is not None:
        try:
            return [t[1] for t in triples], [t[0] for t in triples]
        except (TypeError, KeyError, IndexError):
            raise BadServerValue(
                f"meta_info.output_token_logprobs is not a list of [logprob, id, text]: {str(triples)[:100]}"
            ) from None
    name = "response_token_ids" if "response_token_ids" in choice else "token_ids"
    ids = choice.get(name)
    if isinstance(ids, list) and isinstance(logprob_content, list):
        if len(ids) != len(logprob_content):
            raise BadServerValue(f"{name} has {len(ids)} entries but logprobs.content {len(logprob_content)}")
        try:
            return ids, [entry["logprob"] for entry in logprob_content]
        except (TypeError, KeyError):
            raise BadServerValue("logprobs.content entries have no logprob") from None
    return None, None
