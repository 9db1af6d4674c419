"""Turn the Search-R1 NQ + HotpotQA parquet into slime-ready parquet, or check such a file (``--check``).

Run ``python data_preprocess.py --help``; the logic lives in ``search_r1_data/`` (``convert.py``,
``check.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from search_r1_data import check, convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Convert Search-R1 QA parquet (question, golden_answers, reward_model, data_source) into parquet that "
            "slime loads with --input-key prompt --label-key reward_model --tool-key tools (no "
            "--apply-chat-template): [system, user] messages, the search tool schema as a JSON string, the "
            "reward_model label and a metadata struct. Rejected rows are counted and shown in the summary."
        )
    )
    parser.add_argument(
        "--local_dir",
        type=Path,
        default=Path("data/search_r1_processed"),
        help="output folder; gets <split>.parquet per split (default: %(default)s)",
    )
    parser.add_argument(
        "--hf_repo_id",
        default=convert.DEFAULT_HF_REPO_ID,
        help="Hugging Face dataset to download <split>.parquet from (default: %(default)s)",
    )
    parser.add_argument(
        "--input_dir",
        type=Path,
        default=None,
        help="read <split>.parquet from this folder instead of downloading (offline use)",
    )
    parser.add_argument(
        "--splits", default="train,test", help="comma-separated split names to convert (default: %(default)s)"
    )
    parser.add_argument(
        "--max_samples",
        type=int,
        default=None,
        help="read at most this many input rows per split, rejected rows included (default: all)",
    )
    parser.add_argument(
        "--system_prompt_file",
        type=Path,
        default=None,
        help="text file whose contents replace the built-in system prompt (search_r1_oai/prompts.py)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
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
        help="only validate existing parquet FILE(s) the way slime reads them; print every problem, "
        "exit 1 if there is any",
    )
    return parser


def run_check(paths: list[Path], batch_size: int) -> int:
    failed = False
    for path in paths:
        problems = check.check_file(path, batch_size=batch_size)
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: {len(problems)} problem(s)" if problems else f"{path}: OK")
        failed = failed or bool(problems)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.batch_size < 1:
            raise convert.DataError(f"--batch_size must be >= 1, got {args.batch_size}")
        if args.check:
            return run_check(args.check, args.batch_size)
        summaries = convert.preprocess(
            convert.parse_splits(args.splits),
            args.local_dir,
            input_dir=args.input_dir,
            hf_repo_id=args.hf_repo_id,
            system_prompt=convert.read_system_prompt(args.system_prompt_file),
            max_rows=args.max_samples,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except convert.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for summary in summaries:
        print(summary.format())
    empty = [s.split for s in summaries if s.rows_out == 0]
    if empty:
        print(f"error: no usable rows in split(s) {empty}", file=sys.stderr)
        return 1
    return run_check([s.output_path for s in summaries], args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
