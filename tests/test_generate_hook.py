"""The slime entry module: imports with a stand-in ``slime`` package, wires slime's args, honours the abort flag."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest

from search_r1_oai.httpclients import aclose_clients
from search_r1_oai.prompts import build_messages, tools_json
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.sglang_mock import MockSGLang, serve_mock_sglang
from tests.support.slime_stub import GenerateState, Sample

PROJECT = Path(__file__).resolve().parent.parent
IM_END = "<|im_end|>"
CALL = '<tool_call>\n{"name": "search", "arguments": {"queries": ["Ilvermark mayor"]}}\n</tool_call>'


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch):
    """``generate_with_search_oai`` imported against a fake ``slime`` package in ``sys.modules``."""
    modules = {
        "slime": types.ModuleType("slime"),
        "slime.rollout": types.ModuleType("slime.rollout"),
        "slime.rollout.sglang_rollout": types.ModuleType("slime.rollout.sglang_rollout"),
        "slime.utils": types.ModuleType("slime.utils"),
        "slime.utils.types": types.ModuleType("slime.utils.types"),
    }
    modules["slime.rollout.sglang_rollout"].GenerateState = GenerateState
    modules["slime.utils.types"].Sample = Sample
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "generate_with_search_oai", raising=False)
    GenerateState.reset_singleton()
    yield importlib.import_module("generate_with_search_oai")
    sys.modules.pop("generate_with_search_oai", None)
    GenerateState.reset_singleton()


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await aclose_clients()


@pytest.fixture
def servers(qwen_tokenizer, monkeypatch: pytest.MonkeyPatch):
    mock, fake = MockSGLang(qwen_tokenizer), FakeRetriever()
    with serve_mock_sglang(mock) as policy_url, serve_fake_retriever(fake) as retriever_url:
        monkeypatch.setenv("RETRIEVAL_SERVER_URL", retriever_url)
        monkeypatch.setenv("SEARCH_R1_RETRY_INITIAL_WAIT_S", "0.01")
        monkeypatch.setenv("SEARCH_R1_TOPK", "2")
        host, port = policy_url.removeprefix("http://").split(":")
        yield mock, fake, Namespace(sglang_router_ip=host, sglang_router_port=int(port), stub_tokenizer=qwen_tokenizer)


def _sample(question: str) -> Sample:
    return Sample(
        index=7,
        prompt=build_messages(question),
        label={"ground_truth": {"target": ["Oda Venn"]}},
        metadata={"tools": json.loads(tools_json())},
    )


def test_entry_points_have_slimes_signatures(hook) -> None:
    assert list(inspect.signature(hook.generate).parameters) == ["args", "sample", "sampling_params", "evaluation"]
    assert inspect.iscoroutinefunction(hook.generate) and inspect.iscoroutinefunction(hook.reward_func)
    assert "kwargs" in inspect.signature(hook.reward_func).parameters


async def test_generate_wires_router_tokenizer_and_env_settings(hook, servers) -> None:
    mock, fake, args = servers
    question = "Who is the mayor of Ilvermark?"
    mock.script(question, [CALL + IM_END, f"<answer>Oda Venn</answer>{IM_END}"])
    sample = _sample(question)
    generate = hook.generate
    # slime's generate_and_rm: pass `evaluation` only when the signature names it.
    assert "evaluation" in inspect.signature(generate).parameters
    result = await generate(args, sample, {"max_new_tokens": 256, "temperature": 1.0}, evaluation=True)

    assert result is sample and sample.status == Sample.Status.COMPLETED
    records = mock.requests_for(question)
    assert len(records) == 2 and records[1].body["input_ids"] == records[1].prompt_ids
    assert sample.tokens[: len(records[1].prompt_ids)] == records[1].prompt_ids
    assert fake.requests == [{"queries": ["Ilvermark mayor"], "topk": 2, "return_scores": False}]
    assert await hook.reward_func(args, sample) == 1.0
    assert await hook.reward_func(args, [sample, sample]) == [1.0, 1.0]


async def test_generate_stops_when_slime_aborts(hook, servers) -> None:
    mock, _, args = servers
    question = "Who was mayor of Ilvermark before?"
    mock.script(question, [f"<answer>x</answer>{IM_END}"])
    GenerateState(args).aborted = True
    sample = await hook.generate(args, _sample(question), {"max_new_tokens": 64})
    assert sample.status == Sample.Status.ABORTED
    assert mock.requests_for(question) == []


def test_logic_package_imports_without_slime() -> None:
    code = (
        "import sys, search_r1_oai.rollout, search_r1_oai.reward, search_r1_oai.config;"
        "assert not any(m == 'slime' or m.startswith('slime.') for m in sys.modules), 'slime imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_only_the_adapter_knows_slimes_sample() -> None:
    """The core, data and evaluation packages never touch a Sample: no name ``Sample``, none of its fields."""
    import ast

    sample_fields = {"Sample", "Status", "remove_sample", "rollout_log_probs"}
    offenders = []
    for package in ("search_r1_oai", "search_r1_data", "search_r1_eval"):
        for path in sorted((PROJECT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
                if name in sample_fields:
                    offenders.append(f"{path.relative_to(PROJECT)}:{node.lineno} {name}")
    assert offenders == []
