"""The SGLang test server's own contract: ids, logprobs, prompt rendering, qwen25 tool parsing, errors, versions."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest

from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from tests.support.sglang_mock import MockSGLang, Reply, mock_logprob, serve_mock_sglang

Q = "Who wrote the novel Zorvathkel?"
IM_END = 151645
TOOL_CALL, END_TOOL_CALL = 151657, 151658
SEARCH_CALL = '<tool_call>\n{"name": "search", "arguments": {"queries": ["Zorvathkel author"]}}\n</tool_call>'


def _sglang_tool_dump(tool: dict) -> dict:
    """What SGLang 0.5.15.post1's ``Tool.model_dump()`` hands the template (measured with its serving code),
    written out independently of the mock."""
    f = tool["function"]
    return {
        "type": "function",
        "function": {
            "description": f.get("description"),
            "name": f["name"],
            "parameters": f.get("parameters"),
            "strict": False,
        },
        "defer_loading": None,
    }


def _body(question: str = Q, **extra) -> dict:
    body = {
        "model": "qwen2.5-3b",
        "messages": build_messages(question),
        "tools": [SEARCH_TOOL],
        "logprobs": True,
        "return_prompt_token_ids": True,
        "return_meta_info": True,
        "max_tokens": 512,
    }
    body.update(extra)
    return body


@pytest.fixture
def mock(qwen_tokenizer) -> MockSGLang:
    return MockSGLang(qwen_tokenizer)


@pytest.fixture
def client(mock: MockSGLang):
    with serve_mock_sglang(mock) as base_url, httpx.Client(base_url=base_url, timeout=30.0) as http:
        yield http


def _post(client: httpx.Client, body: dict) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body)


def _expected_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def test_direct_answer_ids_logprobs_and_prompt(mock, client, qwen_tokenizer):
    text = "The author is Mira Quin.\n<answer>Mira Quin</answer><|im_end|>"
    mock.script(Q, [text])
    resp = _post(client, _body())
    assert resp.status_code == 200, resp.text
    data = resp.json()
    choice = data["choices"][0]

    expected_prompt = _expected_prompt_ids(qwen_tokenizer, build_messages(Q), [_sglang_tool_dump(SEARCH_TOOL)])
    expected_out = qwen_tokenizer.encode(text, add_special_tokens=False)
    assert expected_out[-1] == IM_END
    assert choice["prompt_token_ids"] == expected_prompt
    triples = choice["meta_info"]["output_token_logprobs"]
    assert [t[1] for t in triples] == expected_out
    positions = range(len(expected_prompt), len(expected_prompt) + len(expected_out))
    assert [t[0] for t in triples] == [mock_logprob(tok, pos) for tok, pos in zip(expected_out, positions, strict=True)]
    assert all(t[0] < 0 for t in triples)
    assert triples[-1][2] == "<|im_end|>"
    assert [c["logprob"] for c in choice["logprobs"]["content"]] == [t[0] for t in triples]
    assert choice["logprobs"]["content"][-1]["token"] == "<|im_end|>"
    assert set(choice["logprobs"]["content"][0]) == {"token", "bytes", "logprob", "top_logprobs"}

    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == IM_END
    assert choice["message"] == {
        "role": "assistant",
        "content": "The author is Mira Quin.\n<answer>Mira Quin</answer>",
        "reasoning_content": None,
        "tool_calls": None,
    }
    assert data["object"] == "chat.completion"
    assert data["model"] == "qwen2.5-3b"
    assert data["usage"]["prompt_tokens"] == len(expected_prompt)
    assert data["usage"]["completion_tokens"] == len(expected_out)
    assert data["usage"]["total_tokens"] == len(expected_prompt) + len(expected_out)
    meta = choice["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": IM_END}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (len(expected_prompt), len(expected_out))

    (rec,) = mock.requests_for(Q)
    assert (rec.prompt_ids, rec.output_ids, rec.status) == (expected_prompt, expected_out, 200)
    assert rec.output_logprobs == [t[0] for t in triples]
    assert rec.body["max_tokens"] == 512


def test_server_render_matches_template_for_tool_history(mock, client, qwen_tokenizer):
    """History with an OpenAI-style tool call (arguments as a JSON string) renders as the template with a dict."""
    args = {"queries": ["Zorvathkel author", "Zürich"]}
    history = [
        *build_messages(Q),
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": json.dumps(args)}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Doc 1: Mira Quin wrote it."},
        {"role": "tool", "tool_call_id": "call_1", "content": "Doc 2: unrelated."},
    ]
    mock.script(Q, ["<answer>Mira Quin</answer><|im_end|>"])
    resp = _post(client, _body(messages=history))
    assert resp.status_code == 200, resp.text

    expected_history = json.loads(json.dumps(history))
    expected_history[2]["tool_calls"][0]["function"]["arguments"] = args
    expected = _expected_prompt_ids(qwen_tokenizer, expected_history, [_sglang_tool_dump(SEARCH_TOOL)])
    assert resp.json()["choices"][0]["prompt_token_ids"] == expected
    rendered = qwen_tokenizer.decode(expected)
    assert '{"name": "search", "arguments": {"queries": ["Zorvathkel author", "Zürich"]}}' in rendered
    assert "<tool_response>\nDoc 1: Mira Quin wrote it.\n</tool_response>\n<tool_response>" in rendered
    # SGLang re-serialises tools with "strict": a client render of the raw tool is not the server's prompt.
    assert '"strict": false' in rendered
    assert expected != _expected_prompt_ids(qwen_tokenizer, expected_history, [SEARCH_TOOL])


def test_input_ids_used_verbatim(mock, client, qwen_tokenizer):
    # Ids no template would produce: the server must condition on exactly these.
    input_ids = qwen_tokenizer.encode(f"<|im_start|>user\n{Q} extra<|im_end|>\n<|im_start|>assistant\n")
    mock.script(Q, ["Fine.<|im_end|>"])
    resp = _post(client, _body(input_ids=input_ids, messages=[{"role": "user", "content": "ignored"}]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["prompt_token_ids"] == input_ids
    assert mock.requests[-1].prompt_ids == input_ids
    triples = resp.json()["choices"][0]["meta_info"]["output_token_logprobs"]
    assert triples[0][0] == mock_logprob(triples[0][1], len(input_ids))


def test_input_ids_with_empty_messages_is_400(mock, client, qwen_tokenizer):
    mock.script(Q, ["unused<|im_end|>"])
    resp = _post(client, _body(input_ids=qwen_tokenizer.encode(Q), messages=[]))
    assert resp.status_code == 400
    assert resp.json()["message"] == "Messages cannot be empty."
    assert mock.remaining(Q) == 1


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        pytest.param(
            'Let me look.\n\n<tool_call>\n{"name":"search","arguments":{"queries":["a b"],"k":3}}\n</tool_call><|im_end|>',
            "Let me look.",
            [("search", '{"queries": ["a b"], "k": 3}')],
            id="compact-json-and-text-before",
        ),
        pytest.param(
            f"{SEARCH_CALL}\n"
            '<tool_call>\n{"name": "search", "arguments": {"queries": ["second"]}}\n</tool_call><|im_end|>',
            "",
            [("search", '{"queries": ["Zorvathkel author"]}'), ("search", '{"queries": ["second"]}')],
            id="two-calls",
        ),
        pytest.param(
            '<tool_call>\n{"name": "search", "arguments": {"queries": ["東京 \\u00fc", "Zürich"]}}\n</tool_call><|im_end|>',
            "",
            [("search", '{"queries": ["東京 ü", "Zürich"]}')],
            id="non-ascii",
        ),
        pytest.param(
            f"Thinking.\n{SEARCH_CALL}\ntrailing text is dropped<|im_end|>",
            "Thinking.",
            [("search", '{"queries": ["Zorvathkel author"]}')],
            id="trailing-text",
        ),
    ],
)
def test_tool_call_parsing(mock, client, qwen_tokenizer, text, content, calls):
    mock.script(Q, [text])
    resp = _post(client, _body())
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["matched_stop"] is None
    assert choice["message"]["content"] == content
    got = choice["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in got] == calls
    for call in got:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
        assert call["type"] == "function"
    assert len({c["id"] for c in got}) == len(got)
    # Every sampled token is reported, including the <tool_call> markers and the final <|im_end|>.
    ids = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
    assert ids == qwen_tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(TOOL_CALL) == len(calls) and ids[-1] == IM_END
    assert choice["meta_info"]["finish_reason"]["type"] == "tool_calls"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param('<tool_call>\n{"name": "search", "arguments": {"queries": ["x"]\n</tool_call>', id="bad-json"),
        pytest.param('<tool_call>\n{"name": "browse", "arguments": {"url": "x"}}\n</tool_call>', id="unknown-tool"),
    ],
)
def test_malformed_tool_call(qwen_tokenizer, block):
    """0.5.16+ (measured on 0.5.23): no tool calls, the text before the block, the original finish reason."""
    mock = MockSGLang(qwen_tokenizer, version="0.5.23")
    text = f"I will search.\n{block}<|im_end|>"
    mock.script(Q, [text])
    with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
        choice = _post(http, _body()).json()["choices"][0]
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "I will search."
    ids = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
    assert ids == qwen_tokenizer.encode(text, add_special_tokens=False)


def test_one_bad_block_keeps_the_good_one(mock, client):
    text = f'<tool_call>\n{{"name": "browse", "arguments": {{}}}}\n</tool_call>\n{SEARCH_CALL}<|im_end|>'
    mock.script(Q, [text])
    choice = _post(client, _body()).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["search"]


def test_no_tools_means_no_parsing(mock, client):
    text = f"Plain.\n{SEARCH_CALL}<|im_end|>"
    mock.script(Q, [text, text])
    body = _body()
    del body["tools"]
    choice = _post(client, body).json()["choices"][0]
    assert choice["message"]["tool_calls"] is None
    assert choice["message"]["content"] == f"Plain.\n{SEARCH_CALL}"
    assert choice["finish_reason"] == "stop"
    choice = _post(client, _body(tool_choice="none")).json()["choices"][0]
    assert choice["message"]["tool_calls"] is None
    assert choice["finish_reason"] == "stop"


def test_length_cut(mock, client, qwen_tokenizer):
    text = "A long thought that goes on and on before it ever reaches an answer.<|im_end|>"
    mock.script(Q, [text])
    choice = _post(client, _body(max_tokens=5)).json()["choices"][0]
    full = qwen_tokenizer.encode(text, add_special_tokens=False)
    ids = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
    assert ids == full[:5]
    assert IM_END not in ids
    assert choice["finish_reason"] == "length"
    assert choice["matched_stop"] is None
    assert choice["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert choice["message"]["content"] == qwen_tokenizer.decode(full[:5])


def test_max_completion_tokens_alias_and_unterminated_text(mock, client, qwen_tokenizer):
    mock.script(Q, ["cut here and more words", "no stop token"])
    body = _body()
    del body["max_tokens"]
    choice = _post(client, {**body, "max_completion_tokens": 2}).json()["choices"][0]
    assert [t[1] for t in choice["meta_info"]["output_token_logprobs"]] == qwen_tokenizer.encode("cut here")
    assert choice["finish_reason"] == "length"
    choice = _post(client, body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "no stop token"


def test_stops_at_first_stop_token(mock, client, qwen_tokenizer):
    mock.script(Q, ["done<|im_end|>never sampled<|im_end|>"])
    choice = _post(client, _body()).json()["choices"][0]
    assert [t[1] for t in choice["meta_info"]["output_token_logprobs"]] == qwen_tokenizer.encode("done<|im_end|>")
    assert choice["message"]["content"] == "done"


def test_abort(mock, client, qwen_tokenizer):
    mock.script(Q, [Reply(text="partial thought", finish_reason="abort"), Reply(finish_reason="abort")])
    choice = _post(client, _body()).json()["choices"][0]
    assert choice["finish_reason"] == "abort"
    assert [t[1] for t in choice["meta_info"]["output_token_logprobs"]] == qwen_tokenizer.encode("partial thought")
    choice = _post(client, _body()).json()["choices"][0]
    assert choice["finish_reason"] == "abort"
    assert choice["meta_info"]["output_token_logprobs"] == []
    assert choice["message"]["content"] == ""


def test_error_status_then_success(mock, client):
    mock.script(Q, [Reply(status=500), Reply(status=503, text="engine overloaded"), "ok<|im_end|>"])
    first = _post(client, _body())
    assert first.status_code == 500
    assert first.json()["object"] == "error" and first.json()["code"] == 500 and first.json()["message"]
    second = _post(client, _body())
    assert second.status_code == 503 and second.json()["message"] == "engine overloaded"
    third = _post(client, _body())
    assert third.status_code == 200 and third.json()["choices"][0]["message"]["content"] == "ok"
    assert [r.status for r in mock.requests_for(Q)] == [500, 503, 200]
    assert mock.requests_for(Q)[0].output_ids == []


def test_unscripted_and_exhausted_are_400(mock, client):
    resp = _post(client, _body("What is the capital of Nowhere?"))
    assert resp.status_code == 400 and "no scripted question" in resp.json()["message"]
    mock.script(Q, ["one<|im_end|>"])
    assert _post(client, _body()).status_code == 200
    resp = _post(client, _body())
    assert resp.status_code == 400 and "exhausted" in resp.json()["message"]


def test_bad_json_body_is_400(client):
    resp = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["message"]


def test_context_length_errors(qwen_tokenizer):
    mock = MockSGLang(qwen_tokenizer, context_length=400)
    mock.script(Q, ["ok<|im_end|>", "ok<|im_end|>"])
    prompt_len = len(mock.render_prompt_ids(_body()))
    assert prompt_len < 400
    with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
        resp = _post(http, _body(max_tokens=400 - prompt_len))
        assert resp.status_code == 400
        assert resp.json()["message"].startswith(
            "Requested token count exceeds the model's maximum context length of 400 tokens. "
            f"You requested a total of 400 tokens: {prompt_len} tokens from the input messages"
        )
        resp = _post(http, _body(input_ids=list(range(400)), max_tokens=10))
        assert resp.status_code == 400
        assert (
            resp.json()["message"] == "The input (400 tokens) is longer than the model's context length (400 tokens)."
        )
        resp = _post(http, _body(max_tokens=401))
        assert resp.status_code == 400 and "max_completion_tokens is too large" in resp.json()["message"]
        assert mock.remaining(Q) == 2  # rejected requests sample nothing
        ok = _post(http, _body(max_tokens=400 - prompt_len - 1))
        assert ok.status_code == 200


def test_stream_with_return_fields_is_400(mock, client):
    mock.script(Q, ["ok<|im_end|>"])
    resp = _post(client, _body(stream=True))
    assert resp.status_code == 400
    assert "return_prompt_token_ids is not supported with streaming" in resp.json()["message"]


def test_old_server_returns_no_ids(qwen_tokenizer):
    mock = MockSGLang(qwen_tokenizer, version="0.5.12")
    mock.script(Q, ["hello<|im_end|>"])
    with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
        resp = _post(http, _body(input_ids=[1, 2, 3], return_token_ids=True))
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    for key in ("prompt_token_ids", "meta_info", "token_ids", "response_token_ids"):
        assert key not in choice
    assert [c["token"] for c in choice["logprobs"]["content"]] == ["hello", "<|im_end|>"]
    # input_ids ignored: the server rendered the messages itself.
    assert mock.requests[0].prompt_ids == mock.render_prompt_ids(_body())


@pytest.mark.parametrize(
    ("version", "key"), [("0.5.15", None), ("0.5.17", "token_ids"), ("0.5.18", "response_token_ids")]
)
def test_return_token_ids_by_version(qwen_tokenizer, version, key):
    mock = MockSGLang(qwen_tokenizer, version=version)
    mock.script(Q, ["hi<|im_end|>"])
    with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
        choice = _post(http, _body(return_token_ids=True)).json()["choices"][0]
    present = {k for k in ("token_ids", "response_token_ids") if k in choice}
    assert present == ({key} if key else set())
    if key:
        assert choice[key] == qwen_tokenizer.encode("hi<|im_end|>")


def test_fields_absent_unless_requested(mock, client):
    mock.script(Q, ["hi<|im_end|>"])
    body = _body()
    for name in ("logprobs", "return_prompt_token_ids", "return_meta_info"):
        del body[name]
    choice = _post(client, body).json()["choices"][0]
    assert choice["logprobs"] is None
    assert "prompt_token_ids" not in choice and "meta_info" not in choice


def test_delay_lets_a_client_time_out_and_retry(mock, client):
    mock.script(Q, [Reply(text="slow<|im_end|>", delay_s=3.0), "fast<|im_end|>"])
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=_body(), timeout=0.3)
    resp = _post(client, _body())
    assert resp.json()["choices"][0]["message"]["content"] == "fast"


def test_concurrent_conversations(mock, client, toy_facts):
    facts = toy_facts[:8]
    for fact in facts:
        mock.script(fact.question, [f"<answer>{fact.answer}</answer><|im_end|>"])
    results: dict[str, str] = {}

    def ask(question: str) -> None:
        resp = _post(client, _body(question))
        results[question] = resp.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(f.question,)) for f in facts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {f.question: f"<answer>{f.answer}</answer>" for f in facts}
    assert len(mock.requests) == len(facts)


def test_health_models_and_shutdown(qwen_tokenizer):
    mock = MockSGLang(qwen_tokenizer, context_length=4096, model="qwen-test")
    with serve_mock_sglang(mock) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        models = httpx.get(f"{url}/v1/models").json()
        assert models["data"][0]["id"] == "qwen-test" and models["data"][0]["max_model_len"] == 4096
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2.0)
    assert not any(t.name.startswith("mock-sglang-") and t.is_alive() for t in threading.enumerate())


def test_rejects_unknown_version(qwen_tokenizer):
    with pytest.raises(ValueError, match="version"):
        MockSGLang(qwen_tokenizer, version="0.4.0")


def test_stop_token_as_last_allowed_token_reports_length(mock, client, qwen_tokenizer):
    """SGLang checks the length limit before stop tokens: an <|im_end|> sampled as the last allowed token."""
    text = "Four tokens here<|im_end|>"
    full = qwen_tokenizer.encode(text, add_special_tokens=False)
    mock.script(Q, [text])
    choice = _post(client, _body(max_tokens=len(full))).json()["choices"][0]
    assert [t[1] for t in choice["meta_info"]["output_token_logprobs"]] == full
    assert choice["finish_reason"] == "length"
    assert choice["matched_stop"] is None


def test_request_stop_strings_and_stop_token_ids(mock, client, qwen_tokenizer):
    mock.script(Q, ["<answer>Mira</answer> and then more text<|im_end|>", "alpha beta gamma<|im_end|>"])
    choice = _post(client, _body(stop=["</answer>"])).json()["choices"][0]
    ids = [t[1] for t in choice["meta_info"]["output_token_logprobs"]]
    assert qwen_tokenizer.decode(ids).endswith("</answer>")
    assert "then" not in qwen_tokenizer.decode(ids)
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == "</answer>"
    assert choice["message"]["content"] == "<answer>Mira"
    beta = qwen_tokenizer.encode(" beta", add_special_tokens=False)
    assert len(beta) == 1
    choice = _post(client, _body(stop_token_ids=beta)).json()["choices"][0]
    assert [t[1] for t in choice["meta_info"]["output_token_logprobs"]] == qwen_tokenizer.encode("alpha beta")
    assert choice["matched_stop"] == beta[0] and choice["message"]["content"] == "alpha"


def test_legacy_malformed_shape(qwen_tokenizer):
    """Before 0.5.16 (measured on 0.5.15.post1): ``tool_calls: []``, finish_reason ``tool_calls``, the raw text."""
    for mock in (MockSGLang(qwen_tokenizer, legacy_malformed_tool_calls=True), MockSGLang(qwen_tokenizer)):
        mock.script(Q, ['Hm.\n<tool_call>\n{"name": "browse", "arguments": {}}\n</tool_call><|im_end|>'])
        with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
            choice = _post(http, _body()).json()["choices"][0]
        assert choice["message"]["tool_calls"] == []
        assert choice["finish_reason"] == "tool_calls" and choice["matched_stop"] is None
        assert choice["message"]["content"] == 'Hm.\n<tool_call>\n{"name": "browse", "arguments": {}}\n</tool_call>'


def test_return_token_ids_alone_also_returns_prompt_ids(qwen_tokenizer):
    mock = MockSGLang(qwen_tokenizer, version="0.5.17")
    mock.script(Q, ["hi<|im_end|>"])
    body = _body(return_token_ids=True)
    del body["return_prompt_token_ids"]
    with serve_mock_sglang(mock) as url, httpx.Client(base_url=url) as http:
        choice = _post(http, body).json()["choices"][0]
    assert choice["prompt_token_ids"] == mock.requests[0].prompt_ids


def test_n_above_one_is_400(mock, client):
    mock.script(Q, ["hi<|im_end|>"])
    resp = _post(client, _body(n=2))
    assert resp.status_code == 400 and "n=1" in resp.json()["message"]


def test_engine_sampling_params_follow_sglang_defaults(qwen_tokenizer):
    """The mock records what SGLang's chat handler gives its engine: request values first, then the model's
    generation_config.json (Qwen2.5-3B-Instruct's by default), then SGLang's neutral defaults."""
    from tests.support.sglang_mock import TOP_K_ALL

    mock = MockSGLang(qwen_tokenizer)
    leaked = mock.engine_sampling_params({"messages": [], "max_tokens": 8})
    assert (leaked["temperature"], leaked["top_p"], leaked["top_k"], leaked["repetition_penalty"]) == (
        0.7,
        0.8,
        20,
        1.05,
    )
    sent = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "min_p": 0.0, "seed": 5}
    explicit = mock.engine_sampling_params({"messages": [], **sent})
    assert (explicit["temperature"], explicit["top_k"], explicit["repetition_penalty"]) == (1.0, TOP_K_ALL, 1.0)
    assert explicit["sampling_seed"] == 5
    assert mock.engine_sampling_params({"temperature": 0})["top_k"] == 1, "temperature 0 is greedy"
    no_config = MockSGLang(qwen_tokenizer, generation_defaults={}).engine_sampling_params({})
    assert (no_config["temperature"], no_config["top_k"], no_config["repetition_penalty"]) == (1.0, TOP_K_ALL, 1.0)
