"""The rollout's side of the retriever's bearer token, against the real retriever app (uvicorn on a free port) that
was started with a key (``RETRIEVER_API_KEY``, which its CLI hands to ``create_app(api_key=...)``).

What a user relies on: with ``RETRIEVER_API_KEY`` / ``retriever_api_key`` set, searches pass; without it, or with
the wrong one, the policy reads one clear tool error that names the setting, the key is never retried (a 401
stays a 401) and never appears in the message, the log detail, or a printed Settings.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import httpx
import pytest

from retriever.api import create_app
from retriever.settings import Settings as RetrieverSettings
from search_r1_oai.config import ConfigError, Settings, load_settings, main, slime_config
from search_r1_oai.httpclients import aclose_clients
from tests.support.live_server import serve_app
from tests.test_search_client_inprocess import StubEngine, client_for, passage

KEY = "retriever-key-5d1e0b"


@contextlib.contextmanager
def serve_with_key(engine: StubEngine) -> Iterator[str]:
    settings = RetrieverSettings(index_path="unused.index", corpus_path="unused.jsonl", topk=3, max_wait_ms=1.0)
    app = create_app(settings, load_engine=lambda: engine, api_key=KEY)
    with serve_app(app, name="retriever", lifespan="on") as url:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the retriever app did not load its stub engine within 10 s"
            time.sleep(0.005)
        yield url


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await aclose_clients()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[StubEngine, str]]:
    engine = StubEngine()
    with serve_with_key(engine) as url:
        yield engine, url


async def test_the_key_from_the_settings_opens_the_retriever(served: tuple[StubEngine, str]) -> None:
    url = served[1]
    result = await client_for(url, topk=2, retriever_api_key=KEY).retrieve(["who wrote dune"])
    assert result.passages == [[passage("who wrote dune", i) for i in range(2)]]


@pytest.mark.parametrize("key", [None, "not-the-key"], ids=["no key", "wrong key"])
async def test_a_refused_key_is_one_clear_tool_error_and_never_retried(
    served: tuple[StubEngine, str], key: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    engine, url = served
    engine.calls.clear()
    client = client_for(url, retrieval_retries=3, retriever_api_key=key)

    with pytest.raises(Exception) as raised:
        await client.retrieve([f"capital of peru {key}"])

    error = raised.value
    assert str(error) == (
        "retriever failed after 1 attempt(s): the retriever refused the key (HTTP 401): set RETRIEVER_API_KEY /"
        " retriever_api_key to the key the retriever was started with"
    )
    assert getattr(error, "attempts", None) == 1 and engine.calls == []
    if key:
        assert key not in str(error) and key not in getattr(error, "detail", "") and key not in caplog.text


def test_the_key_is_read_from_the_environment_and_from_the_slime_config() -> None:
    assert load_settings(env={"RETRIEVER_API_KEY": KEY}).retriever_api_key == KEY
    assert load_settings(SimpleNamespace(retriever_api_key=KEY), {}).retriever_api_key == KEY
    assert load_settings(env={}).retriever_api_key is None
    # The run script puts the variable into the private slime config, where the workers read it from args.
    assert slime_config({"RETRIEVER_API_KEY": KEY})["retriever_api_key"] == KEY


def test_the_key_is_never_printed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert KEY not in repr(Settings(retriever_api_key=KEY))
    with pytest.raises(ConfigError) as bad:
        load_settings(SimpleNamespace(retriever_api_key=12345), {})
    assert "12345" not in str(bad.value) and "retriever_api_key=***" in str(bad.value)

    monkeypatch.setenv("RETRIEVER_API_KEY", KEY)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-in-env")
    for argv in (["--markdown"], ["--help-text"], ["--yaml"], ["--slime-config"], ["--value", "RETRIEVER_API_KEY"]):
        main(argv)
    out = capsys.readouterr()
    assert KEY not in out.out + out.err and "wandb-key-in-env" not in out.out + out.err
    assert '"retriever_api_key": "***"' in out.out and '"wandb_key": "***"' in out.out
    assert "RETRIEVER_API_KEY is a secret" in out.err
