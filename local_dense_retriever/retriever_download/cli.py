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


HUB_PROBE_TIMEOUT_S = 5.0
# Modules whose exceptions mean "the network or the Hub failed" (huggingface_hub 2.x raises httpx2's own classes).
_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub", "requests", "urllib3")


def is_network_error(exc: BaseException) -> bool:
    """True for an error raised by the HTTP stack or huggingface_hub, or any OS-level connection failure."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in _NETWORK_MODULES for cls in type(exc).__mro__)


def hub_unavailable(plan: DownloadPlan) -> str | None:
    """Why nothing can be fetched, in one line, before any work starts: offline mode or an endpoint that does
    not answer within a few seconds. None when the Hub answers (any HTTP status) or nothing is missing."""
    from huggingface_hub import constants

    missing = check_download(plan)
    if not missing:
        return None
    first = missing[0].split(":")[0]
    if constants.HF_HUB_OFFLINE:
        return f"HF_HUB_OFFLINE=1 but {first} is not downloaded yet: unset HF_HUB_OFFLINE to download it"
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return (
            f"the Hugging Face Hub at {constants.ENDPOINT} is unreachable ({type(exc).__name__}: {exc}): check the "
            f"network, a proxy or HF_ENDPOINT, then rerun ({first} is still missing)"
        )
    return None


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
        if (problem := hub_unavailable(plan)) is not None:
            log.error("%s", problem)
            return 1
        run_download(plan)
    except DownloadError as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # a network failure mid-download is one line, not 32 frames
        if not is_network_error(exc):
            raise
        log.error(
            "the network or the Hub failed (%s: %s): check the network and HF_ENDPOINT, then rerun: finished "
            "files are kept",
            type(exc).__name__,
            exc,
        )
        return 1
    log.info("done. Start the server with: SAVE_PATH=%s bash local_dense_retriever/start_server.sh", plan.save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
