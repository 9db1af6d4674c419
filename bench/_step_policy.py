"""The policy side of ``bench.rollout_step``: scripted GRPO conversations and a token-throughput latency model.

:class:`ScriptedPolicy` answers like SGLang 0.5.15 (the replies of ``tests/support/sglang_mock.py``: token ids,
logprobs, qwen25 tool calls) at CPU speed, then holds each reply back for as long as a continuous-batching engine
would take to produce it (:class:`ThroughputModel`). Run as a child process of the benchmark
(``python -m bench._step_policy CONFIG_JSON PORT_FILE``) so its work has its own core.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import fastapi
import uvicorn
from fastapi.responses import JSONResponse

from bench._step_retriever import serve_forever
from search_r1_oai.policy_route import PROBE_TEXT
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from search_r1_oai.trajectory import encode_text, render_prompt_ids
from tests.support.sglang_mock import (
    DEFAULT_STOP_TOKENS,
    TOOL_CALL_START,
    error_body,
    mock_logprob,
    parse_qwen25_tool_calls,
)

_TEXT = (
    "the river city was founded by an early settler who later moved north along the coast where a small harbour "
    "grew into a trading town known for its cathedral its annual festival and a long line of painters and poets "
    "whose work is kept in the regional museum near the old railway bridge"
)
_WORDS = _TEXT.split()


@dataclass(frozen=True)
class PolicyModel:
    """What one rollout node's SGLang engines do per second, all GPUs together (see ``bench.rollout_step --help``)."""

    prefill_tps: float = 200_000.0  # new prompt tokens per second, one shared queue (compute-bound)
    decode_seq_tps: float = 300.0  # tokens per second of one sequence decoding alone (memory-bound step time)
    decode_total_tps: float = 80_000.0  # most tokens per second over all running sequences
    max_running: int = 1024  # sequences decoding at once; more wait for a slot
    time_scale: float = 1.0  # wall seconds per simulated second


@dataclass(frozen=True)
class Script:
    """The step's conversations: ``prompts`` x ``samples``, each searching 1..``max_searches`` times, then answering."""

    prompts: int = 64
    samples: int = 8
    max_searches: int = 3
    think_words: int = 80
    answer_words: int = 30
    seed: int = 0


def questions(script: Script) -> list[str]:
    """One question per trajectory. A group's samples carry a sample tag, because a scripted server can only tell
    the samples of one prompt apart by their text (a real policy samples them differently)."""
    return [
        f"[p{p:03d}s{s:02d}] Which harbour town did settler number {p} reach?"
        for p in range(script.prompts)
        for s in range(script.samples)
    ]


def searches_of(script: Script, index: int) -> int:
    """How many times trajectory ``index`` searches: spread over 1..max_searches, so turns finish unevenly."""
    return 1 + random.Random(script.seed * 1_000_003 + index).randrange(script.max_searches)


def conversation(script: Script, index: int) -> list[str]:
    """Raw assistant texts of trajectory ``index``: reasoning + one search call per turn, then an answer."""
    rng = random.Random(script.seed * 7919 + index)

    def words(count: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(count))

    texts = []
    for turn in range(searches_of(script, index)):
        call = {"name": "search", "arguments": {"queries": [f"settler {index} harbour {turn} {words(5)}"]}}
        texts.append(f"{words(script.think_words)}\n<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>")
    texts.append(f"{words(script.answer_words)}\n<answer>Port {index}</answer><|im_end|>")
    return texts


def _common_prefix_length(sequences: list[list[int]]) -> int:
    shortest = min(sequences, key=len)
    for i, token in enumerate(shortest):
        if any(seq[i] != token for seq in sequences):
            return i
    return len(shortest)


