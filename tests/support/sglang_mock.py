"""An SGLang-compatible ``/v1/chat/completions`` test server with scripted assistant outputs.

Why: the rollout must be token-exact against SGLang's real behaviour (prompt ids, output ids, logprobs, qwen25
tool-call parsing), and a GPU server is not available in tests. This server tokenizes scripted assistant text with
the real offline Qwen2.5 tokenizer, renders prompts with the tokenizer's own chat template the way SGLang does, and
records every request's conditioning ids, so a test can recompute the invariant independently.

Behaviour follows SGLang 0.5.15 (``python/sglang/srt/entrypoints/openai/serving_chat.py``, ``protocol.py``,
``function_call/qwen25_detector.py``, ``managers/tokenizer_manager.py``); ``version`` switches the id fields:

* ``"0.5.12"``: old server, ignores ``input_ids`` / ``return_*`` (always renders ``messages``), returns no ids.
* ``"0.5.15"``: ``input_ids``, ``return_prompt_token_ids`` -> ``prompt_token_ids``, ``return_meta_info`` ->
  ``meta_info`` (``output_token_logprobs`` triples ``[logprob, token_id, text]`` when ``logprobs``).
* ``"0.5.17"``: also ``return_token_ids`` -> ``choices[i].token_ids`` (all sampled ids, stop token included) and
  ``prompt_token_ids``; ``"0.5.18"``: the output ids are named ``response_token_ids``.

Faults are scripted per reply too: ``Reply(fault="trickle" | "stall")`` sends the headers and then the body a byte a
second, or nothing (``tests/support/slow_responses.py``); ``Reply(corrupt=f)`` lets ``f`` edit the response before it
is sent (NaN and lone surrogates included: such a body is written with ``allow_nan`` and ASCII escapes), for the
tests of values no server should send. What is recorded is the response before ``corrupt``.

Sampling is scripted: ``MockSGLang.script(question, replies)`` queues raw assistant texts (special tokens included)
per conversation; a request is matched by the question string in its prompt and pops the next reply. The rollout's
routing probe (``policy_route.PROBE_TEXT``) is answered with ``OK`` like any model would, recorded under that text. Generation
stops like SGLang's ``Req.check_finished``: ``max_tokens`` first, then stop ids (``<|im_end|>``, ``<|endoftext|>``,
request ``stop_token_ids``), then request ``stop`` strings. Logprobs are :func:`mock_logprob` of id and position.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import fastapi
from fastapi.responses import JSONResponse

from search_r1_oai.policy_route import PROBE_TEXT
from search_r1_oai.reencode import byte_level_alphabet
from tests.support.live_server import serve_app
from tests.support.scripted_logprob import mock_logprob
from tests.support.sglang_releases import MOCK_VERSION
from tests.support.slow_responses import Fault, slow_response

logger = logging.getLogger(__name__)

# The versions of each supported release (tests/sglang_releases.txt), plus shapes of releases that were never
# measured, kept for the rollout's handling of them: no ids (0.5.12), token_ids (0.5.17), response_token_ids (0.5.18).
UNMEASURED_VERSIONS = ("0.5.12", "0.5.17", "0.5.18")
SUPPORTED_VERSIONS = tuple(
    sorted({*MOCK_VERSION.values(), *UNMEASURED_VERSIONS}, key=lambda v: tuple(int(part) for part in v.split(".")))
)
# Qwen2.5-3B-Instruct's generation_config.json sampling fields: SGLang's chat endpoint (sampling_defaults="model")
# uses them for every sampling field a request leaves out.
QWEN25_GENERATION_DEFAULTS: dict[str, float | int] = {
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}
# SGLang's SamplingParams: top_k -1 ("whole vocabulary") is stored as this.
TOP_K_ALL = 1 << 30
TOOL_CALL_START = "<tool_call>"
# SGLang's Qwen25Detector: bot_token "<tool_call>\n", eot_token "\n</tool_call>"; a block without those newlines is
# not parsed (but still counts as "has a tool call").
_TOOL_BLOCK = re.compile(re.escape("<tool_call>\n") + "(.*?)" + re.escape("\n</tool_call>"), re.DOTALL)
# Qwen2.5-Instruct's generation_config eos_token_id: <|im_end|>, <|endoftext|>.
DEFAULT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
_RETURN_FIELDS = ("return_prompt_token_ids", "return_meta_info", "return_token_ids")


@dataclass
class Reply:
    """One scripted assistant turn: the raw text the 'model' samples, or an HTTP error instead.

    ``delay_s``: the mock answers that much later; the scripted engine in real SGLang (``real_sglang``) holds the
    request that long after its first token, so an abort request can reach it mid-turn. ``fault`` and ``corrupt``
    (the mock only): the reply trickles or stalls, or is edited in place before it is sent.
    """

    text: str = ""
    status: int = 200
    finish_reason: str | None = None
    delay_s: float = 0.0
    fault: Fault | None = None
    corrupt: Callable[[dict[str, Any]], None] | None = None


@dataclass
class RecordedRequest:
    """What the server saw and did for one request, for independent recomputation in tests."""

    question: str
    body: dict
    prompt_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]
    finish_reason: str | None
    status: int
    response: dict | None = field(default=None, repr=False)
    # The sampling parameters the engine was given (SGLang's ``SamplingParams`` fields), None if none reached it.
    sampling_params: dict | None = None


class MockRequestError(Exception):
    """A request the server rejects with an SGLang-style error body."""

    def __init__(self, message: str, status: int = 400, err_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def error_body(message: str, status: int, err_type: str | None = None) -> dict[str, Any]:
    """SGLang's ``ErrorResponse``: ``{"object": "error", "message", "type", "param", "code"}``.

    The handler's own 400s say ``BadRequestError``; those from request validation (e.g. streaming with the
    ``return_*`` fields) keep the status phrase, ``BadRequest``.
    """
    if err_type is None:
        try:
            err_type = HTTPStatus(status).phrase.replace(" ", "")
        except ValueError:
            err_type = "Error"
        if status == 400:
            err_type = "BadRequestError"
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": status}


_TOKENIZER_COPIES: dict[int, tuple[Any, Any]] = {}
_TOKENIZER_COPIES_LOCK = threading.Lock()


def _private_tokenizer(tokenizer: Any) -> Any:
    """A per-process copy of ``tokenizer`` so the server thread never shares a Rust tokenizer with the client."""
    with _TOKENIZER_COPIES_LOCK:
        cached = _TOKENIZER_COPIES.get(id(tokenizer))
        if cached is None or cached[0] is not tokenizer:
            cached = (tokenizer, copy.deepcopy(tokenizer))
            _TOKENIZER_COPIES[id(tokenizer)] = cached
        return cached[1]


class MockSGLang:
    """Scripted SGLang chat-completions server state plus its FastAPI ``app``."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        version: str = "0.5.15",
        context_length: int = 32768,
        model: str = "qwen2.5-3b",
        legacy_malformed_tool_calls: bool | None = None,
        generation_defaults: dict[str, float | int] | None = None,
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"version must be one of {SUPPORTED_VERSIONS}, got {version!r}")
        self.tokenizer = _private_tokenizer(tokenizer)
        self.version = version
        self.context_length = context_length
        self.model = model
        # Before 0.5.16 a "<tool_call>" with no parsable call gave `tool_calls: []`, finish_reason "tool_calls" and the
        # raw text as content (measured on 0.5.15.post1); 0.5.16+ give no tool calls and the original finish_reason.
        if legacy_malformed_tool_calls is None:
            legacy_malformed_tool_calls = _version_tuple(version) < (0, 5, 16)
        self.legacy_malformed_tool_calls = legacy_malformed_tool_calls
        # What generation_config.json fills in (the model directory's); {} is a model without one.
        self.generation_defaults = dict(
            QWEN25_GENERATION_DEFAULTS if generation_defaults is None else generation_defaults
        )
        self.requests: list[RecordedRequest] = []
        self.stop_token_ids: list[int] = [self.tokenizer.convert_tokens_to_ids(tok) for tok in DEFAULT_STOP_TOKENS]
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self.app = self._build_app()

    # ---- scripting -------------------------------------------------------------------------------------------
    def script(self, question: str, replies: list[Reply | str]) -> None:
        """Queue the assistant turns of the conversation whose prompt contains ``question`` (appends)."""
        if not question:
            raise ValueError("question must be a non-empty string")
        queued = [Reply(text=r) if isinstance(r, str) else r for r in replies]
        with self._lock:
            self._scripts.setdefault(question, []).extend(queued)

    def replace_script(self, question: str, replies: list[Reply | str]) -> None:
        """Drop the unused replies of ``question`` and queue ``replies`` instead."""
        with self._lock:
            self._scripts.pop(question, None)
        self.script(question, replies)

    def requests_for(self, question: str) -> list[RecordedRequest]:
        """Recorded requests matched to ``question``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.question == question]

    def remaining(self, question: str) -> int:
        """How many scripted replies of ``question`` are still unused."""
        with self._lock:
            return len(self._scripts.get(question, []))

    @property
    def _new_tool_call_shape(self) -> bool:
        """0.5.23's response details: tool calls indexed by call, no ``tool_calls`` key without calls, usage's
        ``completion_tokens_details`` (measured on 0.5.23; releases between 0.5.15 and 0.5.23 were not measured)."""
        return _version_tuple(self.version) >= (0, 5, 23)

    @property
    def honours_ids(self) -> bool:
        """Whether this version accepts ``input_ids`` and returns prompt ids / meta_info (SGLang >= 0.5.13)."""
        return _version_tuple(self.version) >= (0, 5, 13)

    # ---- prompt side -----------------------------------------------------------------------------------------
    def render_prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """Prompt ids SGLang builds from ``messages`` + ``tools`` (no ``input_ids``), via the Jinja chat template.

        Like SGLang: messages go through its pydantic models (content ``None`` -> ``""``), tool-call ``arguments``
        strings are parsed to dicts, tools are re-serialised with the ``strict`` key, ``add_generation_prompt``.
        """
        messages = [_normalise_message(m) for m in body["messages"]]
        tools = None
        if body.get("tools") and body.get("tool_choice", "auto") != "none":
            tools = [_normalise_tool(t, self.version) for t in body["tools"]]
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, tools=tools
            )
        except Exception as exc:  # the template's own errors are client errors in SGLang too
            raise MockRequestError(f"chat template failed: {exc}") from exc
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))

    def _match_question(
        self, body: dict[str, Any], prompt_ids: list[int], used_input_ids: bool, *, strict: bool = True
    ) -> str:
        if used_input_ids:
            haystack = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        else:
            haystack = _first_user_text(body["messages"])
        with self._lock:
            candidates = [q for q in self._scripts if q in haystack]
        if not candidates:
            if not strict:
                return ""
            where = "the decoded input_ids" if used_input_ids else "the first user message"
            raise MockRequestError(f"MockSGLang: no scripted question occurs in {where}: {haystack[-300:]!r}")
        return max(candidates, key=len)

    # ---- request handling ------------------------------------------------------------------------------------
    def _validate(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise MockRequestError("request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise MockRequestError("Field 'messages' is required and must be a list of messages.")
        if not messages:
            raise MockRequestError("Messages cannot be empty.")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise MockRequestError(f"messages[{i}] must be an object with a string 'role'.")
        if body.get("n", 1) != 1:
            raise MockRequestError("MockSGLang supports n=1 only.")
        max_out = _max_new_tokens(body)
        if max_out is not None and (not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 0):
            raise MockRequestError(f"max_tokens must be a non-negative integer, got {max_out!r}")
        if max_out and max_out > self.context_length:
            raise MockRequestError(
                f"max_completion_tokens is too large: {max_out}."
                f"This model supports at most {self.context_length} completion tokens."
            )
        if self.honours_ids and body.get("stream"):
            for name in ("return_prompt_token_ids", "return_meta_info"):
                if body.get(name):
                    raise MockRequestError(
                        f"{name} is not supported with streaming. Please set stream=false when using {name}=true.",
                        err_type="BadRequest",
                    )
        if body.get("stream"):
            raise MockRequestError("MockSGLang does not implement stream=true; send stream=false.")

    def _prompt_ids(self, body: dict[str, Any]) -> tuple[list[int], bool]:
        input_ids = body.get("input_ids") if self.honours_ids else None
        if input_ids is None:
            return self.render_prompt_ids(body), False
        if not isinstance(input_ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in input_ids
        ):
            raise MockRequestError("input_ids must be a list of integers.")
        vocab = len(self.tokenizer)
        if any(i < 0 or i >= vocab for i in input_ids):
            raise MockRequestError(f"The input_ids contain values outside the vocab size ({vocab}).")
        return list(input_ids), True

    def _check_context(self, prompt_len: int, max_new: int | None) -> None:
        # SGLang's tokenizer_manager rejects with `>=`, in this order.
        if prompt_len >= self.context_length:
            raise MockRequestError(
                f"The input ({prompt_len} tokens) is longer than the model's context length "
                f"({self.context_length} tokens)."
            )
        if max_new is not None and max_new + prompt_len >= self.context_length:
            raise MockRequestError(
                f"Requested token count exceeds the model's maximum context length of {self.context_length} "
                f"tokens. You requested a total of {max_new + prompt_len} tokens: {prompt_len} tokens from the "
                f"input messages and {max_new} tokens for the completion. Please reduce the number of tokens in "
                f"the input messages or the completion to fit within the limit."
            )

    def _is_probe(self, body: dict[str, Any], prompt_ids: list[int], used_input_ids: bool) -> bool:
        """The rollout's routing probe (``policy_route.PROBE_TEXT``), which is never scripted."""
        if used_input_ids:
            return PROBE_TEXT in self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        return PROBE_TEXT in _first_user_text(body["messages"])

    def _pop_reply(self, question: str) -> Reply:
        queue = self._scripts.get(question)
        if not queue:
            raise MockRequestError(f"MockSGLang: the script for question {question!r} is exhausted.")
        return queue.pop(0)

    def _sample(
        self, reply: Reply, body: dict[str, Any], prompt_len: int, max_new: int | None
    ) -> tuple[list[int], str, int | str | None]:
        """Output ids, finish_reason type and matched stop (id or string) for a scripted text.

        Mirrors SGLang's per-token ``Req.check_finished`` order: the length limit first (so a stop token that is
        exactly the ``max_tokens``-th token still reports ``length``), then stop token ids, then stop strings.
        """
        scripted = list(self.tokenizer.encode(reply.text, add_special_tokens=False))
        stop_ids = set(body.get("stop_token_ids") or [])
        if not body.get("ignore_eos"):
            stop_ids.update(self.stop_token_ids)
        stop = body.get("stop") or []
        stop_strs = [stop] if isinstance(stop, str) else [s for s in stop if s]
        budget = self.context_length - prompt_len - 1 if max_new is None else max_new
        out: list[int] = []
        finish: str = "length"
        matched: int | str | None = None
        for tok in scripted:
            if len(out) >= budget:
                break
            out.append(tok)
            if len(out) >= budget:
                break
            if tok in stop_ids:
                finish, matched = "stop", tok
                break
            if stop_strs:
                tail = self.tokenizer.decode(out)
                hit = next((s for s in stop_strs if s in tail), None)
                if hit is not None:
                    finish, matched = "stop", hit
                    break
        if reply.finish_reason == "abort":
            return out, "abort", None
        return out, finish, matched

    def handle(self, body: Any) -> tuple[int, dict[str, Any], float]:
        """Process one request body synchronously: ``(status, json_body, delay_s)``; records it."""
        status, payload, reply = self._handle(body)
        return status, payload, reply.delay_s if reply is not None else 0.0

    def _handle(self, body: Any) -> tuple[int, dict[str, Any], Reply | None]:
        """:meth:`handle`, with the scripted reply (``None`` for a rejected request)."""
        question, prompt_ids = "", []
        try:
            self._validate(body)
            prompt_ids, used_input_ids = self._prompt_ids(body)
            max_new = _max_new_tokens(body)
            # Match leniently first so a context-length rejection (which comes before sampling) is still attributed.
            question = self._match_question(body, prompt_ids, used_input_ids, strict=False)
            self._check_context(len(prompt_ids), max_new)
            if not question and self._is_probe(body, prompt_ids, used_input_ids):
                question, reply = PROBE_TEXT, Reply(text="OK<|im_end|>")  # a model answers anything
            else:
                if not question:
                    self._match_question(body, prompt_ids, used_input_ids)  # raises with the explanation
                with self._lock:
                    reply = self._pop_reply(question)
        except MockRequestError as err:
            self._record(question, body, prompt_ids, [], [], None, err.status, None)
            return err.status, error_body(err.message, err.status, err.err_type), None
        sampling = self.engine_sampling_params(body)
        if reply.status != 200:
            message = reply.text or f"MockSGLang scripted error {reply.status}"
            self._record(question, body, prompt_ids, [], [], None, reply.status, None, sampling)
            return reply.status, error_body(message, reply.status), reply
        output_ids, finish, matched = self._sample(reply, body, len(prompt_ids), max_new)
        logprobs = [mock_logprob(tok, len(prompt_ids) + i) for i, tok in enumerate(output_ids)]
        response = self._build_response(body, prompt_ids, output_ids, logprobs, finish, matched)
        finish_out = response["choices"][0]["finish_reason"]
        self._record(question, body, prompt_ids, output_ids, logprobs, finish_out, 200, response, sampling)
        if reply.corrupt is not None:
            response = copy.deepcopy(response)
            reply.corrupt(response)
        return 200, response, reply

    def engine_sampling_params(self, body: dict[str, Any]) -> dict[str, Any]:
        """The ``SamplingParams`` SGLang's chat handler would hand its engine for ``body``.

        Like ``ChatCompletionRequest.to_sampling_params`` then ``SamplingParams.__post_init__``: a field the request
        leaves out (or sends as null) comes from the model's generation_config.json, then SGLang's default;
        temperature 0 means greedy (top_k 1), top_k -1 means the whole vocabulary (stored as ``TOP_K_ALL``).
        """

        def pick(name: str, default: float | int) -> Any:
            value = body.get(name)
            return self.generation_defaults.get(name, default) if value is None else value

        temperature, top_k = pick("temperature", 1.0), pick("top_k", -1)
        if 0 <= temperature < 1e-6:
            temperature, top_k = 1.0, 1
        if top_k == -1:
            top_k = TOP_K_ALL
        stop = body.get("stop")
        stop_ids = {int(t) for t in body.get("stop_token_ids") or [] if t is not None}
        tools_active = bool(body.get("tools")) and body.get("tool_choice", "auto") != "none"
        return {
            "temperature": temperature,
            "top_p": pick("top_p", 1.0),
            "top_k": top_k,
            "min_p": pick("min_p", 0.0),
            "repetition_penalty": pick("repetition_penalty", 1.0),
            "frequency_penalty": body.get("frequency_penalty") or 0.0,
            "presence_penalty": body.get("presence_penalty") or 0.0,
            "max_new_tokens": _max_new_tokens(body),
            "stop_strs": [stop] if isinstance(stop, str) else list(stop or []),
            "stop_token_ids": sorted(stop_ids) or None,
            "ignore_eos": bool(body.get("ignore_eos", False)),
            # The chat handler turns skip_special_tokens off whenever tools are parsed.
            "skip_special_tokens": False if tools_active else bool(body.get("skip_special_tokens", True)),
            "no_stop_trim": bool(body.get("no_stop_trim", False)),
            "sampling_seed": body.get("seed"),
        }

    def _record(
        self, question, body, prompt_ids, output_ids, logprobs, finish, status, response, sampling=None
    ) -> None:
        record = RecordedRequest(
            question=question,
            body=copy.deepcopy(body) if isinstance(body, dict) else {"_raw": body},
            prompt_ids=list(prompt_ids),
            output_ids=list(output_ids),
            output_logprobs=list(logprobs),
            finish_reason=finish,
            status=status,
            response=response,
            sampling_params=sampling,
        )
        with self._lock:
            self.requests.append(record)

    # ---- response side ---------------------------------------------------------------------------------------
    def _build_response(
        self,
        body: dict[str, Any],
        prompt_ids: list[int],
        output_ids: list[int],
        logprobs: list[float],
        finish: str,
        matched: int | str | None,
    ) -> dict[str, Any]:
        tools = body.get("tools") or []
        parse_tools = bool(tools) and body.get("tool_choice", "auto") != "none"
        # SGLang forces skip_special_tokens=False when tools are active; the matched stop token is trimmed.
        skip_special = False if parse_tools else bool(body.get("skip_special_tokens", True))
        trim = finish == "stop" and not body.get("no_stop_trim")
        text_ids = output_ids[:-1] if trim and isinstance(matched, int) else output_ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=skip_special)
        if trim and isinstance(matched, str) and matched in text:
            text = text[: text.index(matched)]

        finish_reason: dict[str, Any] = {"type": finish}
        if finish == "stop":
            finish_reason["matched"] = matched
        elif finish == "length":
            finish_reason["length"] = len(output_ids)
        elif finish == "abort":
            # SGLang's FINISH_ABORT() for an abort request: the scheduler sets it; one more decode step follows.
            finish_reason.update(message="Aborted", status_code=None, err_type=None)

        tool_calls = None
        if parse_tools and TOOL_CALL_START in text:
            content, tool_calls = parse_qwen25_tool_calls(text, tools, index_by_call=self._new_tool_call_shape)
            if tool_calls is None and self.legacy_malformed_tool_calls:
                tool_calls = []  # and the raw text stays the content
            else:
                text = content
            if tool_calls is not None and finish_reason["type"] == "stop":
                finish_reason = {"type": "tool_calls", "matched": None}

        piece_texts = [self.tokenizer.decode([tok]) for tok in output_ids]
        piece_bytes = [self._token_bytes(tok, piece) for tok, piece in zip(output_ids, piece_texts, strict=True)]
        want_logprobs = bool(body.get("logprobs"))
        top_n = int(body.get("top_logprobs") or 0)
        choice_logprobs = None
        if want_logprobs:
            choice_logprobs = {
                "content": [
                    {
                        "token": piece,
                        "bytes": raw,
                        "logprob": lp,
                        "top_logprobs": ([{"token": piece, "bytes": raw, "logprob": lp}] if top_n else []),
                    }
                    for piece, raw, lp in zip(piece_texts, piece_bytes, logprobs, strict=True)
                ]
            }

        rid = uuid.uuid4().hex
        new_api = self.honours_ids
        content: str | None = text if text else ("" if new_api else None)
        message: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": None}
        if tool_calls is not None or not self._new_tool_call_shape:
            message["tool_calls"] = tool_calls  # 0.5.23 leaves the key out when there are none
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": choice_logprobs,
            "finish_reason": finish_reason["type"],
            "matched_stop": finish_reason.get("matched"),
        }
        token_ids_api = _version_tuple(self.version) >= (0, 5, 17) and bool(body.get("return_token_ids"))
        if new_api and (body.get("return_prompt_token_ids") or token_ids_api):
            choice["prompt_token_ids"] = list(prompt_ids)
        if token_ids_api:
            key = "response_token_ids" if _version_tuple(self.version) >= (0, 5, 18) else "token_ids"
            choice[key] = list(output_ids)
        if new_api and body.get("return_meta_info"):
            meta: dict[str, Any] = {
                "id": rid,
                "finish_reason": finish_reason,
                "prompt_tokens": len(prompt_ids),
                "weight_version": "default",
                "num_retractions": 0,
            }
            if want_logprobs:
                meta["input_token_logprobs"] = []
                meta["output_token_logprobs"] = [
                    [lp, tok, piece] for lp, tok, piece in zip(logprobs, output_ids, piece_texts, strict=True)
                ]
                meta["output_token_logprobs_length"] = len(output_ids)
            meta.update(
                reasoning_tokens=0,
                completion_tokens=len(output_ids),
                cached_tokens=0,  # a real engine's prefix cache reports hits here; a script has none
                cached_tokens_details=None,
                dp_rank=0,
                e2e_latency=0.001,
                response_sent_to_client_ts=time.time(),
            )
            choice["meta_info"] = meta
        usage: dict[str, Any] = {
            "prompt_tokens": len(prompt_ids),
            "total_tokens": len(prompt_ids) + len(output_ids),
            "completion_tokens": len(output_ids),
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
        }
        if self._new_tool_call_shape:
            usage["completion_tokens_details"] = None
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "default"),
            "choices": [choice],
            "usage": usage,
            "metadata": {"weight_version": "default"},
        }

    def _token_bytes(self, token_id: int, display: str) -> list[int]:
        """``logprobs.content[i].bytes``: the UTF-8 of the displayed text, so a token holding part of a character
        shows U+FFFD's bytes; 0.5.23 reports the token's own bytes (byte-level BPE) instead."""
        if _version_tuple(self.version) >= (0, 5, 23):
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            decoder = _byte_decoder()
            if piece and all(ch in decoder for ch in piece):
                return [decoder[ch] for ch in piece]
        return list(display.encode("utf-8"))

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def _build_app(self) -> fastapi.FastAPI:
        app = fastapi.FastAPI(title="MockSGLang")

        @app.get("/health")
        async def health() -> fastapi.Response:
            return fastapi.Response(status_code=200)

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            card = {
                "id": self.model,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "sglang",
                "root": self.model,
                "max_model_len": self.context_length,
            }
            return {"object": "list", "data": [card]}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: fastapi.Request) -> fastapi.Response:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError as exc:
                self._record("", {"_raw": raw.decode("utf-8", "replace")}, [], [], [], None, 400, None)
                return JSONResponse(error_body(f"request body is not valid JSON: {exc}", 400), status_code=400)
            status, payload, reply = self._handle(body)
            if reply is not None and reply.delay_s > 0:
                await asyncio.sleep(reply.delay_s)
            if reply is None or (reply.fault is None and reply.corrupt is None):
                return JSONResponse(payload, status_code=status)
            # NaN and lone surrogates as a careless server would write them: JSONResponse refuses both.
            content = json.dumps(payload, allow_nan=True).encode("ascii")
            if reply.fault is not None:
                return slow_response(reply.fault, content, status=status)
            return fastapi.Response(content, status_code=status, media_type="application/json")

        return app


