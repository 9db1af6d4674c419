"""Settings: one table, read from slime's args (its config YAML) before the environment, with clear errors."""

from __future__ import annotations

import dataclasses
import re
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from search_r1_oai import config
from search_r1_oai.config import ConfigError, Settings, load_settings


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
        "SEARCH_R1_POLICY_DEADLINE_S": "30",
        "SEARCH_R1_RETRIEVAL_DEADLINE_S": "9.5",
        "SEARCH_R1_TRAJECTORY_TIMEOUT_S": "90",
        "SEARCH_R1_TOOL_RESULT_MAX_CHARS": "1000",
        "SEARCH_R1_TOOL_RESULT_MAX_TOKENS": "300",
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
        policy_deadline_s=30.0,
        retrieval_deadline_s=9.5,
        trajectory_timeout_s=90.0,
        tool_result_max_chars=1000,
        tool_result_max_tokens=300,
        tool_call_start="<call>",
        tool_call_end="</call>",
    )


def test_every_variable_is_in_the_table() -> None:
    """One row per variable, its config key the variable lower-cased, and the table's defaults are the dataclass's."""
    names = ["RETRIEVAL_SERVER_URL"] + [
        "SEARCH_R1_" + name
        for name in [
            "TOPK",
            "MAX_TURNS",
            "CONTEXT_BUDGET",
            "POLICY_MODEL",
            "POLICY_TIMEOUT_S",
            "POLICY_DEADLINE_S",
            "RETRIEVAL_TIMEOUT_S",
            "RETRIEVAL_DEADLINE_S",
            "RETRIEVAL_MAX_REPLY_MB",
            "TRAJECTORY_TIMEOUT_S",
            "CONNECT_TIMEOUT_S",
            "CONCURRENCY",
            "POLICY_RETRIES",
            "RETRIEVAL_RETRIES",
            "RETRY_INITIAL_WAIT_S",
            "RETRY_MAX_WAIT_S",
            "TOOL_RESULT_MAX_CHARS",
            "TOOL_RESULT_MAX_TOKENS",
            "LOG_EVERY",
            "ALLOW_REENCODE_FALLBACK",
            "VERIFY_PROMPT_IDS",
            "FORMAT_SCORE",
            "TOOL_CALL_START",
            "TOOL_CALL_END",
            "TOOL_MODULES",
            "HEALTH",
            "HEALTH_WINDOW",
            "HEALTH_MIN_SEARCHES",
            "HEALTH_FLAT_REWARD",
            "HEALTH_LENGTH_LOW",
            "HEALTH_LENGTH_HIGH",
            "HEALTH_RATE_RISE",
            "HEALTH_MAX_ZERO_STD_SHARE",
            "HEALTH_MIN_TOKEN_EXACT",
            "HEALTH_MAX_TOOL_ERROR_RATE",
            "HEALTH_MAX_RETRIEVAL_P99_S",
        ]
    ]
    names.insert(names.index("SEARCH_R1_RETRY_INITIAL_WAIT_S"), "RETRIEVER_API_KEY")  # the retriever's own name
    names.insert(names.index("SEARCH_R1_HEALTH"), "DYNAMIC_SAMPLING")  # a run-script switch, read by the launcher too
    assert [knob.env for knob in config.SETTINGS] == names
    assert all(knob.key == knob.env.lower() and knob.help for knob in config.SETTINGS)
    assert {knob.attr for knob in config.SETTINGS} == {f.name for f in dataclasses.fields(Settings)}
    assert len(dataclasses.fields(Settings)) == len(config.SETTINGS) == 39  # one field per row
    text = config.render_help_text() + config.render_markdown() + config.render_yaml()
    assert [name for name in names if name not in text or name.lower() not in text] == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEARCH_R1_TOPK": "three"}, "SEARCH_R1_TOPK='three' in the environment: expected an integer >= 1"),
        ({"SEARCH_R1_MAX_TURNS": "0"}, "SEARCH_R1_MAX_TURNS='0' in the environment: expected an integer >= 1"),
        ({"SEARCH_R1_FORMAT_SCORE": "x"}, "SEARCH_R1_FORMAT_SCORE='x' in the environment: expected a finite number"),
        ({"SEARCH_R1_POLICY_TIMEOUT_S": "nan"}, "expected a finite number >= 0.001"),
        ({"SEARCH_R1_ALLOW_REENCODE_FALLBACK": "maybe"}, "expected a boolean"),
        ({"RETRIEVAL_SERVER_URL": "localhost:8000"}, "must start with http://"),
        ({"RETRIEVAL_SERVER_URL": " , "}, "names no URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_process_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """slime's workers build one rollout context from args and the environment, on their first sample."""
    import generate_with_search_oai as hook

    monkeypatch.setattr(hook, "_CONTEXT", None)
    monkeypatch.setenv("SEARCH_R1_TOPK", "7")
    args, tokenizer = Namespace(sglang_router_ip="127.0.0.1", sglang_router_port=1), object()
    assert hook.rollout_context(args, tokenizer).settings.topk == 7
    monkeypatch.setenv("SEARCH_R1_TOPK", "9")
    assert hook.rollout_context(args, tokenizer).settings.topk == 7


def test_slime_args_win_over_the_environment_which_wins_over_the_default() -> None:
    args = Namespace(search_r1_topk=5, retrieval_server_url=None, lr=1e-6)  # None: not in the YAML
    env = {"SEARCH_R1_TOPK": "7", "SEARCH_R1_MAX_TURNS": "6", "RETRIEVAL_SERVER_URL": "http://env:1"}
    settings = load_settings(args, env)
    assert (settings.topk, settings.max_turns, settings.retrieval_urls) == (5, 6, ("http://env:1",))
    assert settings.policy_model == "default"  # neither: the default
    assert load_settings(Namespace(), {}) == Settings()


def test_yaml_native_types_and_strings_are_both_accepted() -> None:
    native = Namespace(
        retrieval_server_url=["http://a:1/", "http://b:2"],
        search_r1_topk=4,
        search_r1_policy_timeout_s=12,  # YAML reads 12 as an int
        search_r1_retry_initial_wait_s=0.25,
        search_r1_allow_reencode_fallback=True,
        search_r1_verify_prompt_ids=1,
        search_r1_tool_call_start="<call>",
    )
    strings = Namespace(
        retrieval_server_url="http://a:1, http://b:2",
        search_r1_topk="4",
        search_r1_policy_timeout_s="12",
        search_r1_retry_initial_wait_s="0.25",
        search_r1_allow_reencode_fallback="yes",
        search_r1_verify_prompt_ids="on",
        search_r1_tool_call_start="<call>",
    )
    expected = Settings(
        retrieval_urls=("http://a:1", "http://b:2"),
        topk=4,
        policy_timeout_s=12.0,
        retry_initial_wait_s=0.25,
        allow_reencode_fallback=True,
        verify_prompt_ids=True,
        tool_call_start="<call>",
    )
    assert load_settings(native, {}) == expected == load_settings(strings, {})
    assert isinstance(load_settings(native, {}).policy_timeout_s, float)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("search_r1_topk", True, "search_r1_topk=True in the slime config"),
        ("search_r1_topk", 2.5, "expected an integer >= 1"),
        ("search_r1_max_turns", 0, "search_r1_max_turns=0 in the slime config (--custom-config-path, on args): "),
        ("search_r1_verify_prompt_ids", 2, "expected a boolean"),
        ("search_r1_policy_model", 7, "expected a non-empty string"),
        ("retrieval_server_url", ["http://a:1", 3], "expected http:// or https:// URLs"),
        ("retrieval_server_url", {"a": 1}, "expected http:// or https:// URLs"),
        ("search_r1_top_k", 5, "search_r1_top_k in the slime config (--custom-config-path, on args) is not a "
         "setting; did you mean search_r1_topk?"),
    ],
)  # fmt: skip
def test_bad_config_values_name_the_key_and_the_slime_config(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(Namespace(**{key: value}), {})


def test_context_budget_falls_back_to_slimes_max_context_len() -> None:
    assert load_settings(Namespace(rollout_max_context_len=8192), {}).context_budget == 8192
    assert load_settings(Namespace(rollout_max_context_len=None), {}).context_budget == 16384
    # set either way, the setting wins
    assert (
        load_settings(Namespace(rollout_max_context_len=8192), {"SEARCH_R1_CONTEXT_BUDGET": "4096"}).context_budget
        == 4096
    )
    both = Namespace(rollout_max_context_len=8192, search_r1_context_budget=2048)
    assert load_settings(both, {}).context_budget == 2048
    with pytest.raises(ConfigError, match=re.escape("rollout_max_context_len=8 in slime's args")):
        load_settings(Namespace(rollout_max_context_len=8), {})


def test_the_example_config_reads_back_as_the_defaults() -> None:
    example = yaml.safe_load(config.render_yaml())
    # A secret has no value to show: its key is only named, in a comment.
    assert set(example) == {knob.key for knob in config.SETTINGS} - {"search_r1_context_budget", "retriever_api_key"}
    assert "# retriever_api_key: ..." in config.render_yaml()
    assert load_settings(Namespace(**example), {}) == Settings()


def test_the_run_scripts_config_puts_the_environment_over_the_users_file() -> None:
    base = {"lr": 1e-6, "search_r1_topk": 5, "search_r1_max_turns": 2}
    env = {
        "SEARCH_R1_MAX_TURNS": "6",
        "SEARCH_R1_RETRY_MAX_WAIT_S": "1e-5",
        "RETRIEVAL_SERVER_URL": "http://a:1,http://b:2",
    }
    merged = config.slime_config(env, base, "SEARCH_R1_CONFIG=f.yaml")
    assert merged == {
        "lr": 1e-6,
        "search_r1_topk": 5,
        "search_r1_max_turns": 6,
        "search_r1_retry_max_wait_s": 1e-5,
        "retrieval_server_url": ["http://a:1", "http://b:2"],
    }
    for use_yaml in (True, False):
        text = config.dump_slime_config(merged, use_yaml=use_yaml)
        assert "\n" not in text and yaml.safe_load(text) == merged
    with pytest.raises(ConfigError, match=re.escape("search_r1_topk=0 in SEARCH_R1_CONFIG=f.yaml: expected")):
        config.slime_config({}, {"search_r1_topk": 0}, "SEARCH_R1_CONFIG=f.yaml")
    with pytest.raises(ConfigError, match="SEARCH_R1_MAX_TURN in the environment is not a setting; did you mean"):
        config.slime_config({"SEARCH_R1_MAX_TURN": "3", "SEARCH_R1_CONFIG": "x"}, {})


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == config.render_markdown(), "regenerate it: python3 search_r1_oai/config.py --markdown"