class ThroughputModel:
    """A continuous-batching engine in one sentence per phase.

    Prefill: one FIFO shared by every request at ``prefill_tps``. Decode: processor sharing, each running sequence
    at ``min(decode_seq_tps, decode_total_tps / running)`` tokens/s, at most ``max_running`` sequences (the rest
    wait for a slot). Event-driven on the server's loop: remaining work is advanced at every arrival and departure.
    """

    def __init__(self, model: PolicyModel) -> None:
        self.model = model
        self._prefill_free_at = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._remaining: dict[int, float] = {}
        self._done: dict[int, asyncio.Future] = {}
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._ids = 0
        self.busy_tokens = 0

    def _rate(self) -> float:
        running = len(self._remaining)
        return min(self.model.decode_seq_tps, self.model.decode_total_tps / running) if running else 0.0

    def _advance(self, now: float) -> None:
        step = (now - self._last) / self.model.time_scale * self._rate()
        self._last = now
        for key in self._remaining:
            self._remaining[key] -= step

    def _reschedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._remaining:
            soonest = max(0.0, min(self._remaining.values())) / self._rate() * self.model.time_scale
            self._timer = loop.call_at(self._last + soonest, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._advance(loop.time())
        for key in [k for k, left in self._remaining.items() if left <= 1e-6]:
            del self._remaining[key]
            future = self._done.pop(key)
            if not future.done():
                future.set_result(None)
        self._reschedule(loop)

    async def generate(self, prefill_tokens: int, decode_tokens: int) -> None:
        """Return when a request with this many new prompt tokens and sampled tokens would be answered."""
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.model.max_running)
        start = max(loop.time(), self._prefill_free_at)
        self._prefill_free_at = start + prefill_tokens / self.model.prefill_tps * self.model.time_scale
        await asyncio.sleep(self._prefill_free_at - loop.time())
        self.busy_tokens += prefill_tokens + decode_tokens
        if decode_tokens <= 0:
            return
        async with self._slots:
            self._advance(loop.time())
            self._ids += 1
            key = self._ids
            future = loop.create_future()
            self._remaining[key], self._done[key] = float(decode_tokens), future
            self._reschedule(loop)
            await future


class ScriptedPolicy:
    """SGLang 0.5.15's chat-completions replies for the scripted step, each held back by :class:`ThroughputModel`.

    The replies have the fields and values ``tests/support/sglang_mock.py`` gives for 0.5.15 (server-rendered first
    prompt, ``input_ids`` after, ``prompt_token_ids``, ``meta_info.output_token_logprobs`` with
    :func:`mock_logprob`, qwen25 tool calls), but everything that does not depend on the request is worked out
    once: the mock spends ~10 ms of CPU a call, too much for ~1500 calls a run on two cores. Left out: the
    OpenAI-style per-token ``logprobs.content`` (the rollout reads ``meta_info``'s triples). A conversation is
    recognised by its first prompt's ids, which every later ``input_ids`` starts with (the token-exact invariant).
    New prompt tokens are those past the conversation's previous prompt + output (SGLang's radix cache keeps the
    rest); on the first turn that is the prompt after the system prompt and tools, which all conversations share.
    """

    def __init__(self, tokenizer: Any, model: PolicyModel, script: Script) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.script = script
        self.timing = ThroughputModel(model)
        self.stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in DEFAULT_STOP_TOKENS}
        self._pieces: dict[int, str] = {}
        self._first: dict[str, list[int]] = {}  # question -> its first prompt's ids
        self._by_prefix: dict[tuple[int, ...], str] = {}
        self._by_user_text: dict[str, str] = {}
        self._replies: dict[str, list[list[int]]] = {}
        self._queues: dict[str, list[list[int]]] = {}
        self._seen: dict[str, int] = {}
        self.served = 0
        self.output_tokens = 0
        self.calls: list[tuple[str, int, int]] = []  # (question, new prompt tokens, sampled tokens), in order
        for index, question in enumerate(questions(script)):
            messages = build_messages(question)
            ids = render_prompt_ids(tokenizer, messages, [SEARCH_TOOL])
            self._by_user_text[messages[-1]["content"]] = question
            self._first[question] = ids
            self._by_prefix[tuple(ids)] = question
            self._replies[question] = [encode_text(tokenizer, t) for t in conversation(script, index)]
        self._prefix_lengths = sorted({len(ids) for ids in self._first.values()})
        # SGLang's radix cache holds the system prompt and tools every conversation starts with.
        self.shared_prefix = _common_prefix_length(list(self._first.values()))
        self.app = self._build_app()
        self.reset()

    def reset(self) -> None:
        """Start the step again: every conversation from its first turn."""
        self._queues = {q: list(replies) for q, replies in self._replies.items()}
        self._seen.clear()
        self.calls = []
        self.served = self.output_tokens = 0

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token])
        return piece

    def _question(self, body: dict[str, Any]) -> tuple[str | None, list[int]]:
        ids = body.get("input_ids")
        if ids is None:
            for message in body.get("messages") or []:
                if message.get("role") == "user":
                    question = self._by_user_text.get(message.get("content"))
                    return (question, self._first[question]) if question is not None else (None, [])
            return None, []
        for length in self._prefix_lengths:
            question = self._by_prefix.get(tuple(ids[:length]))
            if question is not None:
                return question, ids
        return None, ids

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], int, int]:
        """``(status, reply, new prompt tokens, sampled tokens)`` for one request body."""
        question, prompt_ids = self._question(body)
        if question is None:
            if PROBE_TEXT in json.dumps(body.get("messages")):  # the rollout's routing probe: any model answers
                ids = body.get("input_ids") or []
                output = encode_text(self.tokenizer, "OK")[:1]
                return 200, self._reply(body, ids, output, None, 0), len(ids), len(output)
            return 400, error_body("no scripted conversation starts with this prompt", 400), 0, 0
        queue = self._queues[question]
        if not queue:
            return 400, error_body(f"the script of {question!r} is exhausted", 400), 0, 0
        output = queue.pop(0)
        cached = self._seen.get(question, self.shared_prefix)
        self._seen[question] = len(prompt_ids) + len(output)
        self.served += 1
        self.output_tokens += len(output)
        tools = body.get("tools") or []
        reply = self._reply(body, prompt_ids, output, tools, cached)
        self.calls.append((question, len(prompt_ids) - cached, len(output)))
        return 200, reply, len(prompt_ids) - cached, len(output)

    def _reply(
        self, body: dict, prompt_ids: list[int], output: list[int], tools: list | None, cached: int
    ) -> dict[str, Any]:
        matched = output[-1] if output and output[-1] in self.stop_ids else None
        finish = "stop" if matched is not None else "length"
        text = "".join(self._piece(t) for t in (output[:-1] if matched is not None else output))
        content, calls = (text, None)
        if tools and TOOL_CALL_START in text:
            content, calls = parse_qwen25_tool_calls(text, tools)
            if calls is None:
                content, calls = text, []
            elif finish == "stop":
                finish, matched = "tool_calls", None
        triples = [[mock_logprob(t, len(prompt_ids) + i), t, self._piece(t)] for i, t in enumerate(output)]
        rid = uuid.uuid4().hex
        meta = {
            "id": rid,
            "finish_reason": {"type": finish, "matched": matched},
            "prompt_tokens": len(prompt_ids),
            "weight_version": "default",
            "num_retractions": 0,
            "input_token_logprobs": [],
            "output_token_logprobs": triples,
            "output_token_logprobs_length": len(output),
            "completion_tokens": len(output),
            "cached_tokens": cached,
        }
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "reasoning_content": None, "tool_calls": calls},
            "logprobs": None,
            "finish_reason": finish,
            "matched_stop": matched,
            "prompt_token_ids": list(prompt_ids),
            "meta_info": meta,
        }
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(output),
                 "total_tokens": len(prompt_ids) + len(output)}  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
                "choices": [choice], "usage": usage}  # fmt: skip

    def _build_app(self) -> fastapi.FastAPI:
        app = fastapi.FastAPI(title="rollout-step policy")

        @app.get("/health")
        async def health() -> fastapi.Response:
            return fastapi.Response(status_code=200)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: fastapi.Request) -> fastapi.Response:
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                return JSONResponse(error_body(f"request body is not valid JSON: {exc}", 400), status_code=400)
            status, payload, prefill, decode = self.respond(body)
            if status == 200:
                await self.timing.generate(prefill, decode)
            return JSONResponse(payload, status_code=status)

        @app.post("/bench/reset")
        async def reset() -> dict[str, int]:
            self.reset()
            return {"trajectories": len(self._queues)}

        @app.get("/bench/served")
        async def served() -> dict[str, Any]:
            return {"requests": self.served, "output_tokens": self.output_tokens, "calls": self.calls}

        return app


