"""The mock against SGLang's real serving code: the same scripts and requests must give the same responses.

Why: most rollout tests (and every old-server case) run against ``sglang_mock``; this keeps it honest. For each
release in ``tests/sglang_releases.txt`` the mock of the matching version and the real server (scripted engine,
``tests/support/real_sglang.py``) get identical scripts and identical request bodies; the whole JSON responses are compared
after only request ids, tool-call ids, timestamps and latencies are normalised, and so are the sampling parameters
each "engine" was given. A difference fails with a diff naming the field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from search_r1_oai.chat_client import NEUTRAL_SAMPLING, chat_sampling_fields
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from tests.support.real_sglang import RealSGLang
from tests.support.rollout_helpers import IM_END, SAMPLING, call
from tests.support.sglang_mock import MockSGLang, serve_mock_sglang
from tests.support.sglang_releases import MOCK_VERSION, SGLANG_VERSIONS

pytestmark = pytest.mark.e2e  # the mock against SGLang's real serving code

# Per-request values that legitimately differ between two servers (random ids, clocks, latencies).
_VOLATILE_KEYS = {"id", "created", "e2e_latency", "response_sent_to_client_ts", "queue_time", "inference_time"}
# The engine-side parameters that decide which tokens are sampled and when the turn ends.
ENGINE_KEYS = (
    *NEUTRAL_SAMPLING,
    "max_new_tokens",
    "stop_strs",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "no_stop_trim",
    "sampling_seed",
)
BAD_JSON = '<tool_call>\n{"name": "search", "arguments": {"queries": ["x"]\n</tool_call>'


@dataclass(frozen=True)
class Case:
    """One exchange: the scripted assistant turns and the request body (built from the question)."""

    name: str
    replies: tuple[str, ...]
    extra: dict[str, Any]
    tools: bool = True
    rollout_fields: bool = False  # send the rollout's own sampling fields (chat_sampling_fields) instead of none


CASES = [
    Case("direct_answer", ("The Vex.\n<answer>Vex</answer>" + IM_END,), {}),
    Case("one_call", (call(["Vexmoor river"]) + IM_END,), {}),
    Case("two_calls", ("Two.\n" + call(["a b"]) + "\n" + call(["c d"]) + IM_END,), {}),
    Case(
        "text_and_compact_call",
        ('Let me look.\n\n<tool_call>\n{"name":"search","arguments":{"queries":["Vex"]}}\n</tool_call>' + IM_END,),
        {},
    ),
    Case("malformed_json_call", ("Searching.\n" + BAD_JSON + IM_END,), {}),
    Case("unknown_tool", (call(["x"], name="lookup") + IM_END,), {}),
    Case("good_and_bad_call", (call(["good"]) + "\n" + BAD_JSON + IM_END,), {}),
    Case("non_ascii", (call(["Zürich 東京 café — «Brück»"]) + IM_END,), {}),
    Case("length_cut", ("a long answer that goes on and on and on " * 3 + IM_END,), {"max_tokens": 7}),
    Case("endoftext_stop", (call(["x"]) + "<|endoftext|>",), {}),
    Case("stop_string", ("Thinking.\n<answer>Vex</answer> more" + IM_END,), {"stop": ["</answer>"]}),
    Case("stop_token_ids", ("one two three" + IM_END,), {"stop_token_ids": [1378]}),
    Case("no_tools", ("Plain <tool_call> text." + IM_END,), {}, tools=False),
    Case("no_logprobs", ("Short." + IM_END,), {"logprobs": False}),
    Case("return_token_ids", ("Short." + IM_END,), {"return_token_ids": True}),
    Case("rollout_sampling_fields", ("Short." + IM_END,), {}, rollout_fields=True),
    Case("seed_and_penalties", ("Short." + IM_END,), {"seed": 3, "frequency_penalty": 0.5, "min_p": 0.1}),
]


def _normalise(value: Any) -> Any:
    """Drop what differs by nature between two servers; keep every other key and value."""
    if isinstance(value, dict):
        out = {k: _normalise(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
        if "id" in value and isinstance(value["id"], str) and value["id"].startswith("call_"):
            out["id"] = f"call_<{len(value['id']) - 5} chars>"
        return out
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _diff(mock: Any, real: Any, path: str = "") -> list[str]:
    """Readable differences, one line per field (``-`` mock, ``+`` real)."""
    if isinstance(mock, dict) and isinstance(real, dict):
        lines = []
        for key in sorted(set(mock) | set(real), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in real:
                lines.append(f"{where}: only in the mock ({json.dumps(mock[key])[:120]})")
            elif key not in mock:
                lines.append(f"{where}: only in real SGLang ({json.dumps(real[key])[:120]})")
            else:
                lines.extend(_diff(mock[key], real[key], where))
        return lines
    if isinstance(mock, list) and isinstance(real, list):
        if len(mock) == len(real):
            return [
                line for i, (m, r) in enumerate(zip(mock, real, strict=True)) for line in _diff(m, r, f"{path}[{i}]")
            ]
        first = next((i for i, (m, r) in enumerate(zip(mock, real, strict=False)) if m != r), min(len(mock), len(real)))
        return [
            f"{path}: {len(mock)} items in the mock, {len(real)} in real SGLang, first difference at [{first}]: "
            f"mock {json.dumps(mock[first : first + 8])[:200]} real {json.dumps(real[first : first + 8])[:200]}"
        ]
    if mock != real:
        return [f"{path}: mock {json.dumps(mock)[:200]} != real {json.dumps(real)[:200]}"]
    return []


def assert_same(mock: Any, real: Any, what: str) -> None:
    differences = _diff(_normalise(mock), _normalise(real))
    assert not differences, f"{what}: the mock differs from real SGLang:\n" + "\n".join(differences)


@pytest.fixture(scope="module", params=SGLANG_VERSIONS, ids=lambda v: f"sglang-{v}")
def servers(request, real_sglang_servers, qwen_tokenizer) -> Iterator[tuple[MockSGLang, RealSGLang]]:
    try:
        real = real_sglang_servers.get(request.param)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    mock = MockSGLang(qwen_tokenizer, version=MOCK_VERSION[request.param])
    with serve_mock_sglang(mock) as url:
        mock.url = url
        yield mock, real


def _body(question: str, case: Case) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen2.5-3b",
        "messages": build_messages(question),
        "logprobs": True,
        "return_prompt_token_ids": True,
        "return_meta_info": True,
        "max_tokens": 64,
        "stream": False,
    }
    if case.tools:
        body["tools"] = [SEARCH_TOOL]
    if case.rollout_fields:
        body.update(chat_sampling_fields(SAMPLING))
    body.update(case.extra)
    return body


def _exchange(
    servers: tuple[MockSGLang, RealSGLang], question: str, replies: list[str], build: Callable[[], dict]
) -> tuple[httpx.Response, httpx.Response, dict, dict]:
    """Script both servers alike, send both the same body; the responses and the engine-side records."""
    mock, real = servers
    mock.script(question, list(replies))
    real.script(question, list(replies))
    body = build()
    mock_response = httpx.post(f"{mock.url}/v1/chat/completions", json=copy.deepcopy(body), timeout=60)
    real_response = httpx.post(f"{real.url}/v1/chat/completions", json=copy.deepcopy(body), timeout=60)
    mock_record = mock.requests_for(question)[-1]
    real_record = real.requests_for(question)[-1]
    return mock_response, real_response, _engine_view(mock_record), _engine_view(real_record)


def _engine_view(record: Any) -> dict[str, Any]:
    params = record.sampling_params or {}
    return {
        "prompt_ids": record.prompt_ids,
        "output_ids": record.output_ids,
        "output_logprobs": record.output_logprobs,
        "sampling_params": {key: params.get(key) for key in ENGINE_KEYS},
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_first_turn_responses_match(servers, case: Case) -> None:
    version = servers[1].version
    question = f"Which river flows through Vexmoor ({case.name}, {version})?"
    mock_response, real_response, mock_engine, real_engine = _exchange(
        servers, question, list(case.replies), lambda: _body(question, case)
    )
    assert mock_response.status_code == real_response.status_code == 200, real_response.text
    assert_same(mock_engine, real_engine, "what the engine received and sampled")
    assert_same(mock_response.json(), real_response.json(), "the chat completion")


def test_second_turn_with_input_ids_matches(servers, qwen_tokenizer) -> None:
    """The rollout's later turns: ``input_ids`` verbatim, the prompt messages only, no prompt ids asked back."""
    mock, real = servers
    question = f"Who built the Orlanth bridge ({real.version})?"
    replies = [call(["Orlanth bridge"]) + IM_END, "<answer>Gold</answer>" + IM_END]
    first = _body(question, Case("first", (), {}))
    mock.script(question, replies)
    real.script(question, replies)
    real_first = httpx.post(f"{real.url}/v1/chat/completions", json=first, timeout=60).json()
    httpx.post(f"{mock.url}/v1/chat/completions", json=first, timeout=60).raise_for_status()
    choice = real_first["choices"][0]
    output_ids = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
    observation = "\n<|im_start|>user\n<tool_response>\nDoc 1: the Orlanth bridge.\n</tool_response><|im_end|>\n"
    glue = qwen_tokenizer.encode(observation + "<|im_start|>assistant\n", add_special_tokens=False)
    second = {**first, "input_ids": choice["prompt_token_ids"] + output_ids + glue}
    del second["return_prompt_token_ids"]
    mock_response = httpx.post(f"{mock.url}/v1/chat/completions", json=second, timeout=60)
    real_response = httpx.post(f"{real.url}/v1/chat/completions", json=second, timeout=60)
    assert mock_response.status_code == real_response.status_code == 200, real_response.text
    assert_same(
        _engine_view(mock.requests_for(question)[-1]), _engine_view(real.requests_for(question)[-1]), "second turn"
    )
    assert real.requests_for(question)[-1].prompt_ids == second["input_ids"], "input_ids are used verbatim"
    assert_same(mock_response.json(), real_response.json(), "the second turn's chat completion")


