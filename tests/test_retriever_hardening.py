"""One client cannot stall the retriever: huge bad bodies, slow and idle connections, clients that hang up, a cache
bounded in bytes, the optional bearer token, every 4xx/5xx counted.

Cases that need a scripted engine (slow, recording) run the real app in-process under uvicorn; the connection
limits live in uvicorn's protocol as retrieval_server.py configures it, so they are tested on that script in a
subprocess, with an open-file limit of 80 (as on the host where 76 idle connections locked everyone out).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel, Field

from retriever.api import create_app, model_label
from retriever.batcher import Batcher
from retriever.cache import LRUCache
from retriever.engine import RetrievalEngine
from retriever.request_body import MAX_ERRORS, BodyParser, BodyProblem
from retriever.settings import Settings
from tests.support.live_server import free_port, serve_app

PROJECT = Path(__file__).resolve().parent.parent
SERVER = PROJECT / "local_dense_retriever" / "retrieval_server.py"


class StubEngine:
    """Answers every query with ``topk`` copies of one passage of ``passage_chars`` characters; records each call;
    each call takes ``delay_s`` plus ``per_query_s`` per query; an optional gate holds the worker."""

    def __init__(self, delay_s: float = 0.0, per_query_s: float = 0.0, passage_chars: int = 100):
        self.size = 1000
        self.model_name = "stub/model"
        self.calls: list[list[str]] = []
        self.delay_s, self.per_query_s = delay_s, per_query_s
        self.text = "x" * passage_chars
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def search(self, queries: list[str], k: int) -> list[list[tuple[dict[str, Any], float]]]:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(list(queries))
        time.sleep(self.delay_s + self.per_query_s * len(queries))
        doc = {"id": "1", "contents": f'"T"\n{self.text}', "title": "T", "text": self.text}
        return [[(dict(doc, id=f"{query}-{rank}"), 1.0) for rank in range(k)] for query in queries]


def _settings(**changes: Any) -> Settings:
    return Settings(index_path="unused", corpus_path="unused", retriever_model="stub", **changes)


@contextlib.contextmanager
def _serve(engine: StubEngine, api_key: str | None = None, **changes: Any) -> Iterator[str]:
    app = create_app(_settings(**changes), load_engine=lambda: engine, api_key=api_key)
    with serve_app(app, name="retriever", lifespan="on") as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "stub engine never became ready"
            time.sleep(0.02)
        yield url


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


# -- bad bodies -------------------------------------------------------------------------------------------------


async def test_a_huge_body_of_non_strings_gets_a_short_422_and_health_answers_meanwhile():
    """100k numbers (0.4 MiB): FastAPI's own path took 10 s of the event loop and answered 18 MiB."""
    body = json.dumps({"queries": list(range(100_000))}).encode()
    assert len(body) > 400_000
    with _serve(StubEngine()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            bad = asyncio.create_task(
                http.post("/retrieve", content=body, headers={"content-type": "application/json"})
            )
            health = await http.get("/health")
            response = await bad
        assert health.status_code == 200
        assert response.status_code == 422
        assert len(response.content) < 4096, len(response.content)
        payload = response.json()
        assert len(payload["detail"]) == MAX_ERRORS and payload["errors"] == 100_000
        assert payload["message"].startswith("queries.0: Input should be a valid string")
        assert f"(+{100_000 - MAX_ERRORS} more)" in payload["message"]
        assert _health(url)["refused"]["invalid_fields"] == 1


def test_every_bad_query_and_bad_field_is_counted_and_the_first_ones_named():
    with _serve(StubEngine()) as url:
        response = httpx.post(f"{url}/retrieve", json={"queries": ["ok", 1, "ok", None], "topk": "3"}, timeout=10)
    payload = response.json()
    assert response.status_code == 422 and payload["errors"] == 3
    assert [item["loc"] for item in payload["detail"]] == [["body", "queries", 1], ["body", "queries", 3],
                                                          ["body", "topk"]]  # fmt: skip
    assert "queries.1: Input should be a valid string" in payload["message"]


def test_the_request_schema_is_still_documented():
    """/retrieve reads its own body; /docs and openapi.json still show the RetrieveRequest schema."""
    with _serve(StubEngine()) as url:
        spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schema = spec["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["queries"] and set(schema["properties"]) == {"queries", "topk", "return_scores"}


def test_deeply_nested_json_gets_a_422_that_is_counted():
    nested = b'{"queries": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with _serve(StubEngine()) as url:
        response = httpx.post(
            f"{url}/retrieve", content=nested, headers={"content-type": "application/json"}, timeout=30
        )
        assert response.status_code == 422 and "nested too deeply" in response.json()["message"]
        not_utf8 = httpx.post(
            f"{url}/retrieve", content=b'{"queries": ["\xff"]}', headers={"content-type": "application/json"}
        )
        assert not_utf8.status_code == 422 and "not UTF-8" in not_utf8.json()["message"]
        refused = _health(url)["refused"]
    assert refused["invalid_json"] == 2 and refused["total"] == 2


def test_every_4xx_and_5xx_is_counted_but_health_while_loading_is_not():
    with _serve(StubEngine()) as url:
        assert httpx.get(f"{url}/nowhere", timeout=10).status_code == 404
        assert httpx.get(f"{url}/retrieve", timeout=10).status_code == 405
        refused = _health(url)["refused"]
    assert refused["other"] == 2 and refused["total"] == 2


def test_an_unexpected_error_is_a_counted_500():
    class Broken(StubEngine):
        def search(self, queries: list[str], k: int):  # wrong shape: not a list per query
            return [None for _ in queries]

    with _serve(Broken()) as url:
        response = httpx.post(f"{url}/retrieve", json={"queries": ["q"]}, timeout=10)
        assert response.status_code == 500
        assert _health(url)["refused"]["failed"] == 1


# -- bearer token -----------------------------------------------------------------------------------------------


def test_with_an_api_key_retrieve_needs_the_bearer_token_and_health_stays_open():
    with _serve(StubEngine(), api_key="s3cret-token") as url:
        health = _health(url)
        assert health["auth"] is True and "s3cret" not in json.dumps(health)
        missing = httpx.post(f"{url}/retrieve", json={"queries": ["q"]}, timeout=10)
        wrong = httpx.post(f"{url}/retrieve", json={"queries": ["q"]}, headers={"authorization": "Bearer nope"})
        basic = httpx.post(f"{url}/retrieve", json={"queries": ["q"]}, auth=("user", "s3cret-token"))
        right = httpx.post(
            f"{url}/retrieve", json={"queries": ["q"]}, headers={"authorization": "Bearer s3cret-token"}, timeout=10
        )
        refused = _health(url)["refused"]
    for response in (missing, wrong, basic):
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "RETRIEVER_API_KEY" in response.json()["detail"] and "s3cret" not in response.text
    assert right.status_code == 200 and right.json()["result"][0][0]["id"] == "q-0"
    assert refused["unauthorized"] == 3 and refused["total"] == 3


# -- clients that hang up ---------------------------------------------------------------------------------------


def _post_and_hang_up(url: str, body: dict, after_s: float) -> None:
    """Send a /retrieve request over a raw socket and close the connection ``after_s`` later, unanswered."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + payload)
        time.sleep(after_s)


def test_queries_of_a_client_that_hung_up_are_never_searched_and_the_next_request_is_prompt():
    """128 long queries queued behind a busy worker; their client hangs up after 0.3 s. None of them reaches the
    engine (each would cost 0.1 s) and a one-query request afterwards is answered at once."""
    engine = StubEngine(per_query_s=0.1)
    long_queries = [f"long query {i} " + "word " * 700 for i in range(128)]
    with _serve(engine, max_wait_ms=1) as url:
        engine.gate.clear()
        engine.entered.clear()
        with httpx.Client(base_url=url, timeout=30) as http:
            busy = threading.Thread(target=http.post, args=("/retrieve",), kwargs={"json": {"queries": ["busy"]}})
            busy.start()
            assert engine.entered.wait(10)
            _post_and_hang_up(url, {"queries": long_queries}, after_s=0.3)
            deadline = time.monotonic() + 10
            while _health(url)["stats"]["dropped"] < 128:  # the server noticed the hang-up
                assert time.monotonic() < deadline, _health(url)
                time.sleep(0.02)
            assert _health(url)["queue_depth"] == 1  # only the busy query, in the worker
            engine.gate.set()
            busy.join(timeout=30)
            started = time.monotonic()
            prompt = http.post("/retrieve", json={"queries": ["after the hang-up"]})
            elapsed = time.monotonic() - started
        stats = _health(url)["stats"]
    assert prompt.status_code == 200
    assert elapsed < 0.1 * 128 / 2, f"waited {elapsed:.1f} s: behind abandoned work"
    assert engine.calls == [["busy"], ["after the hang-up"]]
    assert (stats["abandoned"], stats["dropped"]) == (1, 128)


async def test_a_query_shared_with_a_caller_that_stays_is_still_answered():
    engine = StubEngine()
    batcher = Batcher(max_wait_ms=1, cache_size=0)
    await batcher.start()
    batcher.set_search(engine.search)
    try:
        engine.gate.clear()
        engine.entered.clear()
        first = asyncio.create_task(batcher.retrieve(["busy"], 1))
        assert await asyncio.to_thread(engine.entered.wait, 10)
        leaving = asyncio.create_task(batcher.retrieve(["shared", "only mine"], 1))
        staying = asyncio.create_task(batcher.retrieve(["shared"], 1))
        await asyncio.sleep(0.05)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert batcher.queue_depth == 2  # "busy" in the worker, "shared" still wanted
        engine.gate.set()
        assert (await asyncio.wait_for(staying, 10))[0][0][0]["id"] == "shared-0"
        await asyncio.wait_for(first, 10)
    finally:
        await batcher.stop()
    assert engine.calls == [["busy"], ["shared"]]
    assert (batcher.stats.abandoned, batcher.stats.dropped) == (1, 1)


class _PieceEncoder:
    """Records each encode call; flips the caller to gone after the first piece."""

    def __init__(self, on_first: Callable[[], None]):
        self.dim, self.max_length, self.batch_size = 4, 256, 256
        self.pieces: list[list[str]] = []
        self.on_first = on_first

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        self.pieces.append(list(queries))
        if len(self.pieces) == 1:
            self.on_first()
        return np.ones((len(queries), self.dim), dtype=np.float32)


class _Index:
    ntotal, dim, kind = 3, 4, "stub"

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((len(vectors), k), dtype=np.float32), np.zeros((len(vectors), k), dtype=np.int64)


class _Corpus:
    def __len__(self) -> int:
        return 3

    def doc(self, doc_id: int) -> dict:
        return {"id": str(doc_id)}


def test_the_engine_stops_encoding_queries_nobody_wants_any_more():
    """Inside a running batch: long queries are encoded in pieces and the ones whose callers left are skipped."""
    wanted = [True] * 128
    encoder = _PieceEncoder(on_first=lambda: wanted.__setitem__(slice(0, 128), [False] * 128))
    engine = RetrievalEngine(encoder, _Index(), _Corpus())  # type: ignore[arg-type]
    queries = [f"{i} " + "word " * 700 for i in range(128)]
    hits = engine.search(queries, 2, still_wanted=lambda: list(wanted))
    assert len(encoder.pieces) == 1 and 0 < len(encoder.pieces[0]) < 128
    assert hits == [[] for _ in queries]
    short = RetrievalEngine(_PieceEncoder(lambda: None), _Index(), _Corpus())  # type: ignore[arg-type]
    assert len(short.search([f"short query {i}" for i in range(256)], 1, still_wanted=lambda: [True] * 256)) == 256
    assert len(short.encoder.pieces) == 1  # a batch of short queries stays one forward pass


# -- cache bounded in bytes -------------------------------------------------------------------------------------


def test_the_cache_is_bounded_in_bytes_not_only_entries():
    cache: LRUCache[str] = LRUCache(1000, max_bytes=100, size_of=lambda key, value: len(value))
    for i in range(10):
        cache.put(i, "v" * 30)
    assert len(cache) == 3 and cache.bytes == 90 and cache.get(9) and cache.get(7) and cache.get(6) is None
    cache.put("huge", "v" * 101)  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get("huge") is None and len(cache) == 3


def test_topk_100_of_long_passages_stay_within_cache_mb():
    """The issue's case: 10k entries of topk 100 held 283 MB. With --cache_mb 2 the estimate stays under 2 MiB."""
    with _serve(StubEngine(passage_chars=2000), cache_mb=2.0, max_wait_ms=1) as url, httpx.Client(timeout=30) as http:
        for batch in range(10):
            body = {"queries": [f"q{batch}-{i}" for i in range(20)], "topk": 100}
            assert http.post(f"{url}/retrieve", json=body).status_code == 200
        health = _health(url)
        again = http.post(f"{url}/retrieve", json={"queries": ["q9-19"], "topk": 100})
        hits = _health(url)["stats"]["cache_hits"]
    assert 0 < health["cache_mb"] <= 2.0
    assert 0 < health["cache_entries"] < 200  # ~4 MiB were computed, about half fits
    assert again.status_code == 200 and hits == 1  # the newest entry is kept


def test_health_names_the_model_not_its_path(tmp_path: Path):
    hub = tmp_path / "hub" / "models--intfloat--e5-base-v2" / "snapshots" / "0123abc"
    hub.mkdir(parents=True)
    local = tmp_path / "my-encoder"
    local.mkdir()
    assert model_label(str(hub)) == "intfloat/e5-base-v2"
    assert model_label(str(local)) == "my-encoder"
    assert model_label("intfloat/e5-base-v2") == "intfloat/e5-base-v2"


# -- connections: the real script, under an open-file limit of 80 ------------------------------------------------

OPEN_FILES = 80
TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the server under test


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture(scope="module")
def limited_server(toy_index, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """retrieval_server.py as users start it, with ``ulimit -n 80`` and 1 s timeouts."""
    index, corpus = toy_index
    port = free_port()
    log_path = tmp_path_factory.mktemp("limited") / "server.log"
    argv = [sys.executable, str(SERVER), "--port", str(port), "--index_path", str(index), "--corpus_path", str(corpus),
            "--retriever_model", str(minilm_dir), "--header_timeout_s", str(TIMEOUT_S), "--body_timeout_s",
            str(TIMEOUT_S), "--keep_alive_timeout_s", str(TIMEOUT_S)]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_open_files)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        assert "--max_connections 1000 lowered to" in log_path.read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket, within_s: float) -> bytes:
    """What the server sends until it closes the connection, which it must do within ``within_s`` seconds."""
    sock.settimeout(within_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within_s} s; got {data[:200]!r}") from None
    return data


@pytest.mark.e2e
def test_76_idle_connections_do_not_lock_everyone_out(limited_server: str):
    """Over the cap: a JSON 503 at once, counted; under it: closed after the header timeout; and a new client's
    /health is answered within the timeout plus a few seconds."""
    before = _health(limited_server)["refused"]
    idle = [_connect(limited_server) for _ in range(76)]
    try:
        answers = [_read_all(sock, within_s=TIMEOUT_S + 5) for sock in idle]
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.TransportError):
                health = httpx.get(f"{limited_server}/health", timeout=5)
                if health.status_code == 200:
                    break
            assert time.monotonic() < deadline, "no new client was answered"
            time.sleep(0.1)
    finally:
        for sock in idle:
            sock.close()
    refused = [answer for answer in answers if answer]
    assert refused, "no connection was over the cap"
    assert all(answer.startswith(b"HTTP/1.1 503 ") and b"--max_connections" in answer for answer in refused)
    after = health.json()["refused"]
    assert after["connections"] - before["connections"] == len(refused)
    assert after["total"] - before["total"] == len(refused)  # the idle ones sent nothing: closed, not refused


