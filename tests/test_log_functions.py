"""The search metrics slime logs through ``--custom-(eval-)rollout-log-function-path``: names and values on finished
samples, slime's own logging kept, and a real rollout's numbers."""

from __future__ import annotations

import dataclasses
import math
from argparse import Namespace

import pytest

from generate_with_search_oai import apply_result, log_eval_metrics, log_rollout_metrics, score_sample
from search_r1_oai.health import reset_process_monitor
from search_r1_oai.health_checks import MODES
from search_r1_oai.prompts import build_messages
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats
from tests.support.rollout_helpers import FAST, IM_END, SAMPLING, answer, call, close_contexts, new_sample, run_sample
from tests.support.sglang_mock import MockSGLang, serve_mock_sglang
from tests.support.slime_stub import Sample, install_slime_logging

ARGS = Namespace(search_r1_format_score=0.2)


@pytest.fixture(autouse=True)
def fresh_health_monitor():
    """The health monitor keeps a window per process: each test starts without one."""
    reset_process_monitor()
    yield
    reset_process_monitor()


def _finished(source: str, outcome: Outcome, final: str, gold: str, **stats) -> Sample:
    """A sample as slime holds it after generate() and the reward."""
    sample = Sample(prompt=build_messages("q"), label={"ground_truth": {"target": [gold]}}, metadata={})
    sample.metadata["data_source"] = source
    reason = {"COMPLETED": "answer", "TRUNCATED": "max_turns", "FAILED": "policy_error"}[outcome.name]
    result = RolloutResult(
        tokens=[1, 2, 3],
        prompt_length=2,
        loss_mask=[1],
        log_probs=[-0.1],
        response="x",
        outcome=outcome,
        stop_reason=reason,
        # From the flat metadata keys, as slime's metadata carries them (a tool's counters among them).
        stats=RolloutStats.from_dict({"final_content": final, "has_final_answer": "<answer>" in final, **stats}),
        train=outcome is not Outcome.FAILED,
    )
    apply_result(sample, result)
    sample.reward = score_sample(sample, 0.2)
    return sample


@pytest.fixture
def samples() -> list[Sample]:
    return [
        _finished(
            "nq",
            Outcome.COMPLETED,
            "<answer>Paris</answer>",
            "Paris",
            turns=2,
            searches=1,
            tool_calls=1,
            search_latencies_s=[0.1],
        ),
        _finished(
            "nq",
            Outcome.COMPLETED,
            "<answer>Lyon</answer>",
            "Paris",
            turns=3,
            searches=2,
            tool_calls=2,
            tool_errors=1,
            search_latencies_s=[0.2, 0.3],
        ),
        _finished(
            "hotpotqa",
            Outcome.TRUNCATED,
            "",
            "Oslo",
            turns=4,
            searches=3,
            tool_calls=4,
            tool_errors=1,
            search_latencies_s=[0.4, 0.5, 2.0],
        ),
        _finished("hotpotqa", Outcome.FAILED, "", "Oslo", token_exact=False),
    ]


def test_rollout_metrics_names_and_values(samples: list[Sample]) -> None:
    extra: dict = {"rollout/existing": 1.0}
    assert log_rollout_metrics(5, ARGS, samples, extra, 12.0) is False, "slime must still log its own metrics"
    m = {k.removeprefix("rollout/search/"): v for k, v in extra.items() if k.startswith("rollout/search/")}
    assert extra["rollout/existing"] == 1.0
    assert m["samples"] == 4
    assert m["searches_per_sample"] == pytest.approx(6 / 4)
    assert m["turns_per_sample"] == pytest.approx(9 / 4)
    assert m["final_answer_rate"] == pytest.approx(2 / 4)
    assert m["tool_error_rate"] == pytest.approx(2 / 7)
    assert m["retrieval_latency_p50_s"] == pytest.approx(0.3)
    assert m["retrieval_latency_p99_s"] == pytest.approx(2.0)
    assert m["format_score_rate"] == pytest.approx(1 / 4), "only the wrong but well-formed answer"
    assert m["token_exact_rate"] == pytest.approx(3 / 4)
    assert (m["failed_rate"], m["truncated_rate"], m["aborted_rate"]) == (0.25, 0.25, 0.0)
    assert (m["nq/em"], m["hotpotqa/em"], m["nq/samples"]) == (0.5, 0.0, 2)
    assert m["nq/f1"] == pytest.approx(0.5)


