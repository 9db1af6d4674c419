"""Download the wiki-18 E5 index, corpus and encoder into one folder: verified, resumable, idempotent.

Steps run in order (index, corpus, model); each first checks the manifest and does nothing when its result is
recorded there at the recorded size, so a second run makes no network call. The network functions are
parameters (defaults in :mod:`.hub`), which is how the tests run the whole flow offline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .fetching import Checkpoint, ensure_file, no_checkpoint
from .files import (
    CHUNK_BYTES,
    DownloadError,
    OnChunk,
    atomic_path,
    exclusive_lock,
    fsync_dir,
    gunzip_file,
    remove_stale_temps,
)
from .hub import hub_fetch, hub_fetch_model, hub_file_sizes
from .index_check import flat_index_problem
from .manifest import MANIFEST_NAME, Manifest
from .merge import PARTIAL_SUFFIX, STATE_SUFFIX, clear_state, merge_parts, state_path

logger = logging.getLogger(__name__)

LOCK_NAME = ".download.lock"

# (repo_id, filename, local_dir) -> path of the downloaded file
Fetch = Callable[[str, str, Path], Path]
# (repo_id, filenames) -> {filename: size in bytes}; {} when unknown
FileSizes = Callable[[str, list[str]], dict[str, int]]
# (model name, directory) -> None; leaves the model's files in the directory
FetchModel = Callable[[str, Path], None]


@dataclass(frozen=True)
class DownloadPlan:
    """What to download and where. Defaults are the files of the original Search-R1 example."""

    save_path: Path
    index_repo: str = "PeterJinGo/wiki-18-e5-index"
    index_parts: tuple[str, ...] = ("part_aa", "part_ab")
    index_name: str = "e5_Flat.index"
    corpus_repo: str = "PeterJinGo/wiki-18-corpus"
    corpus_file: str = "wiki-18.jsonl.gz"
    model_name: str = "intfloat/e5-base-v2"
    model_dir: Path | None = None
    get_index: bool = True
    get_corpus: bool = True
    get_model: bool = True
    keep_parts: bool = False

    @property
    def corpus_name(self) -> str:
        """The corpus file the server reads: the download without its ``.gz``."""
        return self.corpus_file.removesuffix(".gz")

    @property
    def model_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.save_path / self.model_name.rsplit("/", 1)[-1]


class _HubSizes:
    """Asks the Hub for a step's file sizes once, and only when that step actually has work to do."""

    def __init__(self, lookup: FileSizes) -> None:
        self._lookup = lookup
        # Keyed by the files asked for too: the index and the corpus may live in one repo.
        self._cache: dict[tuple[str, tuple[str, ...]], dict[str, int]] = {}

    def get(self, repo_id: str, filenames: list[str], name: str) -> int | None:
        key = (repo_id, tuple(filenames))
        if key not in self._cache:
            self._cache[key] = self._lookup(repo_id, filenames)
        return self._cache[key].get(name)


def run_download(
    plan: DownloadPlan,
    *,
    fetch: Fetch = hub_fetch,
    file_sizes: FileSizes = hub_file_sizes,
    fetch_model: FetchModel = hub_fetch_model,
    checkpoint: Checkpoint = no_checkpoint,
    chunk_bytes: int = CHUNK_BYTES,
    on_chunk: OnChunk | None = None,
) -> Manifest:
    """Bring ``plan.save_path`` to the complete, verified state and return its manifest.

    Raises :class:`DownloadError` with an actionable message on anything the user must fix.
    """
    save = plan.save_path
    save.mkdir(parents=True, exist_ok=True)
    sizes = _HubSizes(file_sizes)
    with exclusive_lock(save / LOCK_NAME):
        _remove_stale_hub_temp_files(save)
        for name in (MANIFEST_NAME, plan.corpus_name, plan.index_name + STATE_SUFFIX):
            remove_stale_temps(save / name)
        manifest = Manifest.load(save)
        if plan.get_index:
            _ensure_index(plan, manifest, fetch, sizes, checkpoint, chunk_bytes, on_chunk)
        if plan.get_corpus:
            _ensure_corpus(plan, manifest, fetch, sizes, checkpoint, chunk_bytes, on_chunk)
        if plan.get_model:
            _ensure_model(plan, manifest, fetch_model)
    return manifest


def check_download(plan: DownloadPlan) -> list[str]:
    """What is missing or changed in ``plan.save_path`` (empty: everything the plan asks for is complete)."""
    manifest = Manifest.load(plan.save_path)
    names = [
        name for name, wanted in ((plan.index_name, plan.get_index), (plan.corpus_name, plan.get_corpus)) if wanted
    ]
    problems = []
    for name in names:
        path, recorded = plan.save_path / name, manifest.file_size(name)
        if recorded is None:
            problems.append(f"{path}: not downloaded yet")
        elif not path.exists() or path.stat().st_size != recorded:
            problems.append(f"{path}: expected {recorded} bytes")
    if plan.get_model:
        problems += manifest.model_problems(plan.model_name, plan.model_path)
    return problems


def _already_done(manifest: Manifest, path: Path) -> bool:
    recorded = manifest.file_size(path.name)
    if recorded is None:
        return False
    if not path.exists():
        logger.warning("%s is recorded as downloaded but is gone: fetching it again", path)
        manifest.forget_file(path.name)
        return False
    actual = path.stat().st_size
    if actual != recorded:
        raise DownloadError(
            f"{path} is {actual} bytes but was {recorded} when downloaded: it changed since. "
            f"Delete {path.name} and rerun download.py to fetch it again."
        )
    logger.info("%s: complete (%d bytes), nothing to do", path, actual)
    return True


