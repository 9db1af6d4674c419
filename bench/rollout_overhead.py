"""Client-side CPU time per turn: the token-exact rollout vs re-rendering and re-tokenizing the conversation.

No network. A 10-turn, ~8k-token search conversation is recorded once through an in-process responder that
answers like SGLang 0.5.15 (``prompt_token_ids``, ``meta_info.output_token_logprobs``). Then:

* ours: the real ``run_rollout`` loop replays the recorded responses (request JSON encode and reply JSON decode
  included) with canned search results; per turn it sends ``input_ids`` (kept serialised) with the prompt
  messages, appends the sampled ids, checks the prefilled count and tokenizes only the tool-turn delta, taken
  from a short dummy render.
* naive: per turn, the whole conversation so far is re-rendered with the chat template and re-tokenized (the
  usual way to get ids when the server gives none), plus the same request/response JSON work.

Prints CPU milliseconds per turn for both, the ratio, and the floor any method pays (tokenizing the tool results).
Passages default to wiki-18's 100-word chunks, turns to ~130 words of reasoning plus a search call.
Run from the project root: ``.venv/bin/python -m bench.rollout_overhead`` (``--tokenizer DIR`` for a real Qwen2.5 checkpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from search_r1_data.toy import make_toy_corpus
from search_r1_oai.chat_client import ChatClient
from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from search_r1_oai.rollout import run_rollout
from search_r1_oai.search_client import Passage, RetrievalResult, SearchClient
from search_r1_oai.search_tool import SearchTool
from search_r1_oai.sglang_wire import TurnOutput, encode_request, parse_chat_response
from search_r1_oai.trajectory import encode_text, render_chat

QUESTION = "Who wrote the novel Zorvathkel?"
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 1024}


def build_script(turns: int, doc_words: int, think_words: int, topk: int) -> tuple[list[str], list[Passage]]:
    """Assistant texts (reasoning + a search call per turn, then an answer) and the passages every search returns."""
    passages_raw, _ = make_toy_corpus(num_entities=150, seed=1)
    words = " ".join(p["contents"].split("\n", 1)[1] for p in passages_raw).split()

    def text(offset: int, count: int) -> str:
        start = offset % max(1, len(words) - count)
        return " ".join(words[start : start + count])

    docs = [Passage(title=f"Document {i}", text=text(i * doc_words, doc_words)) for i in range(topk)]
    texts = []
    for i in range(turns - 1):
        call = {"name": "search", "arguments": {"queries": [f"Zorvathkel author clue {i}"]}}
        thought = text(7919 * (i + 1), think_words)
        texts.append(f"{thought}\n<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>")
    texts.append(f"{text(104729, think_words)}\n<answer>Mira Quin</answer><|im_end|>")
    return texts, docs


def _sglang_like_reply(tokenizer: Any, prompt_ids: list[int], text: str, body: dict) -> dict:
    from tests.support.sglang_mock import mock_logprob, parse_qwen25_tool_calls

    output_ids = encode_text(tokenizer, text)
    pieces = [tokenizer.decode([i]) for i in output_ids]
    logprobs = [mock_logprob(t, len(prompt_ids) + i) for i, t in enumerate(output_ids)]
    visible = tokenizer.decode(output_ids[:-1], skip_special_tokens=False)
    tools = body.get("tools")
    content, calls = parse_qwen25_tool_calls(visible, tools) if tools and "<tool_call>" in visible else (visible, None)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "tool_calls": calls},
        "finish_reason": "tool_calls" if calls else "stop",
        "meta_info": {
            "prompt_tokens": len(prompt_ids),
            "output_token_logprobs": [[lp, t, p] for lp, t, p in zip(logprobs, output_ids, pieces, strict=True)],
        },
    }
    if body.get("return_prompt_token_ids"):
        choice["prompt_token_ids"] = prompt_ids
    return {"choices": [choice]}


class RecordingChat(ChatClient):
    """Answers like SGLang (server render on turn 1, ``input_ids`` after) and keeps every reply as JSON text."""

    def __init__(self, tokenizer: Any, texts: list[str], settings: Settings) -> None:
        super().__init__("http://recording", settings)
        self.tokenizer, self.texts, self.replies = tokenizer, texts, []

    async def complete(self, body: dict[str, Any], input_ids_json: str | None = None) -> TurnOutput:
        if input_ids_json is not None:
            prompt_ids = json.loads(input_ids_json)
        else:
            prompt_ids = encode_text(self.tokenizer, render_chat(self.tokenizer, body["messages"], body["tools"], True))
        reply = _sglang_like_reply(self.tokenizer, prompt_ids, self.texts[len(self.replies)], body)
        self.replies.append(json.dumps(reply))
        return parse_chat_response(reply)


class ReplayChat(ChatClient):
    """Replays recorded replies; encodes the request and decodes the reply as the HTTP client would."""

    def __init__(self, replies: list[str], settings: Settings) -> None:
        super().__init__("http://replay", settings)
        self.replies, self.turn = replies, 0

    async def complete(self, body: dict[str, Any], input_ids_json: str | None = None) -> TurnOutput:
        encode_request(body, input_ids_json)
        reply = json.loads(self.replies[self.turn])
        self.turn += 1
        return parse_chat_response(reply)


class CannedSearch(SearchClient):
    def __init__(self, docs: list[Passage], settings: Settings) -> None:
        super().__init__(settings)
        self.docs = docs

    async def retrieve(self, queries: list[str]) -> RetrievalResult:
        return RetrievalResult(passages=[list(self.docs) for _ in queries], latency_s=0.0, attempts=1)


async def _ours(tokenizer: Any, replies: list[str], docs: list[Passage], settings: Settings) -> tuple[float, Any]:
    context = RolloutContext(
        settings,
        tokenizer,
        "http://replay",
        tools={"search": SearchTool(CannedSearch(docs, settings))},
        chat_factory=lambda: ReplayChat(replies, settings),
    )
    started = time.process_time()
    result = await run_rollout(context, build_messages(QUESTION), dict(SAMPLING), tools=[SEARCH_TOOL])
    return time.process_time() - started, result


def _naive(tokenizer: Any, replies: list[str], docs: list[Passage]) -> tuple[float, list[int]]:
    """Per turn: JSON work as ours, plus re-rendering and re-tokenizing every message so far."""
    from search_r1_oai.search_client import format_passages

    messages = build_messages(QUESTION)
    tools = [SEARCH_TOOL]
    started = time.process_time()
    ids: list[int] = []
    for raw in replies:
        encode_request({"messages": messages, "tools": tools})
        ids = encode_text(tokenizer, render_chat(tokenizer, messages, tools, add_generation_prompt=True))
        message = json.loads(raw)["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        assistant = {"role": "assistant", "content": message["content"]}
        if calls:
            assistant["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])},
                }
                for c in calls
            ]
        messages.append(assistant)
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": format_passages(docs)})
    return time.process_time() - started, ids


def _tool_tokenization_floor(tokenizer: Any, recorded: Any, turns: int) -> float:
    """CPU seconds to tokenize only the loss-mask-0 runs (tool results + glue): work any approach must do."""
    prompt_length = len(recorded.tokens) - recorded.response_length
    runs, current = [], []
    for token, mask in zip(recorded.tokens[prompt_length:], recorded.loss_mask, strict=True):
        if mask == 0:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    started = time.process_time()
    for text in runs:
        encode_text(tokenizer, text)
    return time.process_time() - started


def _load_tokenizer(path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path is None:
        from tests.support import offline_assets

        path = str(offline_assets.qwen25_tokenizer_dir())
    return AutoTokenizer.from_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory with a tool-calling chat template (default: the offline Qwen2.5 test tokenizer)",
    )
    parser.add_argument("--turns", type=int, default=10, help="assistant turns in the conversation (default 10)")
    parser.add_argument(
        "--doc-words", type=int, default=100, help="words per retrieved passage (default 100, as wiki-18's chunks)"
    )
    parser.add_argument(
        "--think-words", type=int, default=130, help="words of reasoning the model writes per turn (default 130)"
    )
    parser.add_argument("--topk", type=int, default=3, help="passages per search (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions; the median is reported (default 5)")
    args = parser.parse_args()

    tokenizer = _load_tokenizer(args.tokenizer)
    settings = Settings(max_turns=args.turns, context_budget=1_000_000, log_every=0, topk=args.topk)
    texts, docs = build_script(args.turns, args.doc_words, args.think_words, args.topk)

    recorder = RecordingChat(tokenizer, texts, settings)
    context = RolloutContext(
        settings,
        tokenizer,
        "http://recording",
        tools={"search": SearchTool(CannedSearch(docs, settings))},
        chat_factory=lambda: recorder,
    )
    recorded = asyncio.run(run_rollout(context, build_messages(QUESTION), dict(SAMPLING), tools=[SEARCH_TOOL]))
    if recorded.outcome.name != "COMPLETED" or len(recorder.replies) != args.turns:
        raise SystemExit(f"recording failed: {recorded.outcome.name} {recorded.error}")

    ours_runs, naive_runs, floor_runs = [], [], []
    for _ in range(args.repeats):
        seconds, sample = asyncio.run(_ours(tokenizer, recorder.replies, docs, settings))
        if sample.tokens != recorded.tokens:
            raise SystemExit("replay diverged from the recording")
        ours_runs.append(seconds)
        seconds, _ = _naive(tokenizer, recorder.replies, docs)
        naive_runs.append(seconds)
        floor_runs.append(_tool_tokenization_floor(tokenizer, recorded, args.turns))

    ours_ms, naive_ms, floor_ms = (
        statistics.median(runs) / args.turns * 1000 for runs in (ours_runs, naive_runs, floor_runs)
    )
    total = len(recorded.tokens)
    print(
        f"conversation: {args.turns} turns, {total} tokens (prompt {total - recorded.response_length}); "
        f"median of {args.repeats} runs; CPU time per turn"
    )
    print(f"{'method':<62}{'ms/turn':>9}")
    print(f"{'ours: server ids + input_ids + template delta':<62}{ours_ms:>9.2f}")
    print(f"{'naive: re-render + re-tokenize whole conversation per turn':<62}{naive_ms:>9.2f}")
    print(f"{'(floor: tokenizing the tool results alone, any method)':<62}{floor_ms:>9.2f}")
    print(f"ratio naive/ours: {naive_ms / ours_ms:.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
