"""download.py logic, offline: a fake Hub serves local files; we check merge, decompress, verification, resume.

The index parts are slices of a real FAISS flat index (so the merged file must load in FAISS), the corpus .gz
is the toy wiki-18 corpus. Crashes are simulated at every durable step and with a real SIGKILL mid-append.
"""

from __future__ import annotations

import gzip
import json
import os
import pwd
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import faiss
import numpy as np
import pytest

from retriever_download import MANIFEST_NAME, DownloadError, DownloadPlan, check_download, run_download
from retriever_download.files import atomic_path, exclusive_lock, remove_stale_temps
from retriever_download.index_check import flat_index_problem
from tests.support.offline_assets import PROJECT_ROOT

INDEX_REPO, CORPUS_REPO, MODEL = "test/index", "test/corpus", "test-org/tiny-e5"
PARTS = ("part_aa", "part_ab", "part_ac")
CHUNK = 4096
DOWNLOAD_PY = PROJECT_ROOT / "local_dense_retriever" / "download.py"


class FakeHub:
    """Serves files from a local folder like hf_hub_download would, counting calls; can truncate or fail."""

    def __init__(self, files: dict[tuple[str, str], Path], model_files: dict[str, bytes]) -> None:
        self.files = files
        self.model_files = model_files
        self.fetches: Counter[str] = Counter()
        self.size_lookups = 0
        self.model_fetches = 0
        self.truncate: dict[str, int] = {}  # filename -> bytes to deliver, silently short
        self.fail_after: dict[str, int] = {}  # filename -> bytes written before the connection "drops"
        self.offline = False

    def fetch(self, repo_id: str, filename: str, local_dir: Path) -> Path:
        self.fetches[filename] += 1
        data = self.files[(repo_id, filename)].read_bytes()
        dest = Path(local_dir) / filename
        if filename in self.fail_after:
            dest.write_bytes(data[: self.fail_after[filename]])
            raise ConnectionError(f"connection dropped while fetching {filename}")
        dest.write_bytes(data[: self.truncate.get(filename, len(data))])
        return dest

    def sizes(self, repo_id: str, filenames: list[str]) -> dict[str, int]:
        self.size_lookups += 1
        if self.offline:
            return {}
        return {name: self.files[(repo_id, name)].stat().st_size for name in filenames}

    def fetch_model(self, name: str, model_dir: Path) -> None:
        assert name == MODEL
        self.model_fetches += 1
        for rel, data in self.model_files.items():
            (model_dir / rel).write_bytes(data)

    def run(self, plan: DownloadPlan, **kwargs) -> None:
        run_download(
            plan, fetch=self.fetch, file_sizes=self.sizes, fetch_model=self.fetch_model, chunk_bytes=CHUNK, **kwargs
        )


