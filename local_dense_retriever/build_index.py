"""Encode a jsonl corpus into a FAISS inner-product index (resumable).

Passages are encoded in shards that are saved as .npy files in a work dir as they finish, so an
interrupted run (wiki-18 takes hours even on a GPU) resumes where it stopped. Each shard has a fingerprint
(shard_N.json: a hash of the exact texts it encoded, the encoder, max length, pooling, dtype); a rerun reuses
only shards whose fingerprint matches and re-encodes the others, saying why (e.g. the corpus changed since).
One build per work dir at a time: a second is refused. The index is built from the shards at the end and
appears under its name only when complete. Vector i is corpus line i, which is what retrieval_server.py assumes.

Index types (--index_type, any FAISS factory string; all use inner product on L2-normalised vectors):
  Flat          exact search, recall 100%. 4*dim bytes per passage (wiki-18 x 768: 64.6 GB); the server
                memory-maps it, so it costs page cache, not RAM. Best on GPU (--faiss_gpu shards it).
  HNSW32        graph search: 4*dim + ~260 bytes of links per passage (wiki-18: ~70 GB); far fewer vectors
                touched per query on CPU, recall below 100% and rising with --ef_search (saved in the
                index); building needs the whole index in RAM and, for 21M passages on CPU, many hours.
  IVF4096,Flat  clustered: same memory as Flat plus 8-byte ids; a query scans --nprobe of 4096 lists (saved in
                the index), so recall and cost both grow with nprobe; trained on --train_size vectors.
  IVF4096,PQ64  compressed: ~72 bytes per passage (wiki-18: ~1.5 GB); lossy codes lower recall noticeably.
Recall figures depend on the data: check them on your own questions before switching from Flat.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from retriever.corpus import Corpus
from retriever.encoder import ENCODER_SPECS, Encoder, set_cpu_threads
from retriever.settings import DEFAULT_RETRIEVER_MODEL, existing_file, in_range
from retriever_download.files import FolderBusy, atomic_path, folder_lock, remove_stale_temps

if TYPE_CHECKING:  # imported at run time only after main() set OMP_WAIT_POLICY for FAISS' OpenMP runtime
    import faiss

logger = logging.getLogger("build_index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_path", required=True, type=existing_file, help="jsonl corpus, one passage per line")
    parser.add_argument(
        "--retriever_model",
        default=DEFAULT_RETRIEVER_MODEL,
        help="HF model name or local dir of the encoder; the server must use the same (default: %(default)s)",
    )
    parser.add_argument("--index_path", required=True, type=Path, help="where to write the FAISS index")
    parser.add_argument(
        "--retriever_name", default="e5", help=f"encoder family: {', '.join(ENCODER_SPECS)} (default: %(default)s)"
    )
    parser.add_argument(
        "--batch_size", type=in_range(int, 1), default=64, help="passages per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--max_length",
        type=in_range(int, 1),
        default=256,
        help="passage tokens kept by the encoder (default: %(default)s)",
    )
    parser.add_argument(
        "--index_type", default="Flat", help="FAISS factory string, see the table above (default: %(default)s)"
    )
    parser.add_argument(
        "--shard_size",
        type=in_range(int, 1),
        default=100_000,
        help="passages per saved .npy shard (default: %(default)s)",
    )
    parser.add_argument(
        "--work_dir", type=Path, default=None, help="where shards go (default: INDEX_PATH + '.shards/')"
    )
    parser.add_argument(
        "--train_size",
        type=in_range(int, 1),
        default=500_000,
        help="vectors sampled to train IVF/PQ indexes (default: %(default)s)",
    )
    parser.add_argument(
        "--nprobe",
        type=in_range(int, 1),
        default=64,
        help="IVF lists scanned per query, stored in the index (default: %(default)s)",
    )
    parser.add_argument(
        "--ef_search",
        type=in_range(int, 1),
        default=128,
        help="HNSW search breadth, stored in the index (default: %(default)s)",
    )
    parser.add_argument("--fp16", action="store_true", help="encode in fp16 (CUDA only)")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda if available (default: auto)")
    parser.add_argument("--keep_shards", action="store_true", help="keep the .npy shards after the index is written")
    return parser


def encoding_identity(encoder: Encoder) -> dict[str, Any]:
    """Everything besides the passages that decides a vector: a shard encoded otherwise must not be reused."""
    return {
        "model": encoder.model_name,
        "encoder": asdict(encoder.spec),  # prefixes, pooling, normalisation
        "max_length": encoder.max_length,
        "dtype": "float16" if encoder.fp16 else "float32",
        "dim": encoder.dim,
    }


def lines_digest(texts: list[str]) -> str:
    """SHA-256 of exactly the texts a shard encodes (length-prefixed, so no two lists share a digest)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")  # a JSON "\\ud800" escape must not crash the hash
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _fingerprint_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