# ---- helpers shared by the server and tests --------------------------------------------------------------------
def parse_qwen25_tool_calls(
    text: str, tools: list[dict[str, Any]], *, index_by_call: bool = False
) -> tuple[str, list[dict[str, Any]] | None]:
    """SGLang's qwen25 parser, non-streaming: ``(content, tool_calls or None)``.

    Content is the text before the first ``<tool_call>``, stripped; text between/after blocks is dropped. A block
    with bad JSON or an unknown function name is dropped (logged); no valid call -> ``None``. ``index`` is the
    position of the function in ``tools`` (``parse_base_json``'s tool_index, what 0.5.15.post1 returns: two calls
    of one tool both get 0), or with ``index_by_call`` the call's position (0.5.23).
    """
    tool_index = {
        t.get("function", {}).get("name"): i for i, t in enumerate(tools) if t.get("function", {}).get("name")
    }
    content = text[: text.find(TOOL_CALL_START)].strip()
    calls: list[dict[str, Any]] = []
    for block in _TOOL_BLOCK.findall(text):
        try:
            parsed = json.loads(block.strip())
        except json.JSONDecodeError:
            logger.warning("MockSGLang: failed to parse tool call JSON: %r", block)
            continue
        for action in parsed if isinstance(parsed, list) else [parsed]:
            name = action.get("name") if isinstance(action, dict) else None
            if not (name and name in tool_index):
                logger.warning("MockSGLang: model attempted to call undefined function: %r", name)
                continue
            arguments = action.get("parameters") or action.get("arguments", {})
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "index": len(calls) if index_by_call else tool_index[name],
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
                }
            )
    return content, (calls or None)


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's character -> byte map (the inverse of the GPT-2 byte alphabet)."""
    return {char: byte for byte, char in byte_level_alphabet().items()}