def test_rollout_and_eval_metrics_carry_the_health_summary(samples: list[Sample]) -> None:
    """Beside the search metrics: every health mode as 0/1 (here one sample is not token-exact and 2 of 7 tool
    calls failed: two modes)."""
    extra: dict = {}
    log_rollout_metrics(5, ARGS, samples, extra, 1.0)
    health = {k.removeprefix("rollout/health/"): v for k, v in extra.items() if k.startswith("rollout/health/")}
    assert {mode for mode in MODES if health[mode]} == {"token_exact_below_1", "tool_errors_high"}
    assert health["answerless_rate"] == pytest.approx(2 / 4) and health["format_failure_rate"] == pytest.approx(0.0)
    data = {"nq": {"rewards": [s.reward for s in samples[:2]], "samples": samples[:2]}}
    eval_extra: dict = {}
    log_eval_metrics(25, ARGS, data, eval_extra)
    assert eval_extra["eval/nq/health/token_exact_below_1"] == 0.0 and eval_extra["eval/nq/health/alarms"] == 1.0


def test_groups_of_samples_are_flattened(samples: list[Sample]) -> None:
    extra: dict = {}
    log_rollout_metrics(1, ARGS, [samples[:2], samples[2:]], extra, 1.0)
    assert extra["rollout/search/samples"] == 4


def test_eval_metrics_per_set(samples: list[Sample]) -> None:
    data = {
        "nq": {"rewards": [s.reward for s in samples[:2]], "samples": samples[:2]},
        "hotpotqa": {"rewards": [0.0, 0.0], "samples": samples[2:]},
    }
    extra: dict = {}
    assert log_eval_metrics(25, ARGS, data, extra) is False
    assert extra["eval/nq/search/nq/em"] == 0.5 and extra["eval/hotpotqa/search/truncated_rate"] == 0.5
    assert extra["eval/nq/search/searches_per_sample"] == pytest.approx(1.5)


def test_without_a_metrics_dict_they_are_logged_at_slimes_step(samples, monkeypatch) -> None:
    """slime passes ``None`` when its rollout function gathered no metrics: ours then go through slime's logger."""
    logged = install_slime_logging(monkeypatch, lambda rollout_id: rollout_id * 10)
    log_rollout_metrics(3, ARGS, samples, None, 1.0)
    [(metrics, step_key)] = logged
    assert step_key == "rollout/step" and metrics["rollout/step"] == 30
    assert metrics["rollout/search/samples"] == 4


def test_no_samples_no_metrics() -> None:
    extra: dict = {}
    log_rollout_metrics(0, ARGS, [], extra, 0.0)
    assert extra == {}


async def test_real_rollouts_report_their_searches(qwen_tokenizer, retriever) -> None:
    """Two rollouts through the SGLang mock and the fake retriever: what the metrics see is what happened."""
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    settings = dataclasses.replace(FAST, retrieval_urls=(retriever.url,))
    questions = ["Who built the Quell tower?", "Who painted Ossin?"]
    mock.script(questions[0], [call(["Quell tower builder"]) + IM_END, answer("Gold")])
    mock.script(questions[1], [answer("Silver")])
    done = []
    with serve_mock_sglang(mock) as url:
        for q in questions:
            sample = new_sample(q)
            sample.metadata["data_source"] = "toy"
            sample = await run_sample(
                sample, dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=url, settings=settings
            )
            sample.reward = score_sample(sample, settings.format_score)
            done.append(sample)
        await close_contexts()
    extra: dict = {}
    log_rollout_metrics(0, ARGS, done, extra, 1.0)
    assert extra["rollout/health/alarms"] == 0 and extra["rollout/health/response_length_mean"] > 0
    assert extra["rollout/search/searches_per_sample"] == 0.5
    assert extra["rollout/search/turns_per_sample"] == 1.5
    assert extra["rollout/search/toy/em"] == 0.5
    assert extra["rollout/search/token_exact_rate"] == 1.0 and extra["rollout/search/tool_error_rate"] == 0.0
    assert 0 < extra["rollout/search/retrieval_latency_p50_s"] < 5 and not math.isnan(
        extra["rollout/search/retrieval_latency_p99_s"]
    )