class SimulatedCrash(Exception):
    pass


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory, toy_corpus_files: tuple[Path, Path]) -> dict[str, Path]:
    """A real flat index split into three uneven parts, and the toy corpus with its .gz."""
    root = tmp_path_factory.mktemp("hub")
    index = faiss.IndexFlatIP(16)
    index.add(np.random.default_rng(0).standard_normal((3000, 16)).astype("float32"))
    faiss.write_index(index, str(root / "e5_Flat.index"))
    data = (root / "e5_Flat.index").read_bytes()
    cuts = [0, 50_000, 120_001, len(data)]
    for name, start, end in zip(PARTS, cuts, cuts[1:], strict=False):
        (root / name).write_bytes(data[start:end])
    corpus = root / "wiki-18.jsonl"
    shutil.copyfile(toy_corpus_files[0], corpus)
    with open(corpus, "rb") as src, gzip.open(root / "wiki-18.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture
def hub(originals: dict[str, Path]) -> FakeHub:
    files = {(INDEX_REPO, name): originals[name] for name in PARTS}
    files[(CORPUS_REPO, "wiki-18.jsonl.gz")] = originals["wiki-18.jsonl.gz"]
    model_files = {"config.json": b'{"model_type": "bert"}', "model.safetensors": os.urandom(3000)}
    return FakeHub(files, model_files)


@pytest.fixture
def plan(tmp_path: Path) -> DownloadPlan:
    return DownloadPlan(
        save_path=tmp_path / "data",
        index_repo=INDEX_REPO,
        index_parts=PARTS,
        corpus_repo=CORPUS_REPO,
        model_name=MODEL,
    )


def assert_complete(plan: DownloadPlan, originals: dict[str, Path]) -> None:
    """The folder holds exactly the finished files: right bytes, loadable index, no leftovers."""
    save = plan.save_path
    merged = save / "e5_Flat.index"
    assert merged.read_bytes() == b"".join(originals[name].read_bytes() for name in PARTS)
    assert faiss.read_index(str(merged)).ntotal == 3000
    assert (save / "wiki-18.jsonl").read_bytes() == originals["wiki-18.jsonl"].read_bytes()
    assert (save / "tiny-e5" / "config.json").is_file()
    leftovers = {p.name for p in save.iterdir()} - {"e5_Flat.index", "wiki-18.jsonl", "tiny-e5", MANIFEST_NAME}
    assert leftovers <= {".download.lock"}, leftovers
    assert check_download(plan) == []


def test_download_merges_parts_decompresses_and_records_sizes(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.run(plan)

    assert_complete(plan, originals)
    assert hub.fetches == Counter({"part_aa": 1, "part_ab": 1, "part_ac": 1, "wiki-18.jsonl.gz": 1})
    assert hub.model_fetches == 1
    manifest = (plan.save_path / MANIFEST_NAME).read_text()
    assert str(originals["e5_Flat.index"].stat().st_size) in manifest
    assert str(originals["wiki-18.jsonl"].stat().st_size) in manifest


def test_second_run_does_no_work(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.run(plan)
    before = {p.name: p.stat().st_mtime_ns for p in plan.save_path.iterdir()}
    calls = (sum(hub.fetches.values()), hub.size_lookups, hub.model_fetches)

    hub.run(plan)

    assert (sum(hub.fetches.values()), hub.size_lookups, hub.model_fetches) == calls
    assert {p.name: p.stat().st_mtime_ns for p in plan.save_path.iterdir()} == before
    assert_complete(plan, originals)


def test_keep_parts_keeps_downloads(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    plan = DownloadPlan(**{**plan.__dict__, "keep_parts": True})
    hub.run(plan)

    for name in (*PARTS, "wiki-18.jsonl.gz"):
        assert (plan.save_path / name).read_bytes() == originals[name].read_bytes()
    merged = plan.save_path / "e5_Flat.index"
    assert merged.read_bytes() == originals["e5_Flat.index"].read_bytes()


def test_truncated_part_is_detected_and_refetched_on_rerun(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.truncate["part_ab"] = 1000
    with pytest.raises(DownloadError, match=r"part_ab is 1000 bytes but the Hub lists 70001") as err:
        hub.run(plan)
    assert "Delete part_ab" in str(err.value)
    assert not (plan.save_path / "e5_Flat.index").exists()

    hub.truncate.clear()
    hub.run(plan)

    assert_complete(plan, originals)
    assert hub.fetches == Counter({"part_aa": 1, "part_ab": 2, "part_ac": 1, "wiki-18.jsonl.gz": 1})


def test_dropped_connection_then_rerun_resumes_with_the_failed_file(
    hub: FakeHub, plan: DownloadPlan, originals
) -> None:
    hub.fail_after["part_ac"] = 500
    with pytest.raises(ConnectionError):
        hub.run(plan)
    assert not (plan.save_path / "part_aa").exists(), "merged parts are deleted as soon as they are in"

    hub.fail_after.clear()
    hub.run(plan)

    assert_complete(plan, originals)
    assert hub.fetches == Counter({"part_aa": 1, "part_ab": 1, "part_ac": 2, "wiki-18.jsonl.gz": 1})


def test_corrupt_index_is_caught_offline_by_its_header(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.offline = True  # no Hub sizes: only the FAISS header can tell
    hub.truncate["part_ac"] = originals["part_ac"].stat().st_size - 4
    with pytest.raises(DownloadError, match=r"declares 3000 vectors of dim 16 \(192045 bytes\) but holds 192041"):
        hub.run(plan)
    assert not (plan.save_path / "e5_Flat.index").exists()


def test_corpus_size_is_checked_when_it_shares_the_index_repo(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.files[(INDEX_REPO, "wiki-18.jsonl.gz")] = originals["wiki-18.jsonl.gz"]
    plan = DownloadPlan(**{**plan.__dict__, "corpus_repo": INDEX_REPO})
    hub.truncate["wiki-18.jsonl.gz"] = 100
    with pytest.raises(DownloadError, match=r"wiki-18.jsonl.gz is 100 bytes but the Hub lists \d+"):
        hub.run(plan)


def test_truncated_gzip_is_caught_without_hub_sizes(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub.offline = True
    hub.truncate["wiki-18.jsonl.gz"] = originals["wiki-18.jsonl.gz"].stat().st_size // 2
    with pytest.raises(DownloadError, match=r"wiki-18.jsonl.gz is truncated or corrupt"):
        hub.run(plan)
    assert not (plan.save_path / "wiki-18.jsonl").exists()
    assert not (plan.save_path / "wiki-18.jsonl.partial").exists()
    assert not list(plan.save_path.glob(".*.tmp")), "the failed decompression's temporary file is removed"


CRASH_POINTS = [
    ("fetched", "part_aa"),
    ("moved", "part_aa"),
    ("recorded", "part_aa"),
    ("deleted", "part_aa"),
    ("fetched", "part_ab"),
    ("appended", "part_ab"),
    ("recorded", "part_ab"),
    ("deleted", "part_ac"),
    ("renamed", "e5_Flat.index"),
    ("recorded-manifest", "e5_Flat.index"),
    ("fetched", "wiki-18.jsonl.gz"),
    ("decompressed", "wiki-18.jsonl"),
    ("recorded-manifest", "wiki-18.jsonl"),
]


@pytest.mark.parametrize(("step", "name"), CRASH_POINTS, ids=[f"{s}-{n}" for s, n in CRASH_POINTS])
def test_rerun_after_a_crash_at_any_step_finishes_correctly(
    hub: FakeHub, plan: DownloadPlan, originals, step: str, name: str
) -> None:
    seen: list[tuple[str, str]] = []

    def crash_at(s: str, n: str) -> None:
        seen.append((s, n))
        if (s, n) == (step, name):
            raise SimulatedCrash(f"{s} {n}")

    with pytest.raises(SimulatedCrash):
        hub.run(plan, checkpoint=crash_at)
    hub.run(plan)

    assert_complete(plan, originals)
    # Nothing is fetched twice: finished parts are remembered, complete files on disk are reused.
    assert hub.fetches == Counter({"part_aa": 1, "part_ab": 1, "part_ac": 1, "wiki-18.jsonl.gz": 1})


_KILL_SCRIPT = """
import os, shutil, signal, sys
from pathlib import Path
from retriever_download import DownloadPlan, run_download

hub, save = Path(sys.argv[1]), Path(sys.argv[2])
written = []

def fetch(repo, name, local_dir):
    return Path(shutil.copyfile(hub / name, Path(local_dir) / name))

def sizes(repo, names):
    return {n: (hub / n).stat().st_size for n in names}

def on_chunk(n):
    written.append(n)
    if len(written) == 3:  # part_aa is renamed (no chunks); this is the middle of appending part_ab
        os.kill(os.getpid(), signal.SIGKILL)

plan = DownloadPlan(save_path=save, index_repo="r", index_parts=("part_aa", "part_ab", "part_ac"),
                    get_corpus=False, get_model=False)
run_download(plan, fetch=fetch, file_sizes=sizes, chunk_bytes=4096, on_chunk=on_chunk)
"""


def test_sigkill_mid_append_then_rerun_never_appends_twice(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    hub_dir = originals["part_aa"].parent
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "local_dense_retriever")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT), str(hub_dir), str(plan.save_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = plan.save_path / "e5_Flat.index.partial"
    part_aa = originals["part_aa"].stat().st_size
    assert partial.stat().st_size > part_aa, "the kill must leave uncommitted bytes of part_ab behind"

    hub.run(plan)

    assert_complete(plan, originals)
    assert hub.fetches["part_aa"] == 0 and hub.fetches["part_ab"] == 0, "parts already on disk are reused"


def test_changed_file_is_reported_and_deleted_file_is_fetched_again(
    hub: FakeHub, plan: DownloadPlan, originals
) -> None:
    hub.run(plan)
    corpus = plan.save_path / "wiki-18.jsonl"
    with open(corpus, "r+b") as f:
        f.truncate(100)

    assert check_download(plan) == [f"{corpus}: expected {originals['wiki-18.jsonl'].stat().st_size} bytes"]
    with pytest.raises(DownloadError, match=r"wiki-18.jsonl is 100 bytes but was \d+ when downloaded"):
        hub.run(plan)

    corpus.unlink()
    hub.run(plan)
    assert_complete(plan, originals)
    assert hub.fetches["wiki-18.jsonl.gz"] == 2 and hub.fetches["part_aa"] == 1


def test_index_merged_by_hand_is_adopted_when_consistent(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    plan.save_path.mkdir()
    shutil.copyfile(originals["e5_Flat.index"], plan.save_path / "e5_Flat.index")
    hub.run(plan)
    assert_complete(plan, originals)
    assert hub.fetches["part_aa"] == 0


def test_index_merged_by_hand_is_rejected_when_short(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    plan.save_path.mkdir()
    (plan.save_path / "e5_Flat.index").write_bytes(originals["e5_Flat.index"].read_bytes()[:-8])
    with pytest.raises(DownloadError, match=r"not made by download.py: delete it and rerun"):
        hub.run(plan)


def test_a_second_download_into_the_same_folder_is_refused(hub: FakeHub, plan: DownloadPlan) -> None:
    plan.save_path.mkdir()
    with exclusive_lock(plan.save_path / ".download.lock"), pytest.raises(DownloadError, match="another download"):
        hub.run(plan)
    assert sum(hub.fetches.values()) == 0


def test_stale_hub_temp_files_are_removed(hub: FakeHub, plan: DownloadPlan, originals) -> None:
    stale = plan.save_path / ".cache" / "huggingface" / "download" / "abc.123.incomplete"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)
    hub.run(plan)
    assert not stale.exists()


def test_flat_header_check_matches_faiss_files(tmp_path: Path, originals) -> None:
    assert flat_index_problem(originals["e5_Flat.index"]) is None
    hnsw = tmp_path / "hnsw.index"
    faiss.write_index(faiss.IndexHNSWFlat(8, 4), str(hnsw))
    assert flat_index_problem(hnsw) is None  # not a flat index: nothing to check
    short = tmp_path / "short.index"
    short.write_bytes(originals["e5_Flat.index"].read_bytes()[:-1])
    assert "but holds 192044 bytes" in flat_index_problem(short)


def test_header_check_reads_other_metrics_and_agrees_with_the_server(tmp_path: Path) -> None:
    """One parser (retriever/flat_file.py): an IxFl index (metric_arg in its header) is checked too, and a file the
    download check refuses is one the server's reader refuses with the same numbers."""
    from retriever.flat_file import read_flat_layout

    lp = faiss.IndexFlat(8, faiss.METRIC_Lp)
    lp.metric_arg = 3.0
    lp.add(np.ones((5, 8), dtype="float32"))
    path = tmp_path / "lp.index"
    faiss.write_index(lp, str(path))
    assert path.read_bytes()[:4] == b"IxFl" and flat_index_problem(path) is None
    assert read_flat_layout(path).offset == 49  # the float32 metric_arg moves the vectors by 4 bytes
    path.write_bytes(path.read_bytes() + b"\0" * 4)  # a part merged twice would add bytes
    problem = flat_index_problem(path)
    assert problem == f"{path} declares 5 vectors of dim 8 (209 bytes) but holds 213 bytes"
    with pytest.raises(ValueError, match=re.escape(problem)):
        read_flat_layout(path)


class _NotHttp(socketserver.BaseRequestHandler):
    """Answers every request with bytes that are not HTTP (what a broken proxy or a captive portal may send)."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"NOT HTTP AT ALL\r\n\r\n")


_HUB_CALLS = """
import sys
from pathlib import Path
from retriever_download.files import DownloadError
from retriever_download.hub import hub_fetch, hub_file_sizes
print("sizes:", hub_file_sizes("test/index", ["part_aa"]))
try:
    hub_fetch("test/index", "part_aa", Path(sys.argv[1]))
except DownloadError as exc:
    print("DownloadError:", exc)
"""


@pytest.mark.e2e
def test_errors_of_huggingface_hubs_own_http_client_are_download_errors(tmp_path: Path) -> None:
    """huggingface_hub 2.x raises httpx2's errors, not httpx's: they must still become one line (sizes: a warning
    and no size check; a file: a DownloadError that says what to do), not a traceback."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _NotHttp)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0"}
    env["TRANSFORMERS_OFFLINE"] = "0"  # huggingface_hub reads it as HF_HUB_OFFLINE too
    try:
        result = subprocess.run(
            [sys.executable, "-c", _HUB_CALLS, str(tmp_path / "out")],
            cwd=PROJECT_ROOT / "local_dense_retriever",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert "could not read file sizes of test/index from the Hub" in result.stderr
    sizes, fetched = result.stdout.splitlines()
    assert sizes == "sizes: {}"
    assert fetched.startswith("DownloadError: could not download part_aa from test/index (RemoteProtocolError: ")
    assert fetched.endswith("then rerun: finished parts are kept.")


@pytest.mark.e2e
def test_cli_check_and_help(hub: FakeHub, plan: DownloadPlan) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(DOWNLOAD_PY), *args], capture_output=True, text=True, timeout=120, check=False
        )

    helptext = cli("--help").stdout
    for flag in ("--save_path", "--index_repo", "--index_parts", "--index_name", "--corpus_repo", "--corpus_file",
                 "--model_name", "--model_dir", "--skip_index", "--skip_corpus", "--skip_model", "--keep_parts",
                 "--check", "--log_level"):  # fmt: skip
        assert flag in helptext
    common = ["--save_path", str(plan.save_path), "--index_parts", *PARTS, "--model_name", MODEL]

    missing = cli(*common, "--check")
    assert missing.returncode == 1
    assert "e5_Flat.index: not downloaded yet" in missing.stderr

    hub.run(plan)
    assert cli(*common, "--check").returncode == 0


class _HubHandler(BaseHTTPRequestHandler):
    """The few Hub endpoints download.py's real defaults use: resolve (HEAD/GET) and paths-info."""

    files: dict[str, bytes]  # "owner/name/filename" -> content
    requests: list[str]

    def _file(self) -> bytes | None:
        parts = unquote(self.path).split("/")  # /datasets/owner/name/resolve/main/filename
        if len(parts) == 7 and parts[1] == "datasets" and parts[4] == "resolve":
            return self.files.get(f"{parts[2]}/{parts[3]}/{parts[6]}")
        return None

    def _head(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def do_HEAD(self) -> None:
        self.requests.append(f"HEAD {self.path}")
        data = self._file()
        if data is None:
            self.send_error(404)
            return
        self._head(data)

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        data = self._file()
        if data is None:
            self.send_error(404)
            return
        self._head(data)
        self.wfile.write(data)

    def do_POST(self) -> None:  # /api/datasets/owner/name/paths-info/main
        self.requests.append(f"POST {self.path}")
        parts = unquote(self.path).split("/")
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        repo = f"{parts[3]}/{parts[4]}"
        info = [
            {"type": "file", "path": p, "size": len(self.files[f"{repo}/{p}"]), "oid": "0" * 40}
            for p in form.get("paths", [])
            if f"{repo}/{p}" in self.files
        ]
        body = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub(originals: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """A fake Hub on 127.0.0.1 serving the test files; yields (endpoint, request log). Stopped afterwards."""
    files = {f"{INDEX_REPO}/{name}": originals[name].read_bytes() for name in PARTS}
    files[f"{CORPUS_REPO}/wiki-18.jsonl.gz"] = originals["wiki-18.jsonl.gz"].read_bytes()
    requests: list[str] = []
    handler = type("Handler", (_HubHandler,), {"files": files, "requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.e2e
def test_real_hub_client_against_a_local_hub(local_hub, plan: DownloadPlan, originals, tmp_path: Path) -> None:
    endpoint, requests = local_hub
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home")}
    args = [sys.executable, str(DOWNLOAD_PY), "--save_path", str(plan.save_path), "--index_repo", INDEX_REPO,
            "--index_parts", *PARTS, "--corpus_repo", CORPUS_REPO, "--skip_model"]  # fmt: skip

    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    assert first.returncode == 0, first.stderr
    assert (plan.save_path / "e5_Flat.index").read_bytes() == originals["e5_Flat.index"].read_bytes()
    assert (plan.save_path / "wiki-18.jsonl").read_bytes() == originals["wiki-18.jsonl"].read_bytes()
    # huggingface_hub itself may GET /api/agent-harnesses (its user-agent registry): count only file traffic.
    file_requests = [r for r in requests if "/datasets/" in r]
    assert any("paths-info" in r for r in file_requests), "sizes come from the Hub metadata"
    assert sum(r.startswith("GET ") for r in file_requests) == 4, file_requests

    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert [r for r in requests if "/datasets/" in r] == file_requests, "a complete folder needs no network call"


def test_atomic_path_shows_only_complete_files_and_sweeps_what_a_kill_left(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path  # two writers never share a name
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert target.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "the mode a plain new file gets, not mkstemp's 0600"
    (tmp_path / ".out.bin.killed.tmp").write_bytes(b"left by SIGKILL")
    remove_stale_temps(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_default_save_path_needs_no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    from retriever_download.cli import default_save_path

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("SAVE_PATH", raising=False)
    assert default_save_path() == Path(pwd.getpwuid(os.getuid()).pw_dir) / "search_r1_data"
    monkeypatch.setenv("SAVE_PATH", "/data/wiki18")
    assert default_save_path() == Path("/data/wiki18")