def shard_mismatch(shard: Path, fingerprint: dict[str, Any]) -> str | None:
    """Why the saved ``shard`` cannot be reused for ``fingerprint`` (None: it can)."""
    try:
        saved = json.loads(_fingerprint_path(shard).read_text())
    except FileNotFoundError:
        return "has no fingerprint (written by an older build_index.py, or killed before it was recorded)"
    except (OSError, ValueError) as exc:
        return f"its fingerprint is unreadable ({exc})"
    if not isinstance(saved, dict):
        return "its fingerprint is not a JSON object"
    if saved.get("rows") != fingerprint["rows"]:
        return f"holds rows {saved.get('rows')}, not {fingerprint['rows']}"
    encoding, was = fingerprint["encoding"], saved.get("encoding")
    if was != encoding:
        was = was if isinstance(was, dict) else {}
        changed = ", ".join(
            f"{key} {was.get(key)!r} -> {encoding[key]!r}" for key in encoding if was.get(key) != encoding[key]
        )
        return f"encoded with other settings ({changed or 'unknown fields'})"
    if saved.get("lines_sha256") != fingerprint["lines_sha256"]:
        return "built from other lines (the corpus changed since)"
    try:
        shape = np.load(shard, mmap_mode="r").shape
    except (OSError, ValueError) as exc:
        return f"its vectors are unreadable ({exc})"
    want = (fingerprint["rows"][1] - fingerprint["rows"][0], encoding["dim"])
    if shape != want:
        return f"holds vectors of shape {shape}, not {want}"
    return None


def _write_shard(shard: Path, vectors: np.ndarray, fingerprint: dict[str, Any]) -> None:
    """Vectors first, fingerprint last: a shard without a matching fingerprint is never reused."""
    _fingerprint_path(shard).unlink(missing_ok=True)  # the old one must not vouch for the new vectors
    with atomic_path(shard) as tmp, tmp.open("wb") as handle:
        np.save(handle, vectors)
    with atomic_path(_fingerprint_path(shard)) as tmp:
        tmp.write_text(json.dumps(fingerprint))


