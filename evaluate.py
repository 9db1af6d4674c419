"""Evaluate a policy on slime-ready QA parquet with the same rollout core, tool, prompts and reward as training.

    python evaluate.py --data nq.parquet hotpotqa.parquet --policy-url http://127.0.0.1:30000 \
        --tokenizer /root/Qwen2.5-3B-Instruct --retrieval-url http://127.0.0.1:8000 --out eval/step100
    python evaluate.py --data nq.parquet --model /ckpt/hf/step100 --retrieval-url http://127.0.0.1:8000 --out eval/step100
    python evaluate.py --compare eval/base/summary.json eval/step100/summary.json

``--model`` starts SGLang on a free port of 127.0.0.1 (its log: ``OUT/sglang.log``), evaluates, and stops it at the
end and on Ctrl-C/SIGTERM; ``--policy-url`` uses a server that is already running.

Greedy by default. Writes into ``--out``: ``results.jsonl`` (one line per finished sample: question, gold, answer,
EM, F1, cover-EM, turns, searches, queries, tool errors, status, messages), ``failures.jsonl`` (one line per failed
attempt, with its reason), ``summary.md``/``summary.json`` (one row per data source, ``all`` and ``avg``) and
``summary.png``. Running the same command again resumes: samples in the results are skipped, failed ones run again.
Exit status: 0 when every sample finished, 1 while any failed (or a file cannot be written, or SGLang did not
start), 2 for bad input (also no SGLang in this Python with ``--model``) or an
``--out`` another evaluate.py is writing (``evaluate.lock`` names it), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from search_r1_data.files import remove_stale_temps
from search_r1_eval.dataset import EvalDataError, EvalItem, load_items
from search_r1_eval.lock import OutLock, OutLocked
from search_r1_eval.plot import plot_summary
from search_r1_eval.policy_server import (
    PolicyServer,
    PolicyServerError,
    check_model,
    default_command,
    free_port,
    server_argv,
)
from search_r1_eval.report import (
    SUMMARY_FILES,
    NotASummary,
    check_summary,
    compare,
    coverage_warnings,
    render_summary,
    summarize,
    write_summary,
)
from search_r1_eval.results_file import FAILURES, RESULTS, ResultsStore, ResultsWriteError
from search_r1_eval.runner import run_evaluation, sampling_params
from search_r1_oai.config import ConfigError, Settings, load_settings_with_urls
from search_r1_oai.text import clean_text


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
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--policy-url", help="SGLang server or slime router base URL, e.g. http://127.0.0.1:30000")
    policy.add_argument(
        "--model", help="Hugging Face model folder: evaluate.py starts SGLang on it and stops it at the end"
    )
    parser.add_argument("--tokenizer", help="tokenizer folder of the policy (default with --model: the model folder)")
    parser.add_argument(
        "--sglang-args",
        default="",
        help='with --model: extra SGLang flags, one string, e.g. --sglang-args="--tp-size 4 --mem-fraction-static 0.8"',
    )
    parser.add_argument(
        "--sglang-command",
        help="with --model: the command that starts SGLang (default: this Python -m sglang.launch_server), "
        'e.g. "/envs/sglang/bin/python -m sglang.launch_server"',
    )
    parser.add_argument(
        "--server-timeout",
        type=_positive,
        default=600,
        help="with --model: seconds SGLang may take to load (default 600)",
    )
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
        if args.model is not None and args.tokenizer is None:
            args.tokenizer = args.model
        missing = [flag for flag in ("data", "tokenizer") if getattr(args, flag) is None]
        if args.policy_url is None and args.model is None:
            missing.insert(1, "policy_url or --model")
        if missing:
            parser.error("required: " + ", ".join("--" + name.replace("_", "-") for name in missing))
    if args.model is None and (args.sglang_args or args.sglang_command):
        parser.error("--sglang-args and --sglang-command need --model")
    try:
        args.sglang_extra = shlex.split(args.sglang_args)
        args.sglang_base = shlex.split(args.sglang_command) if args.sglang_command else None
    except ValueError as exc:
        parser.error(f"--sglang-args/--sglang-command: {exc}")
    return args


def _compare(paths: list[Path]) -> int:
    summaries = []
    for path in paths:
        try:
            summaries.append(check_summary(json.loads(path.read_text(encoding="utf-8")), str(path)))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        except json.JSONDecodeError as exc:
            print(
                f"error: {path} is not an evaluate.py summary (not JSON: {exc}); pass its summary.json", file=sys.stderr
            )
            return 2
        except NotASummary as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    before, after = summaries
    for warning in coverage_warnings(before, after):
        print(warning, file=sys.stderr)
    print(compare(before, after, ("A", "B")), end="")
    print(f"A = {paths[0]}\nB = {paths[1]}")
    return 0


def _failure_lines(failed: list[dict[str, Any]]) -> list[str]:
    """``failed N:`` and one line per distinct reason with its count, most frequent first."""
    reasons = Counter(clean_text(str(record.get("error") or f"status {record.get('status')}")) for record in failed)
    return [f"failed {len(failed)}:"] + [f"  {count}x {reason}" for reason, count in reasons.most_common()]


def _unique(items: list[EvalItem]) -> list[EvalItem]:
    """One item per sample key (the same file passed twice is evaluated once)."""
    return list({item.key: item for item in items}.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        return _compare(args.compare)
    try:
        settings = load_settings_with_urls(args.retrieval_url)
        settings = dataclasses.replace(settings, concurrency=max(settings.concurrency, args.concurrency))
        items = _unique([item for path in args.data for item in load_items(path, args.max_samples)])
    except (ConfigError, EvalDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        tokenizer = _load_tokenizer(args.tokenizer)
        if args.model is not None:
            model = check_model(args.model)
            command = args.sglang_base or default_command()
    except (ValueError, PolicyServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lock = OutLock(args.out)
    try:
        taken_over = lock.acquire()
    except OutLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot lock {lock.path}: {exc}", file=sys.stderr)
        return 2
    with lock:
        if taken_over:
            print(taken_over, file=sys.stderr)
        if args.model is None:
            return _evaluate(args, settings, items, tokenizer)
        return _evaluate_with_server(args, settings, items, tokenizer, server_argv_for(args, model, command))


def server_argv_for(args: argparse.Namespace, model: str, command: list[str]) -> tuple[list[str], int, str]:
    """``(launch command, port, model)`` of the server ``--model`` starts."""
    port = free_port()
    return server_argv(command, model, port, args.sglang_extra), port, model


def _load_tokenizer(name: str) -> Any:
    """The policy's tokenizer, or ValueError with one line (transformers' own messages span several)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(
            f"--tokenizer {name}: cannot load a tokenizer from it ({first}); pass the checkpoint's Hugging Face folder"
        ) from None


