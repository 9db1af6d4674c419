"""Turn the Search-R1 NQ + HotpotQA parquet into slime-ready parquet, the benchmarks (``--eval_sets``) into slime-ready
eval sets, or check such files (``--check``).

Run ``python data_preprocess.py --help``; the logic lives in ``search_r1_data/`` (``convert.py``, ``eval_sets.py``,
``check.py``). Every mistake in the arguments or the inputs is one ``error:`` line and exit status 2, never a
traceback: this is the first thing a newcomer runs. One run writes into a ``--local_dir`` at a time (a second is
refused), and each file appears under its name only when complete.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from search_r1_data import check, convert, eval_sets, files

DEFAULT_SPLITS = "train,test"
USAGE_HINT = "python data_preprocess.py --help lists every flag"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become :class:`convert.DataError`: one ``error:`` line and exit 2 from
    :func:`main` (argparse's own prints the whole usage block first, and exits where a caller of ``main`` cannot
    see a return code)."""

    def error(self, message: str) -> NoReturn:
        raise convert.DataError(f"{message} ({USAGE_HINT})")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` that bounds the value at parse time, before anything is downloaded or written (a
    ``--max_samples 0`` would otherwise write empty files and only then fail)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        description=(
            "Convert Search-R1 QA parquet (question, golden_answers, reward_model, data_source) into parquet that "
            "slime loads with --input-key prompt --label-key reward_model --tool-key tools (no "
            "--apply-chat-template): [system, user] messages, the search tool schema as a JSON string, the "
            "reward_model label and a metadata struct. With --eval_sets, the same for the benchmarks (FlashRAG "
            "jsonl). Rejected rows are counted and shown in the summary; every output is checked as slime reads it."
        ),
        epilog=(
            "Without --splits and --eval_sets the training splits train,test are converted. --eval_sets alone writes "
            "only the eval sets; add --splits to write both in one run. Usage and input mistakes exit with status 2, "
            "a file failing the check with 1."
        ),
    )
    parser.add_argument(
        "--local_dir",
        type=Path,
        default=Path("data/search_r1_processed"),
        help="output folder; gets <split>.parquet per training split and eval/<set>.parquet per eval set, where "
        "run_qwen2.5-3B-it.sh looks for them (DATA_DIR, EVAL_DIR=DATA_DIR/eval) (default: %(default)s)",
    )
    parser.add_argument(
        "--hf_repo_id",
        default=convert.DEFAULT_HF_REPO_ID,
        help="Hugging Face dataset to download the training <split>.parquet from (default: %(default)s)",
    )
    parser.add_argument(
        "--input_dir",
        type=Path,
        default=None,
        help="read inputs from this folder instead of downloading (offline use): <split>.parquet for training "
        f"splits, and for eval sets the {eval_sets.layout_hint()}, as in the FlashRAG release",
    )
    parser.add_argument(
        "--splits",
        default=None,
        help=f"comma-separated training split names to convert (default: {DEFAULT_SPLITS}, or none when "
        "--eval_sets is given)",
    )
    parser.add_argument(
        "--max_samples",
        type=_int_at_least(1),
        default=None,
        help="read at most this many input rows per training split, rejected rows included (default: all)",
    )
    parser.add_argument(
        "--eval_sets",
        default=None,
        metavar="SETS",
        help="comma-separated benchmarks to write as eval/<set>.parquet with data_source=<set>, in the training "
        f"rows' form: {', '.join(eval_sets.EVAL_SETS)}, or {eval_sets.ALL} (Search-R1's splits: "
        f"{', '.join(f'{name}={split}' for name, split in eval_sets.EVAL_SETS.items())})",
    )
    parser.add_argument(
        "--eval_hf_repo_id",
        default=eval_sets.DEFAULT_EVAL_HF_REPO_ID,
        help="Hugging Face dataset to download <set>/<split>.jsonl from (default: %(default)s)",
    )
    parser.add_argument(
        "--eval_max_samples",
        type=_int_at_least(1),
        default=None,
        help="read at most the first this many lines per eval set, rejected lines included (default: all; the run "
        "script caps evaluation with EVAL_MAX_SAMPLES anyway)",
    )
    parser.add_argument(
        "--system_prompt_file",
        type=Path,
        default=None,
        help="text file whose contents replace the built-in system prompt (search_r1_oai/prompts.py), for training "
        "splits and eval sets alike",
    )
    parser.add_argument(
        "--batch_size",
        type=_int_at_least(1),
        default=convert.DEFAULT_BATCH_SIZE,
        help="rows read and written per batch; bounds memory use (default: %(default)s)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar (e.g. in logs of batch jobs)")
    parser.add_argument(
        "--check",
        type=Path,
        nargs="+",
        metavar="FILE",
        default=None,
        help="only validate existing parquet FILE(s) (training splits or eval sets) the way slime reads them; print "
        "every problem, exit 1 if there is any",
    )
    return parser


def run_check(paths: list[Path], batch_size: int) -> int:
    """Check each file and print its problems; 1 if any file has one, 2 if any file is damaged.

    A path that is not there is an input mistake (a typo), not a bad file: a :class:`convert.DataError` before
    anything is checked. A corrupt or truncated file is one ``error:`` line on stderr, like every other input
    mistake, and status 2: its rows cannot be listed, and the fix is to write it again.
    """
    missing = [str(path) for path in paths if not Path(path).exists()]
    if missing:
        raise convert.DataError(
            f"--check: {', '.join(missing)} does not exist; pass parquet files data_preprocess.py wrote "
            "(e.g. data/search_r1_processed/train.parquet or .../eval/nq.parquet)"
        )
    status = 0
    for path in paths:
        problems = check.check_file(path, batch_size=batch_size)
        damaged = next((problem for problem in problems if problem.damaged), None)
        if damaged is not None:
            print(f"error: {path} {damaged.message}; write it again with data_preprocess.py", file=sys.stderr)
            status = 2
            continue
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: {len(problems)} problem(s)" if problems else f"{path}: OK")
        status = status or (1 if problems else 0)
    return status


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.check:
            return run_check(args.check, args.batch_size)
        names = eval_sets.parse_eval_sets(args.eval_sets) if args.eval_sets is not None else []
        split_text = args.splits if args.splits is not None else (None if names else DEFAULT_SPLITS)
        splits = convert.parse_splits(split_text) if split_text is not None else []
        if args.max_samples is not None and not splits:
            raise convert.DataError(
                "--max_samples limits training splits and none is asked for; use --eval_max_samples"
            )
        system_prompt = convert.read_system_prompt(args.system_prompt_file)
        # Every input is resolved (found or downloaded) before anything is converted: a typo fails in seconds.
        eval_inputs = eval_sets.resolve_eval_inputs(names, input_dir=args.input_dir, hf_repo_id=args.eval_hf_repo_id)
        train_inputs = convert.resolve_inputs(splits, input_dir=args.input_dir, hf_repo_id=args.hf_repo_id)
        progress = not args.no_progress
        args.local_dir.mkdir(parents=True, exist_ok=True)
        with files.folder_lock(args.local_dir, "another data_preprocess.py is writing"):
            outputs = [args.local_dir / f"{split}.parquet" for split in train_inputs]
            outputs += [args.local_dir / eval_sets.EVAL_SUBDIR / f"{name}.parquet" for name in eval_inputs]
            for output in outputs:
                files.remove_stale_temps(output)
            summaries = convert.convert_splits(
                train_inputs,
                args.local_dir,
                system_prompt=system_prompt,
                max_rows=args.max_samples,
                batch_size=args.batch_size,
                progress=progress,
            )
            summaries += eval_sets.convert_eval_sets(
                eval_inputs,
                args.local_dir,
                system_prompt=system_prompt,
                max_rows=args.eval_max_samples,
                batch_size=args.batch_size,
                progress=progress,
            )
    except (convert.DataError, files.FolderBusy) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    for summary in summaries:
        print(summary.format())
    empty = [s.split for s in summaries if s.rows_out == 0]
    if empty:
        print(f"error: no usable rows in {', '.join(empty)}", file=sys.stderr)
        return 1
    return run_check([s.output_path for s in summaries], args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