def encode_shards(corpus: Corpus, encoder: Encoder, work_dir: Path, shard_size: int) -> list[Path]:
    """Encode every shard that is not on disk yet, or not from the same lines and encoding; return all shard paths.

    The caller holds ``work_dir``'s lock, so no other build writes here.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    meta_path = work_dir / "meta.json"
    # Whole-run settings: another encoder, shard size or corpus length is refused rather than re-encoded.
    meta = {
        "passages": len(corpus),
        "shard_size": shard_size,
        "dim": encoder.dim,
        "model": encoder.model_name,
        "encoder": asdict(encoder.spec),
        "max_length": encoder.max_length,
    }
    if meta_path.exists():
        saved = json.loads(meta_path.read_text())
        differs = sorted(key for key in meta.keys() | saved.keys() if saved.get(key) != meta.get(key))
        if differs:
            raise SystemExit(
                f"{work_dir} holds shards of another run (different {', '.join(differs)}): "
                "use another --work_dir, or delete it to start over"
            )
    remove_stale_temps(meta_path)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta))

    identity = encoding_identity(encoder)
    shards = [work_dir / f"shard_{i:05d}.npy" for i in range((len(corpus) + shard_size - 1) // shard_size)]
    reused = 0
    with tqdm(total=len(corpus), unit="passage", desc="encoding") as bar:
        for number, shard in enumerate(shards):
            remove_stale_temps(shard)
            remove_stale_temps(_fingerprint_path(shard))
            rows = range(number * shard_size, min((number + 1) * shard_size, len(corpus)))
            # The same wiki-18 ``"Title"\ntext`` form the server returns as ``contents``, for any corpus shape.
            texts = [corpus.doc(row)["contents"] for row in rows]
            fingerprint = {"rows": [rows.start, rows.stop], "lines_sha256": lines_digest(texts), "encoding": identity}
            if shard.exists():
                why = shard_mismatch(shard, fingerprint)
                if why is None:
                    reused += 1
                    bar.update(len(rows))
                    continue
                logger.warning("shard %d: %s - re-encoding", number, why)
            vectors = np.empty((len(rows), encoder.dim), dtype=np.float32)
            for start in range(0, len(rows), encoder.batch_size):
                batch = texts[start : start + encoder.batch_size]
                vectors[start : start + len(batch)] = encoder.encode_passages(batch)
                bar.update(len(batch))
            _write_shard(shard, vectors, fingerprint)
    if reused:
        logger.info("resumed: %d of %d shards reused (same lines, same encoding)", reused, len(shards))
    return shards


def build_index(shards: list[Path], dim: int, index_type: str, train_size: int) -> faiss.Index:
    """Create the FAISS index from the saved shards (training first when the index type needs it)."""
    import faiss

    index = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        arrays = [np.load(shard, mmap_mode="r") for shard in shards]
        total = sum(len(a) for a in arrays)
        per_shard = [min(len(a), max(1, round(train_size * len(a) / total))) for a in arrays]
        sample = np.concatenate(
            [a[np.sort(rng.choice(len(a), n, replace=False))] for a, n in zip(arrays, per_shard, strict=True)]
        )
        logger.info("training %s on %d vectors", index_type, len(sample))
        index.train(sample)
    for shard in tqdm(shards, unit="shard", desc=f"adding to {index_type}"):
        index.add(np.ascontiguousarray(np.load(shard)))
    return index


def set_search_params(index: faiss.Index, nprobe: int, ef_search: int) -> None:
    """Store query-time breadth in the index file itself, so the server needs no per-type knobs."""
    import faiss

    with contextlib.suppress(RuntimeError):  # not an IVF index
        faiss.extract_index_ivf(index).nprobe = nprobe
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch and FAISS each bring their own OpenMP runtime; with the default busy-wait policy the idle pool
    # spins on the cores the other one needs (a 1-query encode measured 485 ms instead of 24 ms on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss.loader reports, at INFO, each optimised build it could not load before the one it does ("Could not load
    # library with AVX512 support ... ModuleNotFoundError"): normal on most CPUs, and it reads like an error.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    set_cpu_threads(None)
    default_work_dir = args.index_path.with_name(args.index_path.name + ".shards")
    work_dir = args.work_dir or default_work_dir
    corpus = Corpus(args.corpus_path)
    if len(corpus) == 0:
        raise SystemExit(f"{args.corpus_path} has no passages")
    encoder = Encoder(
        args.retriever_model,
        args.retriever_name,
        device=args.device,
        fp16=args.fp16,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    args.index_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(work_dir, "another build_index.py is writing shards"):
            if work_dir == default_work_dir:  # the lock on the index's own shard folder keeps its other writers out
                remove_stale_temps(args.index_path)
            shards = encode_shards(corpus, encoder, work_dir, args.shard_size)
            index = build_index(shards, encoder.dim, args.index_type, args.train_size)
            set_search_params(index, nprobe=args.nprobe, ef_search=args.ef_search)
            with atomic_path(args.index_path) as tmp:
                faiss.write_index(index, str(tmp))
            logger.info(
                "wrote %s: %s with %d vectors of dim %d", args.index_path, args.index_type, index.ntotal, index.d
            )
            if not args.keep_shards:
                for shard in shards:
                    shard.unlink(missing_ok=True)
                    _fingerprint_path(shard).unlink(missing_ok=True)
                (work_dir / "meta.json").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    work_dir.rmdir()
    except FolderBusy as exc:
        raise SystemExit(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