def _serve(config: dict[str, Any], port_file: Path) -> None:
    from transformers import AutoTokenizer

    model = PolicyModel(**config["model"])
    policy = ScriptedPolicy(AutoTokenizer.from_pretrained(config["tokenizer"]), model, Script(**config["script"]))
    # uvicorn's (and SGLang's) 5 s keep-alive, in simulated time like every other duration here.
    uvicorn_config = uvicorn.Config(
        policy.app, host="127.0.0.1", log_level="warning", timeout_keep_alive=int(5 * model.time_scale) + 1
    )
    serve_forever(uvicorn_config, port_file)


async def model_only_step(calls: list[tuple[str, int, int]], model: PolicyModel) -> float:
    """Seconds the :class:`ThroughputModel` alone needs for a step's calls, each conversation's turns in order, with
    no client, HTTP or search: what the node would take if nothing else cost time."""
    turns: dict[str, list[tuple[int, int]]] = {}
    for question, prefill, decode in calls:
        turns.setdefault(question, []).append((prefill, decode))
    timing = ThroughputModel(replace(model, time_scale=1.0))

    async def one(steps: list[tuple[int, int]]) -> None:
        for prefill, decode in steps:
            await timing.generate(prefill, decode)

    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.gather(*(one(steps) for steps in turns.values()))
    return loop.time() - began


def config_json(tokenizer: str, model: PolicyModel, script: Script) -> str:
    return json.dumps({"tokenizer": tokenizer, "model": asdict(model), "script": asdict(script)})


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]), Path(sys.argv[2]))
