"""A scripted stand-in for the policy: a PLUMBING CHECK, NOT A MODEL.

It speaks SGLang's ``/v1/chat/completions`` protocol with the fields the rollout needs (prompt token ids, sampled
ids with logprobs, ``input_ids`` on later turns), so the real rollout core, retriever, reward and evaluation can run
end to end on a CPU without a GPU or a checkpoint. Its behaviour is fixed: the first turn searches for the
question; the next turn answers with a span of the retrieved passages (a run of capitalised words or a year that
is not in the question, from the first passage that has one). Whatever EM it gets measures the retriever and the
plumbing, never a policy.

Run: ``python -m search_r1_eval.scripted_policy --tokenizer DIR [--port N]``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from search_r1_oai.prompts import SEARCH_TOOL_NAME
from search_r1_oai.trajectory import encode_text, render_chat

BANNER = "scripted policy (a plumbing check, not a model): searches for the question, answers with a passage span"
# The logprob reported for every scripted token (any fixed value would do: nothing is trained on it).
SCRIPTED_LOGPROB = -0.25

_DOC = re.compile(r"^Doc \d+ \(Title: (?P<title>.*?)\) (?P<text>.*)$", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z0-9][\w'-]*")
_SENTENCE_END = re.compile(r"[.!?]\s+")


def question_of(messages: list[dict[str, Any]]) -> str:
    """The last user message, without the ``Question:`` prefix the prompts use."""
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"].removeprefix("Question:").strip()
    return ""


def passages_in(text: str) -> list[tuple[str, str]]:
    """``(title, text)`` of the search results in the last tool result of a rendered conversation."""
    last = text.rfind("Doc 1 (Title: ")
    if last == -1:
        return []
    return [(m["title"], m["text"]) for m in _DOC.finditer(text[last:])]


def answer_span(question: str, passages: list[tuple[str, str]]) -> str | None:
    """A run of capitalised words (or a year) that is not in the question and does not start a sentence, from
    the first passage that has one."""
    asked = {word.lower() for word in _WORD.findall(question)}
    for title, text in passages:
        known = asked | {word.lower() for word in _WORD.findall(title)}
        for sentence in _SENTENCE_END.split(text):
            words = _WORD.findall(sentence)
            run: list[str] = []
            for position, word in enumerate(words):
                candidate = (word[0].isupper() and position > 0) or (word.isdigit() and len(word) == 4)
                if candidate and word.lower() not in known:
                    run.append(word)
                elif run:
                    break
            if run:
                return " ".join(run)
    return None


def scripted_turn(question: str, prompt_text: str) -> tuple[str, list[dict] | None]:
    """The assistant text of the next turn (without the end-of-turn token) and its parsed tool calls."""
    if "Doc 1 (Title: " not in prompt_text and "No passages found." not in prompt_text:
        arguments = json.dumps({"queries": [question]}, ensure_ascii=False)
        call = {"name": SEARCH_TOOL_NAME, "arguments": {"queries": [question]}}
        text = f"I will search for this.\n<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"
        tool_call = {"id": "call_0", "type": "function", "function": {"name": SEARCH_TOOL_NAME, "arguments": arguments}}
        return text, [tool_call]
    span = answer_span(question, passages_in(prompt_text))
    if span is None:
        return "The passages do not say.\n<answer>unknown</answer>", None
    return f"The passages name it.\n<answer>{span}</answer>", None


def completion(tokenizer: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One chat completion in SGLang's shape (0.5.15: ``prompt_token_ids``, ``meta_info.output_token_logprobs``)."""
    messages = body.get("messages") or []
    if body.get("input_ids") is not None:
        prompt_ids = [int(i) for i in body["input_ids"]]
    else:
        prompt_ids = encode_text(tokenizer, render_chat(tokenizer, messages, body.get("tools"), True))
    prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    text, tool_calls = scripted_turn(question_of(messages), prompt_text)
    output_ids = encode_text(tokenizer, text + tokenizer.eos_token)
    finish = "tool_calls" if tool_calls else "stop"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(output_ids) > max_tokens:
        output_ids, finish, tool_calls = output_ids[:max_tokens], "length", None
        text = tokenizer.decode(output_ids, skip_special_tokens=True)
    content = text.split("<tool_call>")[0].strip() if tool_calls else text
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
        "finish_reason": finish,
        "logprobs": None,
        "meta_info": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(output_ids),
            "output_token_logprobs": [[SCRIPTED_LOGPROB, token, None] for token in output_ids],
        },
    }
    if body.get("return_prompt_token_ids"):
        choice["prompt_token_ids"] = prompt_ids
    return {
        "id": uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "scripted-policy",
        "choices": [choice],
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(output_ids)},
    }


def create_app(tokenizer: Any) -> FastAPI:
    """The FastAPI app: ``POST /v1/chat/completions`` and ``GET /health`` (no ``/workers``: it is no router)."""
    app = FastAPI(title="scripted policy (plumbing check, not a model)")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "policy": BANNER}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(status_code=400, detail="the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise HTTPException(status_code=400, detail="the body needs a 'messages' list")
        if body.get("stream"):
            raise HTTPException(status_code=400, detail="the scripted policy does not stream")
        return completion(tokenizer, body)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=BANNER)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder with a tool-calling chat template")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=30000, help="port to listen on (default 30000)")
    args = parser.parse_args(argv)

    import uvicorn
    from transformers import AutoTokenizer

    print(f"{BANNER}\nlistening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        create_app(AutoTokenizer.from_pretrained(args.tokenizer)), host=args.host, port=args.port, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
