"""The offline Qwen2.5 tokenizer must be the real one: ids, special tokens and chat template."""

from __future__ import annotations

import unicodedata

import pytest

from tests.support import offline_assets

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search Wikipedia.",
            "parameters": {
                "type": "object",
                "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
                "required": ["queries"],
            },
        },
    }
]


def test_known_ids(qwen_tokenizer):
    assert qwen_tokenizer("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    assert qwen_tokenizer.eos_token_id == 151645
    assert qwen_tokenizer.pad_token_id == 151643
    assert len(qwen_tokenizer) == 151665


def test_special_token_ids(qwen_tokenizer):
    for offset, (content, special) in enumerate(offline_assets.QWEN25_ADDED_TOKENS):
        expected = 151643 + offset
        assert qwen_tokenizer.convert_tokens_to_ids(content) == expected
        assert qwen_tokenizer(content, add_special_tokens=False)["input_ids"] == [expected]
        decoded = qwen_tokenizer.decode([expected], skip_special_tokens=True)
        assert decoded == ("" if special else content)


@pytest.mark.parametrize(
    "text",
    [
        "Who wrote the novel Zorvathkel? 1984 and 2001: a space odyssey",
        "Zürich, Ölçü, 東京は日本の首都です。 — «quotes» and emoji 🙂",
        '{"name": "search", "arguments": {"queries": ["x"]}}\n\n  \t indented\r\nline',
        "I'm sure they'll say we've done it; it's 3.14159",
    ],
)
def test_matches_tiktoken_reference(qwen_tokenizer, text):
    """Independent check: tiktoken with the same ranks and split pattern must agree on every id."""
    import tiktoken

    ranks = offline_assets._load_ranks(offline_assets.qwen_ranks_path())
    reference = tiktoken.Encoding(
        "qwen2-reference", pat_str=offline_assets.QWEN2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )
    expected = reference.encode_ordinary(unicodedata.normalize("NFC", text))
    assert qwen_tokenizer(text, add_special_tokens=False)["input_ids"] == expected


def test_tool_calling_conversation_renders_exactly(qwen_tokenizer):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who wrote Hamlet?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"type": "function", "function": {"name": "search", "arguments": {"queries": ["Hamlet author"]}}},
                {"type": "function", "function": {"name": "search", "arguments": {"queries": ["Hamlet"]}}},
            ],
        },
        {"role": "tool", "content": "Doc 1"},
        {"role": "tool", "content": "Doc 2"},
        {"role": "assistant", "content": "<answer>William Shakespeare</answer>"},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "search", "description": "Search Wikipedia.", '
        '"parameters": {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}}, '
        '"required": ["queries"]}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.\n<tool_call>\n"
        '{"name": "search", "arguments": {"queries": ["Hamlet author"]}}\n</tool_call>\n<tool_call>\n'
        '{"name": "search", "arguments": {"queries": ["Hamlet"]}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nDoc 1\n</tool_response>\n<tool_response>\nDoc 2\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n<answer>William Shakespeare</answer><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    rendered = qwen_tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert rendered == expected
    ids = qwen_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(151644) == 6 and ids.count(151645) == 5
    assert ids.count(151657) == 4 and ids.count(151658) == 4  # two calls + two in the tool instructions
    assert qwen_tokenizer.decode(ids) == expected


def test_toy_corpus_facts_point_at_their_passages(toy_corpus_files, toy_facts):
    import json

    passages = {p["id"]: p for p in map(json.loads, toy_corpus_files[0].read_text().splitlines())}
    assert 200 <= len(passages) <= 500
    for fact in toy_facts:
        title, text = passages[fact.passage_id]["contents"].split("\n", 1)
        assert title == f'"{fact.title}"'
        assert fact.answer in text and fact.title in fact.question
