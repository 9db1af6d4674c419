"""The Hugging Face Hub side of the download: fetch one file, read file sizes, fetch the encoder.

These are the defaults of :func:`retriever_download.pipeline.run_download`; tests pass local fakes instead.
Note on resuming: huggingface_hub 2.x retries and resumes a transfer within one call, but an interrupted
process starts that file over (it downloads into a per-process temporary file). Parts that are already merged
are never fetched again, which is what keeps a rerun cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from .files import DownloadError

logger = logging.getLogger(__name__)

# Formats the PyTorch encoder never loads; skipping them saves gigabytes for repos that ship them all.
_MODEL_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*"]
_TORCH_WEIGHTS = ["*.bin", "*.pt", "*.pth"]


try:  # huggingface_hub 2.x sends its requests through httpx2, whose errors are not httpx's
    from httpx2 import HTTPError as _ClientError
except ImportError:  # huggingface_hub 1.x uses httpx itself
    _ClientError = httpx.HTTPError
# A failed request, whichever layer reports it (a refused connection, a proxy answering garbage, an HTTP error
# status, offline mode): each becomes one DownloadError line, not a traceback.
_NETWORK_ERRORS = (HfHubHTTPError, httpx.HTTPError, _ClientError, OSError)
_HUB_ERRORS = (LocalEntryNotFoundError, *_NETWORK_ERRORS)


def hub_fetch(repo_id: str, filename: str, local_dir: Path) -> Path:
    """Download one file of a Hub dataset repo into ``local_dir`` (a no-op when it is already there)."""
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=local_dir))
    except _HUB_ERRORS as exc:
        raise DownloadError(
            f"could not download {filename} from {repo_id} ({type(exc).__name__}: {exc}). Check the network, "
            "HF_ENDPOINT/HF_TOKEN and free disk, then rerun: finished parts are kept."
        ) from exc


def hub_file_sizes(repo_id: str, filenames: list[str]) -> dict[str, int]:
    """Sizes of ``filenames`` in a Hub dataset repo, so downloads can be verified; {} when the Hub is unreachable."""
    if constants.HF_HUB_OFFLINE:
        logger.warning("HF_HUB_OFFLINE is set: sizes of %s files are not checked against the Hub", repo_id)
        return {}
    try:
        infos = HfApi().get_paths_info(repo_id, filenames, repo_type="dataset")
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"dataset repo {repo_id} not found on the Hub (check the --*_repo flags)") from exc
    except _NETWORK_ERRORS as exc:
        logger.warning("could not read file sizes of %s from the Hub (%s): sizes are not checked", repo_id, exc)
        return {}
    sizes = {info.path: int(info.size) for info in infos if isinstance(info, RepoFile)}
    missing = [name for name in filenames if name not in sizes]
    if missing:
        raise DownloadError(
            f"dataset repo {repo_id} has no file(s) {missing} (check the --index_parts/--corpus_file flags)"
        )
    return sizes


def hub_fetch_model(model_name: str, model_dir: Path) -> None:
    """Download the encoder's PyTorch files into ``model_dir`` (safetensors only when the repo has them)."""
    ignore = list(_MODEL_IGNORE)
    try:
        if any(name.endswith(".safetensors") for name in HfApi().list_repo_files(model_name)):
            ignore += _TORCH_WEIGHTS
        snapshot_download(repo_id=model_name, local_dir=model_dir, ignore_patterns=ignore)
    except _HUB_ERRORS as exc:
        raise DownloadError(
            f"could not download the model {model_name} ({type(exc).__name__}: {exc}). Check the network and "
            "--model_name, then rerun (or pass --skip_model and let the server load it by name)."
        ) from exc