def _max_new_tokens(body: dict[str, Any]) -> Any:
    # SGLang: `max_completion_tokens or max_tokens`.
    return body.get("max_completion_tokens") or body.get("max_tokens")


def _first_user_text(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


def _normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(message)
    if out.get("content") is None:
        out["content"] = ""
    for call in out.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except ValueError as exc:
                raise MockRequestError("Assistant tool call function.arguments must be valid JSON.") from exc
            if not isinstance(function["arguments"], dict):
                raise MockRequestError("Assistant tool call function.arguments must be a JSON object.")
    return out


def _normalise_tool(tool: dict[str, Any], version: str = "0.5.15") -> dict[str, Any]:
    """SGLang's ``Tool.model_dump()``, what the chat template renders with ``tojson``.

    Before 0.5.23 (measured: 0.5.15.post1) the function is re-ordered description/name/parameters and gains
    ``"strict": false``; 0.5.23 keeps the client's keys in the client's order (``strict`` only when sent). Both add
    ``"defer_loading": null`` at the tool level.
    """
    if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict) or "name" not in tool["function"]:
        raise MockRequestError("each tool must be {'type': 'function', 'function': {'name': ..., ...}}")
    function = tool["function"]
    if _version_tuple(version) >= (0, 5, 23):
        dumped = {key: function[key] for key in function if key in ("description", "name", "parameters", "strict")}
        for key in ("description", "name", "parameters"):
            dumped.setdefault(key, None)
        if dumped.get("strict") is None:
            dumped.pop("strict", None)
    else:
        dumped = {
            "description": function.get("description"),
            "name": function["name"],
            "parameters": function.get("parameters"),
            "strict": bool(function.get("strict", False)),
        }
    return {"type": tool.get("type", "function"), "function": dumped, "defer_loading": tool.get("defer_loading")}


def serve_mock_sglang(mock: MockSGLang, *, startup_timeout_s: float = 20.0) -> contextlib.AbstractContextManager[str]:
    """Serve ``mock.app`` on a free 127.0.0.1 port (see :func:`serve_app`); the context yields its base URL."""
    return serve_app(mock.app, name="mock-sglang", startup_timeout_s=startup_timeout_s)