@pytest.mark.parametrize(
    "name, extra",
    [
        ("empty_messages_with_input_ids", {"messages": [], "input_ids": [1, 2, 3]}),
        ("input_longer_than_context", {"input_ids": list(range(100, 100 + 32768)), "max_tokens": 8}),
        ("stream_with_return_fields", {"stream": True}),
    ],
)
def test_rejected_requests_match(servers, name: str, extra: dict) -> None:
    mock, real = servers
    question = f"Which river flows through Vexmoor ({name}, {real.version})?"
    mock.script(question, ["x" + IM_END])
    real.script(question, ["x" + IM_END])
    body = {**_body(question, Case(name, (), {})), **extra}
    mock_response = httpx.post(f"{mock.url}/v1/chat/completions", json=body, timeout=60)
    real_response = httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=60)
    assert (mock_response.status_code, mock_response.json()) == (real_response.status_code, real_response.json())


def test_scripted_abort_matches(servers) -> None:
    """An abort that arrives mid-turn: the tokens so far (one decode step after the abort) and the abort reason."""
    from tests.support.sglang_mock import Reply

    mock, real = servers
    question = f"Which guild founded Ambergate ({real.version})?"
    replies = [Reply("I still need to check the second", finish_reason="abort")]
    mock.script(question, replies)
    real.script(question, replies)
    body = _body(question, Case("abort", (), {}))
    mock_response = httpx.post(f"{mock.url}/v1/chat/completions", json=body, timeout=60)
    real_response = httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=60)
    assert mock_response.status_code == real_response.status_code == 200, real_response.text
    assert_same(mock_response.json(), real_response.json(), "an aborted turn")
