"""What the server needs before it starts, checked in seconds without loading anything.

``start_server.sh --check`` and ``retrieval_server.py`` both use it, so a missing encoder, a busy port or an
index that does not match its corpus is one line at once, not a traceback after ~50 s of Hub retries:

* the packages: every module the server imports is installed in this python (a venv built before a new requirement
  was added lacks it);
* the encoder: a local folder with ``config.json``, or a Hub id already in the Hugging Face cache, or (network
  allowed) a Hub id the Hub answers for within a few seconds;
* the port: bound once and released, as uvicorn will bind it;
* rows: the FAISS header's ``ntotal`` (bytes 8..16 of every index file) against the corpus' line count, taken
  from the server's line-offsets sidecar when it is fresh, else counted when the corpus is small enough.

Run as ``python -m retriever.startup_check --index I --corpus C --model M [--host H --port P]``: prints one
``ok: ...`` line per check, or ``error: ...`` lines, and exits 1 on any error.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

HUB_TIMEOUT_S = 5.0
# Counting lines runs at disk speed (~1 GB/s warm, less cold): above this the check skips the count unless the
# server's sidecar already has it. wiki-18 (14 GB) gets its sidecar on the server's first start.
MAX_COUNT_BYTES = 2 << 30
# What retrieval_server.py imports (local_dense_retriever/requirements.txt, installed by setup_venv.sh).
REQUIRED_MODULES = (
    "faiss",
    "numpy",
    "torch",
    "transformers",
    "huggingface_hub",
    "fastapi",
    "fastapi_offline",
    "uvicorn",
    "pydantic",
    "httpx",
)
DOWNLOAD_HINT = "run python local_dense_retriever/download.py (it saves the encoder too) or pass --retriever_model PATH"


@dataclass(frozen=True)
class EncoderStatus:
    """Whether the encoder can be had, and from where."""

    ok: bool
    message: str
    local_dir: str | None = None  # a folder to load instead of the Hub id (the cached snapshot), when known


def check_packages(modules: tuple[str, ...] = REQUIRED_MODULES) -> tuple[bool, str]:
    """``(ok, line)``: every module is installed in this python (found, not imported: this takes milliseconds)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        return False, (
            f"{sys.executable} lacks {', '.join(missing)}: run bash local_dense_retriever/setup_venv.sh "
            "(or set RETRIEVER_PYTHON to the retriever's python)"
        )
    return True, f"{sys.executable} has the retriever's packages"


def _hub_reachable(model: str) -> tuple[bool | None, str]:
    """One HEAD of the model's config.json with a short timeout: True found, False not found, None unreachable."""
    import httpx  # the retriever's own dependency
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT.rstrip('/')}/{model}/resolve/main/config.json"
    headers = {"Authorization": f"Bearer {token}"} if (token := os.environ.get("HF_TOKEN")) else {}
    try:
        reply = httpx.head(url, timeout=HUB_TIMEOUT_S, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"the Hub at {constants.ENDPOINT} is unreachable ({type(exc).__name__}: {exc})"
    if reply.status_code < 400:
        return True, ""
    return False, f"the Hub at {constants.ENDPOINT} answers {reply.status_code} for {model}"


def check_encoder(model: str, probe_hub: bool = True) -> EncoderStatus:
    """Find the encoder without loading it (see the module doc). ``probe_hub=False`` trusts the cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return EncoderStatus(True, f"encoder {model} is a local folder", str(path))
        return EncoderStatus(False, f"cannot load the encoder {model}: the folder has no config.json ({DOWNLOAD_HINT})")
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        return EncoderStatus(False, f"cannot load the encoder {model}: no such folder ({DOWNLOAD_HINT})")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError as exc:  # not a valid repo id
        return EncoderStatus(False, f"cannot load the encoder {model}: {exc} ({DOWNLOAD_HINT})")
    snapshot = str(Path(cached).parent) if isinstance(cached, str) else None
    if snapshot is not None and not probe_hub:
        return EncoderStatus(True, f"encoder {model} is in the Hugging Face cache", snapshot)
    if constants.HF_HUB_OFFLINE:
        if snapshot is not None:
            return EncoderStatus(True, f"encoder {model} is in the Hugging Face cache (offline)", snapshot)
        return EncoderStatus(
            False,
            f"cannot load the encoder {model}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE=1 ({DOWNLOAD_HINT})",
        )
    found, why = _hub_reachable(model)
    if snapshot is not None:
        # Offline in fact: hand transformers the snapshot folder, so it does not spend its retries on the Hub.
        suffix = "" if found else f"; {why}: using the cached copy"
        return EncoderStatus(
            True, f"encoder {model} is in the Hugging Face cache{suffix}", snapshot if not found else None
        )
    if found:
        return EncoderStatus(True, f"encoder {model} is not cached: it will be downloaded from the Hub at start")
    return EncoderStatus(False, f"cannot load the encoder {model}: not cached and {why} ({DOWNLOAD_HINT})")


def index_rows(index_path: str | Path) -> int:
    """``ntotal`` from the header every FAISS index file starts with (flat_file.py reads it)."""
    from .flat_file import read_index_header

    return read_index_header(index_path).ntotal


def corpus_rows(corpus_path: str | Path, max_count_bytes: int = MAX_COUNT_BYTES) -> int | None:
    """The corpus' record count as the server will see it; None when that would mean reading too much."""
    import numpy as np

    from .corpus import compute_line_offsets, fresh_offsets, record_count

    path = Path(corpus_path)
    offsets = fresh_offsets(path)
    if offsets is None:
        if path.stat().st_size > max_count_bytes:
            return None
        offsets = compute_line_offsets(path, show_progress=False)
    return record_count(np.asarray(offsets))


def check_rows(
    index_path: str | Path, corpus_path: str | Path, max_count_bytes: int = MAX_COUNT_BYTES
) -> tuple[bool, str]:
    """``(ok, line)``: index and corpus hold the same number of rows (row i of one is line i of the other)."""
    try:
        n_index = index_rows(index_path)
    except (OSError, ValueError) as exc:
        return False, f"cannot read the index header: {exc}"
    n_corpus = corpus_rows(corpus_path, max_count_bytes)
    if n_corpus is None:
        size_gb = Path(corpus_path).stat().st_size / 1e9
        return True, (
            f"index has {n_index} rows; corpus rows not counted ({size_gb:.1f} GB and no line-offsets sidecar yet: "
            "the server writes one on its first start, then --check compares them)"
        )
    if n_corpus != n_index:
        return False, (
            f"the index has {n_index} rows but the corpus has {n_corpus}: they are not a pair (row i of the index "
            f"is line i of the corpus); set INDEX_PATH and CORPUS_PATH to matching files"
        )
    return True, f"index and corpus both have {n_index} rows"


def _listener_pid(port: int) -> int | None:
    """PID of a process of ours that listens on ``port`` (from /proc; None when not visible)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def check_port(host: str, port: int) -> tuple[bool, str]:
    """Bind ``host:port`` once (SO_REUSEADDR, as uvicorn does) and release it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            pid = _listener_pid(port)
            by = f" (by PID {pid})" if pid is not None else ""
            return False, f"port {port} on {host} is in use{by}: pass --port or stop it"
        return False, f"cannot bind {host}:{port} ({exc.strerror or exc}): pass another --host or --port"
    return True, f"port {port} on {host} is free"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    results = [check_packages(), check_rows(args.index, args.corpus)]
    status = check_encoder(args.model)
    results.append((status.ok, status.message))
    if args.port is not None:
        results.append(check_port(args.host, args.port))
    for ok, line in results:
        print(f"{'ok' if ok else 'error'}: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
