"""Nothing waits forever: policy and retriever servers that trickle bytes (1 byte/s) or stall after their headers,
on 127.0.0.1, against the real rollout. httpx's timeouts are per read, so only the overall deadlines end these.

Every test bounds its own wait with ``asyncio.wait_for`` (a hang fails the test instead of the suite) and checks
that the sample ended within its deadline plus a generous margin, with the status and reason it should have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest

from search_r1_oai.httpclients import AttemptTimeout, RequestFailed, post_json
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    call,
    new_sample,
    observation_texts,
    run_sample,
)
from tests.support.sglang_mock import Reply
from tests.support.slime_stub import Sample
from tests.support.slow_responses import FAULTS, slow_response

MARGIN_S = 1.0
# Per-read and per-attempt timeouts far above the deadlines under test: only the deadline can end the wait.
PATIENT = dataclasses.replace(FAST, policy_timeout_s=30.0, retrieval_timeout_s=30.0, policy_retries=3)


pytestmark = pytest.mark.usefixtures("close_rollout_contexts")


async def timed_rollout(mock, tokenizer, settings, sample: Sample, bound_s: float) -> tuple[Sample, float]:
    started = time.monotonic()
    run = run_sample(sample, dict(SAMPLING), tokenizer=tokenizer, policy_url=mock.url, settings=settings)
    result = await asyncio.wait_for(run, timeout=bound_s + 10)
    return result, time.monotonic() - started


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_policy_that_never_finishes_ends_the_trajectory_at_its_deadline(
    mock, retriever, qwen_tokenizer, fault
) -> None:
    q = f"Who carved the Tessaly gate ({fault})?"
    mock.script(q, [call(["Tessaly gate"]) + IM_END, Reply(answer("x"), fault=fault)])
    settings = dataclasses.replace(PATIENT, retrieval_urls=(retriever.url,), trajectory_timeout_s=1.5)
    sample, elapsed = await timed_rollout(mock, qwen_tokenizer, settings, new_sample(q), 1.5)
    assert elapsed < 1.5 + MARGIN_S
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "deadline"
    assert "SEARCH_R1_TRAJECTORY_TIMEOUT_S=1.5 s" in sample.metadata["error"]
    assert sample.remove_sample is True, "a trajectory cut by the wall clock is not trained on"
    # What was kept is exact: the first turn and its tool result, ready for the turn that never came.
    assert_token_exact(sample, mock.requests_for(q)[:1], ends_after_output=False)
    assert "Passage 0 about Tessaly gate." in observation_texts(sample, qwen_tokenizer)[0]


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_policy_call_past_its_deadline_fails_the_sample(mock, retriever, qwen_tokenizer, fault) -> None:
    q = f"Which river feeds Lake Orrin ({fault})?"
    mock.script(q, [Reply(answer("x"), fault=fault)])
    settings = dataclasses.replace(PATIENT, retrieval_urls=(retriever.url,), policy_deadline_s=1.2)
    sample, elapsed = await timed_rollout(mock, qwen_tokenizer, settings, new_sample(q), 1.2)
    assert elapsed < 1.2 + MARGIN_S
    assert sample.status == Sample.Status.FAILED and sample.metadata["stop_reason"] == "policy_error"
    assert "timed out" in sample.metadata["error"] and "call's deadline" in sample.metadata["error"]
    assert sample.remove_sample is True
    assert len(mock.requests_for(q)) == 1, "no retry starts once the call's deadline has passed"


@pytest.mark.parametrize("fault", FAULTS)
async def test_each_attempt_is_cut_at_its_timeout_and_retried_within_the_deadline(fault) -> None:
    """The overall limit of one attempt holds even when bytes keep coming faster than the per-read timeout."""
    from fastapi import FastAPI

    app, calls = FastAPI(), []

    @app.post("/slow")
    async def slow() -> object:
        calls.append(time.monotonic())
        return slow_response(fault, b'{"ok": true}' * 100, interval_s=0.1)

    from tests.support.live_server import serve_app

    with serve_app(app, name="slow") as url:
        settings = dataclasses.replace(FAST, retry_initial_wait_s=0.01, retry_max_wait_s=0.01)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
            started = time.monotonic()
            with pytest.raises(RequestFailed) as caught:
                await asyncio.wait_for(
                    post_json(client, url + "/slow", 10, settings, attempt_timeout_s=0.5, deadline_s=1.6, json={}),
                    timeout=12,
                )
            elapsed = time.monotonic() - started
    assert isinstance(caught.value.__cause__, AttemptTimeout)
    assert elapsed < 1.6 + MARGIN_S
    assert 3 <= caught.value.attempts <= 4 and len(calls) == caught.value.attempts


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_retriever_that_never_finishes_is_a_tool_message(mock, qwen_tokenizer, fault) -> None:
    q = f"Who mapped the Quillon reef ({fault})?"
    mock.script(q, [call(["Quillon reef"]) + IM_END, answer("Gold")])
    fake = FakeRetriever(slow_next=100, slow_fault=fault)
    with serve_fake_retriever(fake) as url:
        settings = dataclasses.replace(PATIENT, retrieval_urls=(url,), retrieval_deadline_s=1.0)
        sample, elapsed = await timed_rollout(mock, qwen_tokenizer, settings, new_sample(q), 1.0)
    assert elapsed < 1.0 + MARGIN_S
    assert sample.status == Sample.Status.COMPLETED and sample.remove_sample is not True
    assert_token_exact(sample, mock.requests_for(q))
    [observation] = observation_texts(sample, qwen_tokenizer)[:1]
    assert "Error: search failed: retriever failed after 1 attempt(s): timed out: no reply within 1 s" in observation
    assert sample.metadata["tool_errors"] == 1 and sample.metadata["bad_tool_calls"] == 0
    assert len(fake.requests) == 1


async def test_a_retriever_stalling_past_the_trajectory_deadline_ends_the_sample(mock, qwen_tokenizer) -> None:
    q = "Who founded the Harrow lighthouse?"
    mock.script(q, [call(["Harrow lighthouse"]) + IM_END, answer("never asked")])
    fake = FakeRetriever(slow_next=100, slow_fault="stall")
    with serve_fake_retriever(fake) as url:
        settings = dataclasses.replace(PATIENT, retrieval_urls=(url,), trajectory_timeout_s=1.5)
        sample, elapsed = await timed_rollout(mock, qwen_tokenizer, settings, new_sample(q), 1.5)
    assert elapsed < 1.5 + MARGIN_S
    assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "deadline"
    assert sample.remove_sample is True
    assert_token_exact(sample, mock.requests_for(q)), "cut between the turn and its tool result: nothing half-added"


async def test_128_rollouts_with_8_on_a_trickling_policy_all_finish_by_the_deadline(
    mock, retriever, qwen_tokenizer
) -> None:
    """One stuck sample must not hold the others (a slime rollout step waits for all of them)."""
    questions = [f"Which bell rings in Osric tower {i}?" for i in range(128)]
    stuck = set(questions[::16])
    for q in questions:
        mock.script(q, [Reply(answer("Gold"), fault="trickle") if q in stuck else answer("Gold")])
    deadline = 8.0  # room for 120 healthy trajectories on a busy 2-core machine
    settings = dataclasses.replace(PATIENT, retrieval_urls=(retriever.url,), trajectory_timeout_s=deadline)
    finished_at: dict[str, float] = {}

    async def one(q: str) -> Sample:
        sample = await run_sample(
            new_sample(q), dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=mock.url, settings=settings
        )
        finished_at[q] = time.monotonic()
        return sample

    started = time.monotonic()
    samples = await asyncio.wait_for(asyncio.gather(*(one(q) for q in questions)), timeout=deadline + 20)
    healthy_done = max(finished_at[q] for q in questions if q not in stuck) - started
    stuck_done = max(finished_at[q] for q in stuck) - started
    # The stuck samples end at their deadline, whatever the healthy ones cost this machine: the step is over one
    # margin after both the deadline and the last healthy sample, never held longer by a stuck one.
    assert stuck_done < max(deadline, healthy_done) + MARGIN_S
    assert len(stuck) == 8
    for q, sample in zip(questions, samples, strict=True):
        if q in stuck:
            assert sample.status == Sample.Status.TRUNCATED and sample.metadata["stop_reason"] == "deadline"
        else:
            assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
            assert_token_exact(sample, mock.requests_for(q))


async def test_a_router_whose_worker_list_stalls_does_not_hold_the_route(qwen_tokenizer) -> None:
    """The route is resolved once, under a lock every sample waits on: its own calls are bounded too."""
    from fastapi import FastAPI

    from tests.support.live_server import serve_app

    app = FastAPI()

    @app.get("/workers")
    async def workers() -> object:
        return slow_response("stall", b'{"workers": []}')

    with serve_app(app, name="stalling-router") as url:
        settings = dataclasses.replace(PATIENT, connect_timeout_s=30.0, policy_deadline_s=1.0)
        started = time.monotonic()
        samples = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_sample(
                        new_sample(f"Who keeps the Wend archive {i}?"),
                        dict(SAMPLING),
                        tokenizer=qwen_tokenizer,
                        policy_url=url,
                        settings=settings,
                    )
                    for i in range(4)
                )
            ),
            timeout=15,
        )
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + MARGIN_S
    for sample in samples:
        assert sample.status == Sample.Status.FAILED and sample.metadata["stop_reason"] == "policy_error"
        assert "cannot reach the policy server" in sample.metadata["error"] and "timed out" in sample.metadata["error"]
