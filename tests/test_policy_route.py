"""Rollouts through slime's real router: ``sglang-router==0.3.2`` (the binary from PyPI, in .venv-real) in front of
SGLang-compatible test servers.

The router drops ``input_ids``/``return_prompt_token_ids``/``return_meta_info``; the rollout must notice that with
its probe and talk to the router's workers directly, one worker per trajectory, and stay token-exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import fastapi
import httpx
import pytest
from fastapi.responses import JSONResponse

from search_r1_oai.policy_route import PROBE_TEXT, ROUTING_KEY_HEADER
from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever
from tests.support.live_server import free_port, serve_app
from tests.support.rollout_helpers import (
    FAST,
    IM_END,
    SAMPLING,
    answer,
    assert_token_exact,
    call,
    new_sample,
    run_sample,
)
from tests.support.sglang_mock import MockSGLang, RecordedRequest, serve_mock_sglang
from tests.support.slime_stub import Sample

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("close_rollout_contexts")]  # e2e: slime's real router binary

ROUTER_START_TIMEOUT_S = 60.0


@contextlib.contextmanager
def real_router(real_venv: Path, worker_urls: list[str], log: Path) -> Iterator[str]:
    """Start ``sglang_router.launch_router`` on free ports in front of ``worker_urls``; yield its URL once it lists
    every worker as healthy; stop it (by PID) on exit."""
    port = free_port()
    argv = [
        str(real_venv / "bin" / "python"),
        "-m",
        "sglang_router.launch_router",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
        "--log-level",
        "warn",
        "--worker-urls",
        *worker_urls,
    ]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"router exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, (
                f"router not ready in {ROUTER_START_TIMEOUT_S}s: {log.read_text()[-2000:]}"
            )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                listed = httpx.get(url + "/workers", timeout=2).json()["workers"]
                if sorted(w["url"] for w in listed if w["is_healthy"]) == sorted(worker_urls):
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def two_workers(qwen_tokenizer, real_venv, tmp_path_factory):
    """Two test servers behind one real router: ``(router_url, [mock_a, mock_b])``."""
    mocks = [MockSGLang(qwen_tokenizer, version="0.5.15") for _ in range(2)]
    with contextlib.ExitStack() as stack:
        for mock in mocks:
            mock.url = stack.enter_context(serve_mock_sglang(mock))
        log = tmp_path_factory.mktemp("router") / "router.log"
        router_url = stack.enter_context(real_router(real_venv, [m.url for m in mocks], log))
        yield router_url, mocks


@pytest.fixture
def settings(retriever):
    return dataclasses.replace(FAST, retrieval_urls=(retriever.url,))


async def rollout(policy_url: str, tokenizer, settings, question: str) -> Sample:
    return await run_sample(
        new_sample(question), dict(SAMPLING), tokenizer=tokenizer, policy_url=policy_url, settings=settings
    )


def served_by(mocks: list[MockSGLang], question: str) -> list[MockSGLang]:
    return [m for m in mocks if m.requests_for(question)]


async def test_the_router_drops_the_token_id_fields(two_workers) -> None:
    """If a router release starts forwarding them, this fails: then going through the router may become the path."""
    router_url, mocks = two_workers
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": PROBE_TEXT}],
        "input_ids": [1, 2, 3],
        "return_prompt_token_ids": True,
        "return_meta_info": True,
        "max_tokens": 1,
        "logprobs": True,
    }
    before = {id(m): len(m.requests_for(PROBE_TEXT)) for m in mocks}
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(router_url + "/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    received = [r.body for m in mocks for r in m.requests_for(PROBE_TEXT)[before[id(m)] :]]
    assert len(received) == 1
    assert not {"input_ids", "return_prompt_token_ids", "return_meta_info"} & received[0].keys()
    assert received[0].get("max_completion_tokens") == 1 and "max_tokens" not in received[0]
    assert "prompt_token_ids" not in reply.json()["choices"][0]  # what a rollout through the router would get


@pytest.mark.parametrize("searches", [0, 1, 2])
async def test_multi_turn_rollouts_through_the_router_stay_token_exact(
    two_workers, settings, qwen_tokenizer, searches: int
) -> None:
    router_url, mocks = two_workers
    q = f"Who first mapped the Quillon reef ({searches} searches)?"
    script = [call([f"Quillon reef {i}"]) + IM_END for i in range(searches)] + [answer("Gold")]
    for mock in mocks:
        mock.script(q, script)
    sample = await rollout(router_url, qwen_tokenizer, settings, q)
    assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
    [worker] = served_by(mocks, q)  # every turn on one worker
    records = worker.requests_for(q)
    assert len(records) == searches + 1
    assert_token_exact(sample, records)
    assert sample.metadata["token_exact"] is True and sample.metadata["searches"] == searches


async def test_trajectories_spread_over_the_workers(two_workers, settings, qwen_tokenizer) -> None:
    router_url, mocks = two_workers
    questions = [f"Which tide shaped the Harrowmere dunes, part {i}?" for i in range(6)]
    for q in questions:
        for mock in mocks:
            mock.script(q, [call([q]) + IM_END, answer("Gold")])
    samples = await asyncio.gather(*(rollout(router_url, qwen_tokenizer, settings, q) for q in questions))
    used = set()
    for q, sample in zip(questions, samples, strict=True):
        assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
        [worker] = served_by(mocks, q)
        used.add(id(worker))
        assert_token_exact(sample, worker.requests_for(q))
    assert used == {id(m) for m in mocks}, "new trajectories go to every healthy worker"


async def test_a_trajectory_moves_to_another_worker_when_its_worker_dies(
    qwen_tokenizer, real_venv, tmp_path, settings
) -> None:
    q = "Who rebuilt the Ostry lighthouse?"
    slow = FakeRetriever(delay_s=1.0)
    mocks = [MockSGLang(qwen_tokenizer, version="0.5.15") for _ in range(2)]
    with contextlib.ExitStack() as stack:
        servers = []
        for mock in mocks:
            server = contextlib.ExitStack()
            mock.url = server.enter_context(serve_mock_sglang(mock))
            servers.append(stack.enter_context(server))
            mock.script(q, [call(["Ostry lighthouse"]) + IM_END])
        retriever_url = stack.enter_context(serve_fake_retriever(slow))
        router_url = stack.enter_context(real_router(real_venv, [m.url for m in mocks], tmp_path / "router.log"))
        task = asyncio.create_task(
            rollout(router_url, qwen_tokenizer, dataclasses.replace(settings, retrieval_urls=(retriever_url,)), q)
        )
        deadline = time.monotonic() + 30
        while not slow.requests:  # turn 1 is done, the search is running
            assert time.monotonic() < deadline and not task.done(), "the first turn never reached the retriever"
            await asyncio.sleep(0.05)
        [first] = served_by(mocks, q)
        other = next(m for m in mocks if m is not first)
        other.replace_script(q, [answer("Gold")])
        servers[mocks.index(first)].close()  # the trajectory's worker goes away mid-trajectory
        sample = await asyncio.wait_for(task, timeout=60)
    assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
    records: list[RecordedRequest] = first.requests_for(q) + other.requests_for(q)
    assert [len(first.requests_for(q)), len(other.requests_for(q))] == [1, 1]
    assert_token_exact(sample, records)  # turn 2 on the new worker conditions on exactly our ids


async def test_no_path_with_token_ids_fails_every_sample_with_one_message(
    qwen_tokenizer, real_venv, tmp_path, settings
) -> None:
    old = MockSGLang(qwen_tokenizer, version="0.5.12")  # returns no ids at all
    questions = ["Who sailed the Brisk Wren?", "Who painted the Lowgate fresco?"]
    for q in questions:
        old.script(q, [answer("Gold")])
    with serve_mock_sglang(old) as worker_url, real_router(real_venv, [worker_url], tmp_path / "router.log") as url:
        samples = await asyncio.gather(*(rollout(url, qwen_tokenizer, settings, q) for q in questions))
    errors = {s.metadata["error"] for s in samples}
    assert [s.status for s in samples] == [Sample.Status.FAILED] * 2
    assert all(s.metadata["stop_reason"] == "capability" and s.remove_sample for s in samples)
    [error] = errors  # one message
    assert f"router at {url}" in error and "does not forward the token-id fields" in error
    assert worker_url in error and "SGLang >= 0.5.13" in error and "SEARCH_R1_ALLOW_REENCODE_FALLBACK=1" in error
    assert all(not old.requests_for(q) for q in questions), "no training turn is spent on a path without ids"


async def test_a_router_that_forwards_the_fields_is_used_with_a_routing_key(
    qwen_tokenizer, settings, retriever
) -> None:
    """A router that keeps the fields (probed, not assumed) is allowed; each trajectory sends its own key."""
    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    seen: list[tuple[str | None, dict]] = []
    app = fastapi.FastAPI()
    with serve_mock_sglang(mock) as worker_url:

        @app.get("/workers")
        async def workers() -> dict:
            return {"workers": [{"url": worker_url, "is_healthy": True}], "total": 1}

        @app.post("/v1/chat/completions")
        async def forward(request: fastapi.Request) -> JSONResponse:
            body = await request.json()
            seen.append((request.headers.get(ROUTING_KEY_HEADER), body))
            async with httpx.AsyncClient(timeout=30) as client:
                reply = await client.post(worker_url + "/v1/chat/completions", json=body)
            return JSONResponse(reply.json(), status_code=reply.status_code)

        questions = ["Who tuned the Fellmoor organ?", "Who bound the Ashcombe ledger?"]
        for q in questions:
            mock.script(q, [call([q]) + IM_END, answer("Gold")])
        with serve_app(app, name="forwarding-router") as router_url:
            samples = await asyncio.gather(*(rollout(router_url, qwen_tokenizer, settings, q) for q in questions))
    for q, sample in zip(questions, samples, strict=True):
        assert sample.status == Sample.Status.COMPLETED, sample.metadata.get("error")
        assert_token_exact(sample, mock.requests_for(q))
    turns = [(key, body) for key, body in seen if PROBE_TEXT not in json.dumps(body)]
    assert len(turns) == 4 and all(key for key, _ in turns)
    keys_by_question = {q: {key for key, body in turns if q in json.dumps(body)} for q in questions}
    first_turn_keys = [keys_by_question[q] for q in questions]
    assert all(len(keys) == 1 for keys in first_turn_keys), "one routing key per trajectory"
    assert first_turn_keys[0] != first_turn_keys[1]
