"""Run one question through the rollout core and show everything the trainer would see.

The messages as the policy saw them; then the token ids of the whole trajectory, decoded, with the tokens the
policy sampled (loss mask 1, trained on) marked, and the ones we wrote (prompt, template glue, search results:
mask 0) plain; then the reward. Marks are colour on a terminal and ``[[...]]`` otherwise (logs, pipes).

    python -m search_r1_eval.show_trajectory --data test.parquet --policy-url URL --tokenizer DIR --retrieval-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from search_r1_eval.dataset import EvalDataError, EvalItem, load_items
from search_r1_eval.runner import sampling_params
from search_r1_oai.config import ConfigError, Settings, load_settings_with_urls
from search_r1_oai.result import RolloutResult
from search_r1_oai.reward import score_result

_GREEN, _RESET = "\033[32m", "\033[0m"


def render_messages(messages: list[dict[str, Any]], width: int = 400) -> str:
    lines = []
    for message in messages:
        content = str(message.get("content") or "")
        if len(content) > width:
            content = content[:width] + f" ... ({len(content) - width} more characters)"
        lines.append(f"[{message['role']}] {content}")
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(f"    -> tool call {function.get('name')}({function.get('arguments')})")
    return "\n".join(lines)


def render_tokens(tokenizer: Any, result: RolloutResult, colour: bool) -> str:
    """The trajectory's text, run by run of equal loss mask; sampled runs marked."""
    mask = [0] * result.prompt_length + list(result.loss_mask)
    pieces: list[str] = []
    start = 0
    for end in range(1, len(result.tokens) + 1):
        if end == len(result.tokens) or mask[end] != mask[start]:
            text = tokenizer.decode(result.tokens[start:end], skip_special_tokens=False)
            if mask[start]:
                text = f"{_GREEN}{text}{_RESET}" if colour else f"[[{text}]]"
            pieces.append(text)
            start = end
    return "".join(pieces)


async def _one(item: EvalItem, args: argparse.Namespace, settings: Settings) -> tuple[Any, RolloutResult]:
    from transformers import AutoTokenizer

    from search_r1_oai.context import RolloutContext
    from search_r1_oai.rollout import run_rollout

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    context = RolloutContext(settings, tokenizer, args.policy_url)
    sampling = sampling_params(args.max_new_tokens)
    try:
        return tokenizer, await run_rollout(context, item.messages, sampling, tools=item.tools)
    finally:
        await context.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="slime-ready parquet file")
    parser.add_argument("--index", type=int, default=0, help="row of the file to run (default 0)")
    parser.add_argument("--policy-url", required=True, help="SGLang server or slime router base URL")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder of the policy")
    parser.add_argument("--retrieval-url", help="retriever base URL (default: the rollout settings' URL)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per turn (default 1024)")
    parser.add_argument("--colour", choices=("auto", "always", "never"), default="auto", help="mark trained tokens")
    args = parser.parse_args(argv)
    try:
        items = load_items(args.data)
        if not 0 <= args.index < len(items):
            raise EvalDataError(f"{args.data} has {len(items)} rows; --index {args.index} is out of range")
        item = items[args.index]
        settings = load_settings_with_urls(args.retrieval_url)
        tokenizer, result = asyncio.run(_one(item, args, settings))
    except (EvalDataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    colour = args.colour == "always" or (args.colour == "auto" and sys.stdout.isatty())
    score = score_result(result, item.label, settings.format_score)
    print("--- messages")
    print(render_messages(result.messages))
    marks = "green" if colour else "[[ ]]"
    print(f"--- tokens ({len(result.tokens)}: prompt {result.prompt_length}; sampled, trained-on tokens in {marks})")
    print(render_tokens(tokenizer, result, colour))
    print(f"--- outcome {result.outcome.name} ({result.stop_reason}){': ' + result.error if result.error else ''}")
    gold = json.dumps(item.gold, ensure_ascii=False)
    print(
        f"--- reward {score.reward} (EM {score.em:.0f}, F1 {score.f1:.2f}, answer {score.pred_answer!r}, gold {gold})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
