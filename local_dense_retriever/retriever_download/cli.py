"""Command line of download.py: flags map one to one onto :class:`DownloadPlan`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .files import DownloadError
from .pipeline import DownloadPlan, check_download, run_download


def default_save_path() -> Path | None:
    """``$SAVE_PATH``, else ``~/search_r1_data`` (with HOME unset, the home from the user database, as
    start_server.sh does); None when neither exists, e.g. a container user without a passwd entry."""
    if os.environ.get("SAVE_PATH"):
        return Path(os.environ["SAVE_PATH"])
    try:
        return Path.home() / "search_r1_data"
    except (RuntimeError, KeyError):
        return None


DEFAULT_SAVE_PATH = default_save_path()
_DEFAULTS = DownloadPlan(save_path=DEFAULT_SAVE_PATH or Path("search_r1_data"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download.py",
        description=(
            "Download the wiki-18 E5 flat index (split parts, merged into one file), the wiki-18 corpus "
            "(decompressed) and the E5 encoder into one folder. Resumable: finished parts are never fetched again. "
            "Idempotent: a rerun checks the manifest and sizes and does nothing. Needs about 64.6 GB for the index "
            "plus one part while merging, ~14 GB for the corpus plus its .gz while decompressing, ~0.5 GB for the model."
        ),
    )
    parser.add_argument(
        "--save_path",
        type=Path,
        default=DEFAULT_SAVE_PATH,
        help="folder for the index, corpus and model (default: $SAVE_PATH, else ~/search_r1_data; now %(default)s)",
    )
    parser.add_argument(
        "--index_repo",
        default=_DEFAULTS.index_repo,
        help="Hub dataset repo with the index parts (default: %(default)s)",
    )
    parser.add_argument(
        "--index_parts",
        nargs="+",
        default=list(_DEFAULTS.index_parts),
        help="part files, joined in this order (default: %(default)s)",
    )
    parser.add_argument(
        "--index_name", default=_DEFAULTS.index_name, help="file name of the merged index (default: %(default)s)"
    )
    parser.add_argument(
        "--corpus_repo", default=_DEFAULTS.corpus_repo, help="Hub dataset repo with the corpus (default: %(default)s)"
    )
    parser.add_argument(
        "--corpus_file",
        default=_DEFAULTS.corpus_file,
        help="corpus file in that repo; a .gz is decompressed (default: %(default)s)",
    )
    parser.add_argument(
        "--model_name", default=_DEFAULTS.model_name, help="Hub model repo of the query encoder (default: %(default)s)"
    )
    parser.add_argument(
        "--model_dir", type=Path, default=None, help="where to put the encoder (default: SAVE_PATH/<model repo name>)"
    )
    parser.add_argument("--skip_index", action="store_true", help="do not download the index")
    parser.add_argument("--skip_corpus", action="store_true", help="do not download the corpus")
    parser.add_argument(
        "--skip_model", action="store_true", help="do not download the encoder (the server can load it by name)"
    )
    parser.add_argument(
        "--keep_parts",
        action="store_true",
        help="keep the index parts and the corpus .gz after merging/decompressing (needs about twice the disk)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="download nothing: exit 0 when every requested file is complete per the manifest, else list what is not",
    )
    parser.add_argument(
        "--log_level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: %(default)s)",
    )
    return parser


def plan_from_args(args: argparse.Namespace) -> DownloadPlan:
    return DownloadPlan(
        save_path=args.save_path.expanduser(),
        index_repo=args.index_repo,
        index_parts=tuple(args.index_parts),
        index_name=args.index_name,
        corpus_repo=args.corpus_repo,
        corpus_file=args.corpus_file,
        model_name=args.model_name,
        model_dir=args.model_dir.expanduser() if args.model_dir else None,
        get_index=not args.skip_index,
        get_corpus=not args.skip_corpus,
        get_model=not args.skip_model,
        keep_parts=args.keep_parts,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.save_path is None:
        parser.error("HOME is unset and this user has no home directory: pass --save_path (or set SAVE_PATH)")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("download")
    plan = plan_from_args(args)
    try:
        if args.check:
            problems = check_download(plan)
            for problem in problems:
                log.error("%s", problem)
            if not problems:
                log.info("%s is complete", plan.save_path)
            return 1 if problems else 0
        run_download(plan)
    except DownloadError as exc:
        log.error("%s", exc)
        return 1
    log.info("done. Start the server with: SAVE_PATH=%s bash local_dense_retriever/start_server.sh", plan.save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