def _ensure_index(
    plan: DownloadPlan,
    manifest: Manifest,
    fetch: Fetch,
    sizes: _HubSizes,
    checkpoint: Checkpoint,
    chunk_bytes: int,
    on_chunk: OnChunk | None,
) -> None:
    save, parts = plan.save_path, list(plan.index_parts)
    target = save / plan.index_name
    if _already_done(manifest, target):
        _tidy(save, [plan.index_name + PARTIAL_SUFFIX] + ([] if plan.keep_parts else parts))
        clear_state(save, plan.index_name)
        return

    def expected(name: str) -> int | None:
        return sizes.get(plan.index_repo, parts, name)

    if target.exists() and not state_path(save, plan.index_name).exists():
        size = _adopt_index(target, parts, expected)
    else:
        size = merge_parts(
            save,
            parts,
            plan.index_name,
            fetch_part=lambda name: fetch(plan.index_repo, name, save),
            expected_size=expected,
            keep_parts=plan.keep_parts,
            checkpoint=checkpoint,
            chunk_bytes=chunk_bytes,
            on_chunk=on_chunk,
        )
    manifest.record_file(plan.index_name, size, source=f"{plan.index_repo}:{'+'.join(parts)}")
    checkpoint("recorded-manifest", plan.index_name)
    clear_state(save, plan.index_name)
    logger.info("%s: ready (%d bytes)", target, size)


def _adopt_index(target: Path, parts: list[str], expected: Callable[[str], int | None]) -> int:
    """Accept an index merged earlier by hand (``cat part_* > e5_Flat.index``) when it checks out."""
    size = target.stat().st_size
    problem = flat_index_problem(target)
    hub = [expected(name) for name in parts]
    if problem is None and None not in hub and size != sum(s for s in hub if s is not None):
        problem = f"{target} is {size} bytes but the Hub parts total {sum(s for s in hub if s is not None)}"
    if problem:
        raise DownloadError(f"{problem}. It was not made by download.py: delete it and rerun.")
    logger.info("%s exists (%d bytes, consistent with its header and the Hub sizes): using it", target, size)
    return size


def _ensure_corpus(
    plan: DownloadPlan,
    manifest: Manifest,
    fetch: Fetch,
    sizes: _HubSizes,
    checkpoint: Checkpoint,
    chunk_bytes: int,
    on_chunk: OnChunk | None,
) -> None:
    save, name = plan.save_path, plan.corpus_file
    out = save / plan.corpus_name
    if _already_done(manifest, out):
        if out.name != name and not plan.keep_parts:
            _tidy(save, [name])
        return
    source = f"{plan.corpus_repo}:{name}"
    packed = save / name
    if out.exists() and out != packed and not packed.exists():
        logger.warning(
            "%s exists but was not made by download.py; using it as is (the Hub lists only the size of %s)", out, name
        )
        _check_corpus_format(out)
        manifest.record_file(out.name, out.stat().st_size, source="existing file")
        return

    expected = sizes.get(plan.corpus_repo, [name], name)
    ensure_file(save, name, lambda n: fetch(plan.corpus_repo, n, save), expected, checkpoint)
    if out != packed:
        with atomic_path(out) as partial:
            gunzip_file(packed, partial, desc=f"decompress {name}", chunk_bytes=chunk_bytes, on_chunk=on_chunk)
            _check_corpus_format(partial)
        fsync_dir(save)
        checkpoint("decompressed", out.name)
    manifest.record_file(out.name, out.stat().st_size, source=source)
    checkpoint("recorded-manifest", out.name)
    if out != packed and not plan.keep_parts:
        packed.unlink(missing_ok=True)
        checkpoint("deleted", name)
    logger.info("%s: ready (%d bytes)", out, out.stat().st_size)


def _tidy(save: Path, names: list[str]) -> None:
    """Remove what a run interrupted after its last record left behind (downloads already merged, partials)."""
    for name in names:
        path = save / name
        if path.exists():
            logger.info("removing leftover %s", path)
            path.unlink()


def _check_corpus_format(path: Path) -> None:
    """Fail early when the corpus is not wiki-18 style jsonl (one object with ``contents`` per line)."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        row = json.loads(first)
    except ValueError as exc:
        raise DownloadError(f"{path} does not start with a JSON line ({exc}); is --corpus_file right?") from exc
    if not isinstance(row, dict) or "contents" not in row:
        raise DownloadError(f'{path}: the first line has no "contents" field; the server expects wiki-18 jsonl')


def _ensure_model(plan: DownloadPlan, manifest: Manifest, fetch_model: FetchModel) -> None:
    model_dir = plan.model_path
    if not manifest.model_problems(plan.model_name, model_dir):
        logger.info("%s: complete in %s, nothing to do", plan.model_name, model_dir)
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    fetch_model(plan.model_name, model_dir)
    files = {
        str(p.relative_to(model_dir)): p.stat().st_size
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(model_dir).parts
    }
    weights = [rel for rel in files if rel.endswith((".safetensors", ".bin"))]
    if "config.json" not in files or not weights:
        raise DownloadError(f"{model_dir} has no config.json or weights after fetching {plan.model_name}")
    manifest.record_model(plan.model_name, model_dir, files)
    logger.info("%s: ready in %s (%d files)", plan.model_name, model_dir, len(files))


def _remove_stale_hub_temp_files(save: Path) -> None:
    """Delete temp files a killed huggingface_hub download left behind; they are never reused and can be huge.

    Safe because we hold the folder's lock: no other download.py is writing here.
    """
    temp_dir = save / ".cache" / "huggingface" / "download"
    if not temp_dir.is_dir():
        return
    for path in temp_dir.rglob("*.incomplete"):
        logger.info("removing %s (%d bytes) left by an interrupted download", path, path.stat().st_size)
        path.unlink(missing_ok=True)