def _evaluate_with_server(
    args: argparse.Namespace,
    settings: Settings,
    items: list[EvalItem],
    tokenizer: Any,
    launch: tuple[list[str], int, str],
) -> int:
    """Start SGLang, evaluate against it, stop it (also on Ctrl-C, SIGTERM or an error)."""
    argv, port, model = launch
    server = PolicyServer(argv, port, model, args.out / "sglang.log", float(args.server_timeout))
    # SIGTERM takes Ctrl-C's path (finished samples kept, the server stopped, exit 130).
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        with server:
            args.policy_url = server.url
            return _evaluate(args, settings, items, tokenizer)
    except PolicyServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted while SGLang was starting; it is stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _evaluate(args: argparse.Namespace, settings: Settings, items: list[EvalItem], tokenizer: Any) -> int:
    """The run proper, with the folder's lock held."""
    store = ResultsStore(args.out)
    for name in (*SUMMARY_FILES, RESULTS, FAILURES):
        remove_stale_temps(args.out / name)
    try:
        for message in store.open():
            print(message, file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot open the results in {args.out}: {exc}", file=sys.stderr)
        return 1
    state = store.state(items)
    todo = [item for item in items if item.key not in state.done]
    retrying = sum(item.key in state.failed for item in todo)

    from search_r1_oai.context import RolloutContext

    context = RolloutContext(settings, tokenizer, args.policy_url)
    sampling = sampling_params(args.max_new_tokens, args.temperature)
    print(
        f"{len(items)} samples from {len(args.data)} file(s); results in {store.results_path}"
        + (
            f"; {len(state.done)} done before, {retrying} failed before and run again" if state.done or retrying else ""
        ),
        flush=True,
    )
    interrupted = False
    try:
        counts = asyncio.run(
            run_evaluation(todo, context, sampling, store, concurrency=args.concurrency, progress=not args.no_progress)
        )
        print(
            f"evaluated {counts.finished + counts.failed} new sample(s): {counts.finished} finished, {counts.failed} failed"
        )
    except KeyboardInterrupt:
        interrupted = True
        print(
            f"\ninterrupted: finished samples are kept in {store.results_path}; run the same command to resume",
            file=sys.stderr,
        )
    except ResultsWriteError as exc:
        print(f"error: {exc}; the samples written so far are kept, run the same command to resume", file=sys.stderr)
        return 1
    finally:
        store.close()

    state = store.state(items)
    for note in state.notes:
        print(note, file=sys.stderr)
    records = [state.done[item.key] for item in items if item.key in state.done]
    failed = [state.failed[item.key] for item in items if item.key in state.failed]
    if failed:
        print("\n".join(_failure_lines(failed)), file=sys.stderr)
        print(
            f"(every attempt is in {store.failures_path}; run the same command to retry the failed samples)",
            file=sys.stderr,
        )
    if not records:
        print("no finished samples yet")
        return 130 if interrupted else 1
    table = summarize(records, failed)
    print(render_summary(table), end="")
    try:
        markdown, as_json = write_summary(table, args.out)
        plot = plot_summary(table, records, args.out / "summary.png")
    except OSError as exc:
        print(f"error: cannot write the summary into {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"written: {markdown}, {as_json}, {plot}")
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
