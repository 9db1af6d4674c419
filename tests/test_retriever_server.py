"""The retrieval server over real HTTP on 127.0.0.1.

A subprocess started exactly as users start it (``python local_dense_retriever/retrieval_server.py ...``)
serves the toy corpus indexed with MiniLM: answers, shapes, bad input, concurrency, health. Cases that need
control over the engine (hold loading, inject a failure) run the same app in-process under uvicorn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from retriever.api import create_app
from retriever.engine import RetrievalEngine
from retriever.settings import Settings
from tests.support.live_server import free_port, serve_app

PROJECT = Path(__file__).resolve().parent.parent
SERVER = PROJECT / "local_dense_retriever" / "retrieval_server.py"
START_TIMEOUT_S = 90


class ServerProcess:
    """retrieval_server.py in a subprocess; its log goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), *args],
            cwd=PROJECT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.health_codes: list[int] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            self.health_codes.append(response.status_code)
            if response.status_code == 200:
                return response.json()
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


@pytest.fixture(scope="module")
def server(toy_index, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    index, corpus = toy_index
    args = ["--index_path", str(index), "--corpus_path", str(corpus), "--retriever_model", str(minilm_dir)]
    limits = ["--max_queries", "200", "--max_query_chars", "1000", "--max_body_mb", "1", "--max_wait_ms", "10"]
    process = ServerProcess([*args, *limits], tmp_path_factory.mktemp("server_log") / "server.log")
    try:
        process.health = process.wait_ready()
        yield process
    finally:
        process.stop()


def _retrieve(server: ServerProcess, body: object, **kwargs) -> httpx.Response:
    """POST ``body`` as JSON; ``bytes`` are sent as they are (JSON that httpx itself could not encode)."""
    if isinstance(body, bytes):
        return httpx.post(
            f"{server.url}/retrieve", content=body, headers={"content-type": "application/json"}, timeout=60, **kwargs
        )
    return httpx.post(f"{server.url}/retrieve", json=body, timeout=60, **kwargs)


@pytest.mark.e2e
def test_fact_passage_is_in_top3_for_every_toy_question(server: ServerProcess, toy_facts):
    response = _retrieve(server, {"queries": [fact.question for fact in toy_facts]})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert len(result) == len(toy_facts)
    missed = [
        f.question for f, docs in zip(toy_facts, result, strict=True) if f.passage_id not in {d["id"] for d in docs}
    ]
    assert not missed, f"fact passage not in top 3 for {len(missed)} questions, e.g. {missed[:3]}"


@pytest.mark.e2e
def test_health_reports_index_model_and_queue(server: ServerProcess, minilm_dir: Path, toy_corpus_files):
    assert set(server.health_codes) <= {200, 503} and server.health_codes[-1] == 200
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["index_size"] == len(toy_corpus_files[0].read_text().splitlines())
    assert health["model"] == minilm_dir.name  # the model's name, not where it lies on this host
    assert str(minilm_dir.parent) not in httpx.get(f"{server.url}/health", timeout=10).text
    assert health["queue_depth"] == 0 and health["uptime_s"] > 0
    assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200
    assert "/retrieve" in httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]


# Where the pages name their assets: src/href attributes, ReDoc's spec-url, Swagger UI's ``url: '...'``.
_ASSET_URL = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")