@pytest.mark.e2e
def test_slow_headers_get_408_and_the_connection_is_closed(limited_server: str):
    before = _health(limited_server)["refused"]
    with _connect(limited_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        answer = _read_all(sock, within_s=TIMEOUT_S + 5)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"--header_timeout_s" in answer
    after = _health(limited_server)["refused"]
    assert after["slow_header"] - before["slow_header"] == 1


@pytest.mark.e2e
def test_a_slow_body_gets_408_and_the_connection_is_closed(limited_server: str):
    before = _health(limited_server)["refused"]
    with _connect(limited_server) as sock:
        sock.sendall(
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"queries": ['
        )
        answer = _read_all(sock, within_s=TIMEOUT_S + 5)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"--body_timeout_s" in answer
    after = _health(limited_server)["refused"]
    assert after["slow_body"] - before["slow_body"] == 1


@pytest.mark.e2e
def test_an_idle_kept_alive_connection_is_closed_and_malformed_http_is_a_counted_400(limited_server: str):
    with _connect(limited_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock, within_s=TIMEOUT_S + 5)  # the answer, then the close of the idle connection
    assert answer.startswith(b"HTTP/1.1 200 ")
    before = _health(limited_server)["refused"]
    with _connect(limited_server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert _read_all(sock, within_s=5).startswith(b"HTTP/1.1 400 ")
    after = _health(limited_server)["refused"]
    assert after["bad_http"] - before["bad_http"] == 1 and after["total"] - before["total"] == 1


def test_a_server_bound_beyond_loopback_without_a_key_says_who_can_query_it():
    import retrieval_server

    for host in ("127.0.0.1", "::1", "localhost"):
        assert retrieval_server.exposure_warning(host, None) is None
    assert retrieval_server.exposure_warning("0.0.0.0", "key") is None
    warning = retrieval_server.exposure_warning("0.0.0.0", None)
    assert warning is not None and "anyone who can reach this port" in warning and "RETRIEVER_API_KEY" in warning


class PidModel(BaseModel):
    """A request model that records which process validated it."""

    queries: list[str]
    pid: int = Field(default_factory=os.getpid)


def _gone(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` ends (or is only a zombie left for init) within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


async def test_a_large_body_is_parsed_in_a_worker_process_and_a_small_one_on_the_loop():
    """json's parser holds the GIL for the whole body: past the inline limit the parse happens in another process,
    so the event loop (and /health) never waits for it; a refused body's problem comes back the same, and closing
    the parser ends the worker."""
    parser = BodyParser(inline_max_bytes=1024)
    try:
        small = await parser.parse(json.dumps({"queries": ["a"]}).encode(), "application/json", PidModel)
        large = await parser.parse(json.dumps({"queries": ["a" * 2048]}).encode(), "application/json", PidModel)
        refused = await parser.parse(b'{"queries": [' + b"[]," * 1000 + b"[]]}", "application/json", PidModel)
    finally:
        await parser.aclose()
    assert isinstance(small, PidModel) and small.pid == os.getpid()
    assert isinstance(large, PidModel) and large.pid != os.getpid() and large.queries == ["a" * 2048]
    assert isinstance(refused, BodyProblem) and refused.kind == "invalid_fields" and refused.total == 1001
    assert _gone(large.pid, 10), "the worker outlived aclose()"


def test_the_worker_ends_with_a_server_that_was_killed():
    """A server killed outright (SIGKILL, out of memory) sends its worker no shutdown: the worker goes anyway."""
    script = (
        "import asyncio, os, signal, json\n"
        "from retriever.request_body import BodyParser\n"
        "from tests.test_retriever_hardening import PidModel\n"
        "async def main():\n"
        "    body = json.dumps({'queries': ['a' * 2048]}).encode()\n"
        "    model = await BodyParser(inline_max_bytes=1024).parse(body, 'application/json', PidModel)\n"
        "    print(model.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT / "local_dense_retriever"), str(PROJECT)])}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    worker = int(killed.stdout.split()[0])
    assert _gone(worker, 10), f"worker {worker} outlived its killed server"


def test_the_server_as_users_start_it_parses_a_large_body_in_its_worker_process(limited_server: str):
    """retrieval_server.py is the __main__ the worker process is spawned from: a 0.5 MiB body of numbers gets the
    same short 422 from there, and the server goes on answering."""
    body = json.dumps({"queries": list(range(100_000))}).encode()
    response = httpx.post(
        f"{limited_server}/retrieve", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text[:500]
    assert response.json()["errors"] == 100_000 and len(response.content) < 4096
    assert httpx.post(f"{limited_server}/retrieve", json={"queries": ["alpha"]}, timeout=30).status_code == 200
