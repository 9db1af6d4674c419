"""What the rollout relies on that only SGLang's real serving code can show (scripted engine, tests/support/real_sglang.py).

The rollout scenarios themselves run against these servers in ``test_rollout.py`` and the mock is diffed against
them in ``test_sglang_mock_vs_real.py``; here: slime's abort path through ``/abort_request``, the router check the
rollout does first (``GET /workers``), and the scripted engine's own guard rails.
"""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from generate_with_search_oai import STATE_KEY
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.real_sglang import RealSGLang
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    call,
    close_contexts,
    new_sample,
    observation_texts,
    run_sample,
)
from tests.support.sglang_mock import Reply
from tests.support.sglang_releases import SGLANG_VERSIONS
from tests.support.slime_stub import Sample

pytestmark = pytest.mark.e2e  # SGLang's real serving code, one server per release

# A request held by the engine this long after its first token gives the test time to abort it (never waited out).
HOLD_S = 30.0


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    await close_contexts()


@pytest.fixture(scope="module", params=SGLANG_VERSIONS, ids=lambda v: f"sglang-{v}")
def real(request, real_sglang_servers) -> RealSGLang:
    try:
        return real_sglang_servers.get(request.param)
    except RuntimeError as exc:
        pytest.fail(str(exc))


async def _wait_until_running(real: RealSGLang, question: str, count: int) -> None:
    """Until the engine holds the ``count``-th request of ``question`` (bounded: 30 s)."""
    for _ in range(3000):
        records = [r for r in await asyncio.to_thread(real.engine_records) if r["question"] == question]
        if len(records) >= count and records[count - 1]["finish_reason"] is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine never held request {count} of {question!r}")


async def test_abort_request_mid_turn_gives_a_resumable_aborted_sample(real, qwen_tokenizer) -> None:
    """slime's abort: POST /abort_request to the worker while a turn decodes. SGLang finishes the request after one
    more decode step with finish_reason abort; the sample is ABORTED, token-exact, and resumes where it stopped."""
    q = f"Which guild founded Ambergate, asked of {real.version}?"
    real.script(q, [call(["Ambergate guild"]) + IM_END, Reply("I still need the second source", delay_s=HOLD_S)])
    with serve_fake_retriever(FakeRetriever()) as retriever_url:
        settings = dataclasses.replace(FAST, retrieval_urls=(retriever_url,), policy_timeout_s=HOLD_S * 2)

        async def abort_second_turn() -> None:
            await _wait_until_running(real, q, 2)
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(f"{real.direct_url}/abort_request", json={"abort_all": True})
            assert response.status_code == 200, response.text

        aborter = asyncio.create_task(abort_second_turn())
        sample = await run_sample(
            new_sample(q), dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=real.url, settings=settings
        )
        await aborter
        records = real.requests_for(q)
        assert [r.finish_reason for r in records] == ["tool_calls", "abort"]
        assert records[1].response["choices"][0]["meta_info"]["finish_reason"] == {
            "type": "abort",
            "message": "Aborted",
            "status_code": None,
            "err_type": None,
        }
        first_two = qwen_tokenizer.encode("I still need the second source", add_special_tokens=False)[:2]
        assert records[1].output_ids == first_two, "the token before the abort and one more decode step"
        assert sample.status == Sample.Status.ABORTED and sample.metadata["stop_reason"] == "abort"
        assert_token_exact(sample, records)
        assert sample.metadata[STATE_KEY]["pending_turn_start"] is not None

        real.script(q, [" the archive.\n" + answer("Gold")])
        sample = await run_sample(
            sample, dict(SAMPLING), tokenizer=qwen_tokenizer, policy_url=real.url, settings=settings
        )
        records = real.requests_for(q)
        assert len(records) == 3 and records[2].body["input_ids"] == records[2].prompt_ids
        assert_token_exact(sample, records)
        assert sample.status == Sample.Status.COMPLETED and sample.metadata["resumed"] == 1
        assert "Passage 0 about Ambergate guild." in observation_texts(sample, qwen_tokenizer)[0]


def test_a_plain_server_answers_workers_with_404(real) -> None:
    """The rollout's first call (policy_route): 404 on GET /workers means "an SGLang server, not a router"."""
    assert httpx.get(f"{real.direct_url}/workers", timeout=10).status_code == 404


def test_unscripted_and_exhausted_requests_fail_loudly(real) -> None:
    """The scripted engine never invents tokens: a prompt with no script, or a script used up, is an HTTP 400
    (through SGLang's own abort-with-status path) that names the problem."""
    body = {"model": "m", "messages": [{"role": "user", "content": "An unscripted question?"}], "max_tokens": 8}
    response = httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and "no scripted question" in response.json()["message"]
    q = f"A question scripted once for {real.version}?"
    real.script(q, ["Once." + IM_END])
    body["messages"] = [{"role": "user", "content": q}]
    assert httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    response = httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and "is exhausted" in response.json()["message"]