@pytest.mark.e2e
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server_itself(server: ServerProcess, page: str):
    """A GPU node without internet still gets a working /docs: no CDN URL, and every asset is served here."""
    html = httpx.get(f"{server.url}{page}", timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert "http://" not in html.text and "https://" not in html.text and "//cdn" not in html.text
    urls = {a or b for a, b in _ASSET_URL.findall(html.text)}
    scripts = {url for url in urls if url.endswith(".js")}
    assert scripts and "/openapi.json" in urls, urls
    for url in sorted(urls):
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(f"{server.url}{url}", timeout=10)
        assert asset.status_code == 200, (url, asset.status_code)
        assert len(asset.content) > 100, url
    for script in scripts:
        assert "javascript" in httpx.get(f"{server.url}{script}", timeout=10).headers["content-type"], script


@pytest.mark.e2e
def test_documents_have_the_wiki18_shape(server: ServerProcess, toy_facts):
    fact = toy_facts[0]
    response = _retrieve(server, {"queries": [fact.question, toy_facts[1].question], "topk": 2})
    result = response.json()["result"]
    assert [len(docs) for docs in result] == [2, 2]
    for doc in result[0] + result[1]:
        assert set(doc) == {"id", "contents", "title", "text"}
        assert doc["contents"] == f'"{doc["title"]}"\n{doc["text"]}'
        assert not doc["title"].startswith('"')
    top = next(doc for doc in result[0] if doc["id"] == fact.passage_id)
    assert top["title"] == fact.title and fact.answer in top["text"]


@pytest.mark.e2e
def test_default_topk_is_3_and_topk_100_is_allowed(server: ServerProcess, toy_facts):
    assert [len(d) for d in _retrieve(server, {"queries": [toy_facts[2].question]}).json()["result"]] == [3]
    assert [len(d) for d in _retrieve(server, {"queries": ["x"], "topk": 100}).json()["result"]] == [100]


@pytest.mark.e2e
def test_return_scores_wraps_documents_with_descending_scores(server: ServerProcess, toy_facts):
    question = toy_facts[3].question
    plain = _retrieve(server, {"queries": [question], "topk": 3, "return_scores": False}).json()["result"][0]
    scored = _retrieve(server, {"queries": [question], "topk": 3, "return_scores": True}).json()["result"][0]
    assert all(set(item) == {"document", "score"} and isinstance(item["score"], float) for item in scored)
    assert [item["document"] for item in scored] == plain
    scores = [item["score"] for item in scored]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0 + 1e-5


BAD_BODIES = {
    "empty-queries": ({"queries": []}, "queries", 422),
    "queries-not-a-list": ({"queries": "who wrote x"}, "valid list", 422),
    "queries-missing": ({"topk": 3}, "queries: Field required", 422),
    "non-string-item": ({"queries": ["ok", 7]}, "queries.1: Input should be a valid string", 422),
    "null-item": ({"queries": [None]}, "queries.0", 422),
    "too-many-queries": ({"queries": ["q"] * 201}, "too many queries: 201 > 200", 422),
    "topk-zero": ({"queries": ["q"], "topk": 0}, "topk", 422),
    "topk-over-100": ({"queries": ["q"], "topk": 101}, "topk", 422),
    "topk-string": ({"queries": ["q"], "topk": "3"}, "topk", 422),
    "topk-bool": ({"queries": ["q"], "topk": True}, "topk", 422),
    "return-scores-string": ({"queries": ["q"], "return_scores": "yes"}, "return_scores", 422),
    "query-over-cap": ({"queries": ["ok", "x" * 1001]}, "queries[1] has 1001 characters; the limit is 1000", 422),
    # Valid JSON, but the escape decodes to a lone surrogate that no tokenizer can take: it must not reach the worker.
    "lone-surrogate": (b'{"queries": ["ok", "a \\ud800 b"]}', "queries[1] is not valid Unicode", 422),
    "body-not-an-object": ([["q"]], "valid dictionary", 422),
    "body-over-limit": ({"queries": ["x" * 999] * 1100}, "request body too large", 413),
}
# The /health "refused" counter each bad body moves.
REFUSAL_KIND = {
    "empty-queries": "invalid_fields",
    "queries-not-a-list": "invalid_fields",
    "queries-missing": "invalid_fields",
    "non-string-item": "invalid_fields",
    "null-item": "invalid_fields",
    "too-many-queries": "too_many_queries",
    "topk-zero": "invalid_fields",
    "topk-over-100": "invalid_fields",
    "topk-string": "invalid_fields",
    "topk-bool": "invalid_fields",
    "return-scores-string": "invalid_fields",
    "query-over-cap": "query_too_long",
    "lone-surrogate": "invalid_unicode",
    "body-not-an-object": "invalid_fields",
    "body-over-limit": "body_too_large",
}


def _refused(url: str) -> dict[str, int]:
    """The /health counters of refused requests (in the 200 and the 503 body alike)."""
    return httpx.get(f"{url}/health", timeout=10).json()["refused"]


def _assert_one_more(before: dict[str, int], after: dict[str, int], kind: str) -> None:
    """Exactly ``kind`` and the total moved, by one."""
    expected = dict(before, total=before["total"] + 1, **{kind: before[kind] + 1})
    assert after == expected, (kind, before, after)


@pytest.mark.parametrize("name", list(BAD_BODIES))
@pytest.mark.e2e
def test_bad_input_gets_4xx_naming_the_problem_and_the_server_keeps_serving(
    server: ServerProcess, toy_facts, name: str
):
    body, expected_message, expected_status = BAD_BODIES[name]
    before = _refused(server.url)
    response = _retrieve(server, body)
    assert response.status_code == expected_status, response.text
    payload = response.json()
    message = payload.get("message") or payload["detail"]
    assert expected_message in message, payload
    good = _retrieve(server, {"queries": [toy_facts[4].question]})
    assert good.status_code == 200 and toy_facts[4].passage_id in {d["id"] for d in good.json()["result"][0]}
    _assert_one_more(before, _refused(server.url), REFUSAL_KIND[name])


def test_every_bad_body_has_a_refusal_counter():
    assert set(REFUSAL_KIND) == set(BAD_BODIES)


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b'{"queries": ["a"]', "\udcff".encode("utf-8", "surrogatepass")], ids=repr
)
@pytest.mark.e2e
def test_invalid_json_gets_422_and_the_server_keeps_serving(server: ServerProcess, raw: bytes):
    before = _refused(server.url)
    response = httpx.post(
        f"{server.url}/retrieve", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert "JSON" in response.json()["message"] or "body: Field required" in response.json()["message"]
    assert _retrieve(server, {"queries": ["still alive?"]}).status_code == 200
    _assert_one_more(before, _refused(server.url), "invalid_json")


@pytest.mark.e2e
def test_json_sent_without_a_json_content_type_gets_422_that_says_so(server: ServerProcess):
    before = _refused(server.url)
    response = httpx.post(f"{server.url}/retrieve", content=b'{"queries": ["x"]}', timeout=30)  # no content-type
    assert response.status_code == 422, response.text
    assert "content-type: application/json" in response.json()["message"]
    _assert_one_more(before, _refused(server.url), "wrong_content_type")
    assert _retrieve(server, {"queries": ["still alive?"]}).status_code == 200


@pytest.mark.e2e
def test_chunked_body_over_the_limit_gets_413(server: ServerProcess):
    def chunks() -> Iterator[bytes]:
        yield b'{"queries": ["'
        for _ in range(300):  # 1.2 MiB > --max_body_mb 1, sent without a Content-Length
            yield b"y" * 4096
        yield b'"]}'

    before = _refused(server.url)
    response = httpx.post(
        f"{server.url}/retrieve", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "request body too large" in response.json()["detail"]
    assert _retrieve(server, {"queries": ["still alive?"]}).status_code == 200
    _assert_one_more(before, _refused(server.url), "body_too_large")


@pytest.mark.e2e
async def test_concurrent_clients_each_get_their_own_results_in_order(server: ServerProcess, toy_facts):
    clients = 50
    before = httpx.get(f"{server.url}/health", timeout=10).json()["stats"]

    async def client(number: int, http: httpx.AsyncClient) -> None:
        mine = [toy_facts[(number * 3 + i) % len(toy_facts)] for i in range(3)]
        response = await http.post("/retrieve", json={"queries": [f.question for f in mine], "topk": 3})
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert len(result) == 3
        for fact, docs in zip(mine, result, strict=True):
            assert fact.passage_id in {doc["id"] for doc in docs}, (number, fact.question)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        await asyncio.wait_for(asyncio.gather(*(client(n, http) for n in range(clients))), timeout=120)

    after = httpx.get(f"{server.url}/health", timeout=10).json()["stats"]
    assert after["requests"] - before["requests"] == clients
    # 150 queries, 150 distinct: every one is answered by a search or by the cache, never twice.
    searched = after["searched"] - before["searched"]
    answered_elsewhere = (after["cache_hits"] - before["cache_hits"]) + (after["coalesced"] - before["coalesced"])
    assert searched + answered_elsewhere == clients * 3
    assert after["batches"] - before["batches"] < clients  # requests were batched together


@pytest.mark.e2e
def test_repeated_queries_are_served_from_the_cache(server: ServerProcess):
    body = {"queries": ["a query nobody asked before", "a query nobody asked before"], "topk": 2}
    before = httpx.get(f"{server.url}/health", timeout=10).json()["stats"]
    first = _retrieve(server, body).json()
    second = _retrieve(server, body).json()
    after = httpx.get(f"{server.url}/health", timeout=10).json()["stats"]
    assert first == second and first["result"][0] == first["result"][1]
    assert after["searched"] - before["searched"] == 1  # the duplicate joined, the repeat hit the cache
    assert after["coalesced"] - before["coalesced"] == 1
    assert after["cache_hits"] - before["cache_hits"] == 2


@pytest.mark.e2e
def test_second_start_reuses_the_offsets_sidecar(server: ServerProcess, toy_index):
    _, corpus = toy_index
    sidecar = corpus.with_name(corpus.name + ".offsets.npy")
    assert sidecar.exists()  # written by build_index before the server started
    assert "reusing line offsets" in server.log()


@pytest.mark.e2e
def test_faiss_gpu_without_gpus_stops_the_server_with_a_clear_error(toy_index, minilm_dir: Path, tmp_path: Path):
    index, corpus = toy_index
    args = ["--index_path", str(index), "--corpus_path", str(corpus), "--retriever_model", str(minilm_dir)]
    process = ServerProcess([*args, "--faiss_gpu"], tmp_path / "gpu.log")
    try:
        assert process.wait_exit(timeout=START_TIMEOUT_S) == 1
    finally:
        process.stop()
    assert "--faiss_gpu needs a GPU build of FAISS" in process.log()


@pytest.mark.e2e
def test_torch_backend_server_answers_like_the_faiss_server(
    server: ServerProcess, toy_index, minilm_dir: Path, toy_facts, tmp_path: Path
):
    """Same request, same response shape, same passages (ties aside) and scores within float32 rounding."""
    index, corpus = toy_index
    args = ["--index_path", str(index), "--corpus_path", str(corpus), "--retriever_model", str(minilm_dir)]
    torch_server = ServerProcess([*args, "--backend", "torch"], tmp_path / "torch.log")
    try:
        torch_server.wait_ready()
        body = {"queries": [fact.question for fact in toy_facts], "topk": 3, "return_scores": True}
        got = _retrieve(torch_server, body).json()["result"]
        want = _retrieve(server, body).json()["result"]
    finally:
        torch_server.stop()
    assert (
        "torch backend memory plan" in torch_server.log() and "IndexFlatIP (torch float32 on cpu)" in torch_server.log()
    )
    for fact, got_hits, want_hits in zip(toy_facts, got, want, strict=True):
        want_scores = [hit["score"] for hit in want_hits]
        assert [hit["score"] for hit in got_hits] == pytest.approx(want_scores, abs=1e-4), fact.question
        if all(high - low > 1e-4 for high, low in itertools.pairwise(want_scores)):  # no near-ties in the top 3
            assert [hit["document"] for hit in got_hits] == [hit["document"] for hit in want_hits], fact.question


@pytest.mark.e2e
def test_torch_backend_flags_are_documented_and_faiss_gpu_is_refused_with_it(tmp_path: Path):
    index, corpus = tmp_path / "i.index", tmp_path / "c.jsonl"
    index.touch()
    corpus.touch()
    base = [sys.executable, str(SERVER), "--index_path", str(index), "--corpus_path", str(corpus)]
    refused = subprocess.run(
        [*base, "--backend", "torch", "--faiss_gpu"], capture_output=True, text=True, timeout=60, cwd=PROJECT
    )
    assert refused.returncode == 2 and "--faiss_gpu is for --backend faiss" in refused.stderr
    zero = subprocess.run([*base, "--torch_memory_gb", "0"], capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert zero.returncode == 2 and "--torch_memory_gb: must be > 0, got 0" in zero.stderr
    help_text = subprocess.run(
        [sys.executable, str(SERVER), "--help"], capture_output=True, text=True, timeout=60, cwd=PROJECT
    ).stdout
    for flag in ("--backend {faiss,torch}", "--torch_dtype", "--torch_memory_gb", "--torch_chunk_rows"):
        assert flag in help_text


@pytest.mark.e2e
def test_cli_rejects_missing_files_and_help_lists_every_flag(tmp_path: Path):
    missing = subprocess.run(
        [sys.executable, str(SERVER), "--index_path", str(tmp_path / "no.index"), "--corpus_path", "x",
         "--retriever_model", "m"],
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
    )  # fmt: skip
    assert missing.returncode == 2 and "--index_path" in missing.stderr and "is not a file" in missing.stderr
    index, corpus = tmp_path / "i.index", tmp_path / "c.jsonl"  # present, so only the numeric flag is wrong
    index.touch()
    corpus.touch()
    for bad, message in ((["--cache_size", "-1"], "--cache_size: must be >= 0, got -1"),
                         (["--max_wait_ms", "-5"], "--max_wait_ms: must be >= 0, got -5"),
                         (["--max_body_mb", "0"], "--max_body_mb: must be > 0, got 0"),
                         (["--port", "70000"], "--port: must be <= 65535, got 70000")):  # fmt: skip
        refused = subprocess.run(
            [sys.executable, str(SERVER), "--index_path", str(index), "--corpus_path", str(corpus),
             "--retriever_model", "m", *bad],
            capture_output=True, text=True, timeout=60, cwd=PROJECT,
        )  # fmt: skip
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    help_text = subprocess.run(
        [sys.executable, str(SERVER), "--help"], capture_output=True, text=True, timeout=60, cwd=PROJECT
    ).stdout
    for flag in ("--index_path", "--corpus_path", "--topk", "--retriever_name", "--retriever_model", "--port",
                 "--host", "--faiss_gpu", "--fp16", "--batching", "--max_batch_size", "--max_wait_ms",
                 "--cache_size", "--max_queries", "--max_query_chars", "--max_pending", "--max_body_mb"):  # fmt: skip
        assert flag in help_text


def test_every_settings_field_is_a_flag_with_its_help_and_defaults_round_trip(tmp_path: Path):
    """The CLI is generated from the Settings fields: each one is a flag that --help explains, and parsing no
    optional flag gives the dataclass's defaults."""
    import retrieval_server

    parser = retrieval_server.build_parser()
    help_text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(Settings):
        assert f"--{f.name}" in help_text
        assert " ".join(f.metadata["flag"].help.split("%(default)s")[0].split()) in help_text, f.name
    index, corpus = tmp_path / "i.index", tmp_path / "c.jsonl"
    index.touch()
    corpus.touch()
    parsed = retrieval_server.settings_from_args(
        parser.parse_args(["--index_path", str(index), "--corpus_path", str(corpus)])
    )
    assert parsed == Settings(index_path=str(index), corpus_path=str(corpus))
    changed = retrieval_server.settings_from_args(
        parser.parse_args(
            ["--index_path", str(index), "--corpus_path", str(corpus), "--batching", "off", "--fp16", "--topk", "9",
             "--torch_memory_gb", "1.5", "--log_level", "debug", "--access_log"]
        )
    )  # fmt: skip
    assert (changed.batching, changed.fp16, changed.topk, changed.torch_memory_gb) == (False, True, 9, 1.5)
    assert (changed.log_level, changed.access_log) == ("debug", True)


# -- in-process: control over loading and failures -------------------------------------------------------


@pytest.fixture(scope="module")
def toy_engine(toy_index, minilm_dir: Path) -> RetrievalEngine:
    index, corpus = toy_index
    return RetrievalEngine.load(
        Settings(index_path=str(index), corpus_path=str(corpus), retriever_model=str(minilm_dir), retriever_name="e5")
    )


def serve_in_process(settings: Settings, load_engine: Callable) -> AbstractContextManager[str]:
    """The real app, startup hook included (it starts loading the engine in the background)."""
    return serve_app(create_app(settings, load_engine=load_engine), name="retriever", lifespan="on")


def _settings(toy_index) -> Settings:
    index, corpus = toy_index
    return Settings(index_path=str(index), corpus_path=str(corpus), retriever_model="minilm")


def _wait_health(url: str, status: int) -> dict:
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{url}/health", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response.json()
        time.sleep(0.02)


@pytest.mark.e2e
def test_health_is_503_until_the_engine_is_loaded(toy_index, toy_engine: RetrievalEngine, toy_facts):
    gate = threading.Event()

    def slow_load() -> RetrievalEngine:
        assert gate.wait(30)
        return toy_engine

    with serve_in_process(_settings(toy_index), slow_load) as url:
        loading = httpx.get(f"{url}/health", timeout=10)
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert loading.json()["refused"]["total"] == 0
        early = httpx.post(f"{url}/retrieve", json={"queries": ["x"]}, timeout=10)
        assert early.status_code == 503 and "not ready" in early.json()["detail"]
        # A bad request is refused as such even while loading: retrying it after a 503 would be pointless.
        bad = httpx.post(f"{url}/retrieve", json={"queries": ["x"] * 513}, timeout=10)
        assert bad.status_code == 422 and "too many queries" in bad.json()["detail"]
        still_loading = httpx.get(f"{url}/health", timeout=10)
        assert still_loading.status_code == 503
        refused = still_loading.json()["refused"]
        assert (refused["not_ready"], refused["too_many_queries"], refused["total"]) == (1, 1, 2)
        gate.set()
        ready = _wait_health(url, 200)
        assert ready["index_size"] == toy_engine.size
        assert ready["refused"] == refused, "the counts of the loading phase carry over"
        ok = httpx.post(f"{url}/retrieve", json={"queries": [toy_facts[0].question]}, timeout=30)
        assert toy_facts[0].passage_id in {d["id"] for d in ok.json()["result"][0]}
        assert _refused(url) == refused


@pytest.mark.e2e
def test_failed_load_is_reported_by_health(toy_index):
    def broken_load() -> RetrievalEngine:
        raise OSError("disk on fire")

    with serve_in_process(_settings(toy_index), broken_load) as url:
        health = _wait_health(url, 503)
        deadline = time.monotonic() + 10
        while health["status"] == "loading" and time.monotonic() < deadline:
            health = _wait_health(url, 503)
        assert health["status"] == "failed" and "disk on fire" in health["error"]


class FailingEngine:
    """The real engine, except that a batch containing the trigger query raises inside the worker."""

    TRIGGER = "please explode"

    def __init__(self, engine: RetrievalEngine):
        self.engine = engine
        self.size = engine.size
        self.model_name = engine.model_name

    def search(self, queries: list[str], k: int):
        if self.TRIGGER in queries:
            raise RuntimeError("injected failure in the worker")
        return self.engine.search(queries, k)


@pytest.mark.e2e
def test_an_internal_failure_fails_only_that_batch(toy_index, toy_engine: RetrievalEngine, toy_facts):
    with serve_in_process(_settings(toy_index), lambda: FailingEngine(toy_engine)) as url:
        _wait_health(url, 200)
        failed = httpx.post(f"{url}/retrieve", json={"queries": [FailingEngine.TRIGGER]}, timeout=30)
        assert failed.status_code == 500
        assert "injected failure in the worker" in failed.json()["detail"]
        ok = httpx.post(f"{url}/retrieve", json={"queries": [toy_facts[5].question]}, timeout=30)
        assert ok.status_code == 200 and toy_facts[5].passage_id in {d["id"] for d in ok.json()["result"][0]}
        stats = _wait_health(url, 200)["stats"]
        assert stats["failed_batches"] == 1 and stats["batches"] == 2


class GatedEngine:
    """The real engine, except that every search waits for the test to open the gate (a busy worker)."""

    def __init__(self, engine: RetrievalEngine, gate: threading.Event):
        self.engine = engine
        self.gate = gate
        self.size = engine.size
        self.model_name = engine.model_name

    def search(self, queries: list[str], k: int):
        assert self.gate.wait(30), "the test never opened the gate"
        return self.engine.search(queries, k)


@pytest.mark.e2e
async def test_overload_503s_are_counted_and_the_server_recovers(toy_index, toy_engine: RetrievalEngine, toy_facts):
    """--max_pending 2: while two queries are being searched, a third is refused with 503 and counted."""
    gate = threading.Event()
    settings = dataclasses.replace(_settings(toy_index), max_pending=2)
    with serve_in_process(settings, lambda: GatedEngine(toy_engine, gate)) as url:
        _wait_health(url, 200)
        questions = [fact.question for fact in toy_facts[:2]]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            busy = asyncio.create_task(http.post("/retrieve", json={"queries": questions}))
            try:
                for _ in range(3000):  # until the two queries are in the worker (at most 30 s)
                    if (await http.get("/health")).json()["queue_depth"] == 2:
                        break
                    await asyncio.sleep(0.01)
                refused = await http.post("/retrieve", json={"queries": ["one too many"]})
                assert refused.status_code == 503 and "already waiting" in refused.json()["detail"]
                assert (await http.get("/health")).json()["refused"]["overloaded"] == 1
            finally:
                gate.set()
                answered = await asyncio.wait_for(busy, timeout=30)
            assert answered.status_code == 200
            again = await http.post("/retrieve", json={"queries": ["one too many"]})
            assert again.status_code == 200
            counts = (await http.get("/health")).json()["refused"]
    assert counts["overloaded"] == 1 and counts["total"] == 1
