"""Evaluate a policy on slime-ready QA parquet with the same rollout core, tool, prompts and reward as training.

    python evaluate.py --data nq.parquet hotpotqa.parquet --policy-url http://127.0.0.1:30000 \
        --tokenizer /models/Qwen2.5-3B-Instruct --retrieval-url http://127.0.0.1:8000 --out eval/step100
    python evaluate.py --compare eval/base/summary.json eval/step100/summary.json

Greedy by default. Writes ``results.jsonl`` (one line per sample: question, gold, answer, EM, F1, turns, searches,
queries, tool errors, status, messages), ``summary.md``/``summary.json`` (one row per data source) and
``summary.png`` into ``--out``; running the same command again resumes, skipping samples already in the results.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from search_r1_eval.dataset import EvalDataError, load_items
from search_r1_eval.plot import plot_summary
from search_r1_eval.report import compare, render_table, summarize, write_summary
from search_r1_eval.runner import read_results, run_evaluation, sampling_params
from search_r1_oai.config import ConfigError, load_settings_with_urls


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", type=Path, help="slime-ready parquet file(s) (data_preprocess.py output)")
    parser.add_argument("--policy-url", help="SGLang server or slime router base URL, e.g. http://127.0.0.1:30000")
    parser.add_argument("--tokenizer", help="tokenizer folder of the policy (the checkpoint's)")
    parser.add_argument(
        "--retrieval-url",
        help="retriever base URL(s), comma-separated (default: RETRIEVAL_SERVER_URL / the rollout settings)",
    )
    parser.add_argument("--concurrency", type=_positive, default=64, help="samples in flight at once (default 64)")
    parser.add_argument("--max-samples", type=_positive, help="at most this many samples per data file")
    parser.add_argument("--out", type=Path, default=Path("eval_results"), help="output folder (default eval_results)")
    parser.add_argument("--max-new-tokens", type=_positive, default=1024, help="tokens per turn (default 1024)")
    parser.add_argument(
        "--temperature", type=_temperature, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="print two summary.json side by side"
    )
    args = parser.parse_args(argv)
    if args.compare is None:
        missing = [flag for flag in ("data", "policy_url", "tokenizer") if getattr(args, flag) is None]
        if missing:
            parser.error("required: " + ", ".join("--" + name.replace("_", "-") for name in missing))
    return args


def _compare(paths: list[Path]) -> int:
    try:
        before, after = (json.loads(path.read_text()) for path in paths)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read a summary: {exc}", file=sys.stderr)
        return 2
    print(compare(before, after, ("A", "B")), end="")
    print(f"A = {paths[0]}\nB = {paths[1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        return _compare(args.compare)
    try:
        settings = load_settings_with_urls(args.retrieval_url)
        settings = dataclasses.replace(settings, concurrency=max(settings.concurrency, args.concurrency))
        items = [item for path in args.data for item in load_items(path, args.max_samples)]
    except (ConfigError, EvalDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from transformers import AutoTokenizer

    from search_r1_oai.context import RolloutContext

    context = RolloutContext(settings, AutoTokenizer.from_pretrained(args.tokenizer), args.policy_url)
    sampling = sampling_params(args.max_new_tokens, args.temperature)
    results = args.out / "results.jsonl"
    print(f"{len(items)} samples from {len(args.data)} file(s); results in {results}", flush=True)
    interrupted = False
    try:
        ran = asyncio.run(
            run_evaluation(
                items, context, sampling, results, concurrency=args.concurrency, progress=not args.no_progress
            )
        )
        print(f"evaluated {ran} new sample(s)")
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: finished samples are kept in {results}; run the same command to resume", file=sys.stderr)

    wanted = {item.id for item in items}
    records = [record for record in read_results(results) if record["id"] in wanted]
    if not records:
        print("no finished samples yet")
        return 130 if interrupted else 1
    table = summarize(records)
    print(render_table(table), end="")
    markdown, as_json = write_summary(table, args.out)
    plot = plot_summary(table, records, args.out / "summary.png")
    print(f"written: {markdown}, {as_json}, {plot}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
