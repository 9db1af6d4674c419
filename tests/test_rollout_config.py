"""Settings come from the environment once, with documented names, defaults and clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from search_r1_oai import config
from search_r1_oai.config import ConfigError, Settings, get_settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.retrieval_urls == ("http://127.0.0.1:8000",)
    assert (settings.topk, settings.max_turns, settings.context_budget) == (3, 4, 16384)
    assert settings.format_score == 0.2 and settings.allow_reencode_fallback is False


def test_every_variable_is_read() -> None:
    env = {
        "RETRIEVAL_SERVER_URL": "http://a:1/, http://b:2",
        "SEARCH_R1_TOPK": "5",
        "SEARCH_R1_MAX_TURNS": "6",
        "SEARCH_R1_CONTEXT_BUDGET": "8192",
        "SEARCH_R1_POLICY_MODEL": "qwen",
        "SEARCH_R1_POLICY_TIMEOUT_S": "12.5",
        "SEARCH_R1_RETRIEVAL_TIMEOUT_S": "3",
        "SEARCH_R1_CONNECT_TIMEOUT_S": "2",
        "SEARCH_R1_CONCURRENCY": "64",
        "SEARCH_R1_POLICY_RETRIES": "1",
        "SEARCH_R1_RETRIEVAL_RETRIES": "0",
        "SEARCH_R1_RETRY_INITIAL_WAIT_S": "0.1",
        "SEARCH_R1_RETRY_MAX_WAIT_S": "1",
        "SEARCH_R1_LOG_EVERY": "0",
        "SEARCH_R1_ALLOW_REENCODE_FALLBACK": "true",
        "SEARCH_R1_VERIFY_PROMPT_IDS": "1",
        "SEARCH_R1_FORMAT_SCORE": "0.1",
        "SEARCH_R1_TOOL_CALL_START": "<call>",
        "SEARCH_R1_TOOL_CALL_END": "</call>",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        retrieval_urls=("http://a:1", "http://b:2"),
        topk=5,
        max_turns=6,
        context_budget=8192,
        policy_model="qwen",
        policy_timeout_s=12.5,
        retrieval_timeout_s=3.0,
        connect_timeout_s=2.0,
        concurrency=64,
        policy_retries=1,
        retrieval_retries=0,
        retry_initial_wait_s=0.1,
        retry_max_wait_s=1.0,
        log_every=0,
        allow_reencode_fallback=True,
        verify_prompt_ids=True,
        format_score=0.1,
        tool_call_markers=("<call>", "</call>"),
    )


def test_every_variable_is_documented() -> None:
    doc = config.__doc__ or ""
    names = ["RETRIEVAL_SERVER_URL"] + [
        "SEARCH_R1_" + name
        for name in [
            "TOPK",
            "MAX_TURNS",
            "CONTEXT_BUDGET",
            "POLICY_MODEL",
            "POLICY_TIMEOUT_S",
            "RETRIEVAL_TIMEOUT_S",
            "CONNECT_TIMEOUT_S",
            "CONCURRENCY",
            "POLICY_RETRIES",
            "RETRIEVAL_RETRIES",
            "RETRY_INITIAL_WAIT_S",
            "RETRY_MAX_WAIT_S",
            "LOG_EVERY",
            "ALLOW_REENCODE_FALLBACK",
            "VERIFY_PROMPT_IDS",
            "FORMAT_SCORE",
            "TOOL_CALL_START",
            "TOOL_CALL_END",
        ]
    ]
    assert [name for name in names if f"``{name}``" not in doc] == []
    assert len(dataclasses.fields(Settings)) == 18


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEARCH_R1_TOPK": "three"}, "SEARCH_R1_TOPK='three' is not an integer"),
        ({"SEARCH_R1_MAX_TURNS": "0"}, "SEARCH_R1_MAX_TURNS=0 must be >= 1"),
        ({"SEARCH_R1_FORMAT_SCORE": "x"}, "SEARCH_R1_FORMAT_SCORE='x' is not a number"),
        ({"SEARCH_R1_ALLOW_REENCODE_FALLBACK": "maybe"}, "is not a boolean"),
        ({"RETRIEVAL_SERVER_URL": "localhost:8000"}, "must start with http://"),
        ({"RETRIEVAL_SERVER_URL": " , "}, "names no URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_process_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    monkeypatch.setenv("SEARCH_R1_TOPK", "7")
    try:
        assert get_settings().topk == 7
        monkeypatch.setenv("SEARCH_R1_TOPK", "9")
        assert get_settings().topk == 7
    finally:
        get_settings.cache_clear()
