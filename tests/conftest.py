"""Session fixtures shared by the whole suite: offline tokenizer, encoder, toy corpus, free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from search_r1_data.toy import ToyFact, write_toy_corpus
from tests.support import offline_assets
from tests.support.live_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# The real components the tests run (sglang-router's binary, a CPU Ray): scripts/setup_env.sh builds this venv.
REAL_VENV = Path(os.environ.get("REAL_VENV") or ROOT / ".venv-real")

# The suite must never reach a model hub; every asset is built from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_venv() -> Path:
    """The virtual environment holding the real router and Ray (tests/requirements-real.txt)."""
    if not (REAL_VENV / "bin" / "python").exists():
        pytest.fail(f"{REAL_VENV} is missing: run bash scripts/setup_env.sh (or set REAL_VENV)")
    return REAL_VENV


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """Directory of the offline Qwen2.5-Instruct tokenizer (with its tool-calling chat template)."""
    return offline_assets.qwen25_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BertModel, 384-d): stands in for E5 on CPU, same loading path."""
    return offline_assets.minilm_encoder_dir()


@pytest.fixture(scope="session")
def toy_corpus_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(corpus.jsonl, facts.jsonl)`` of the deterministic toy corpus."""
    return write_toy_corpus(tmp_path_factory.mktemp("toy_corpus"))


@pytest.fixture(scope="session")
def toy_facts(toy_corpus_files: tuple[Path, Path]) -> list[ToyFact]:
    import json

    return [ToyFact(**json.loads(line)) for line in toy_corpus_files[1].read_text().splitlines()]


@pytest.fixture(scope="module")
def retriever():
    """A fake retriever (``tests/support/fake_retriever.py``) served on 127.0.0.1 for the module; ``.url`` is its address."""
    from tests.support.fake_retriever import FakeRetriever, serve_fake_retriever

    fake = FakeRetriever()
    with serve_fake_retriever(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def toy_index(tmp_path_factory: pytest.TempPathFactory, toy_corpus_files, minilm_dir: Path) -> tuple[Path, Path]:
    """``(index, corpus)``: the toy corpus encoded with MiniLM under the e5 conventions (built once per session)."""
    import build_index

    out = tmp_path_factory.mktemp("toy_index")
    corpus = out / "corpus.jsonl"
    corpus.write_bytes(toy_corpus_files[0].read_bytes())
    index = out / "minilm_Flat.index"
    argv = ["--corpus_path", str(corpus), "--retriever_model", str(minilm_dir), "--index_path", str(index)]
    assert build_index.main([*argv, "--device", "cpu"]) == 0
    return index, corpus


@pytest.fixture(scope="session")
def real_sglang_servers(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_dir: Path, qwen_tokenizer):
    """SGLang's real serving code per release with a scripted engine (tests/support/real_sglang.py), started on first use
    and stopped at the end of the session."""
    from tests.support.real_sglang import RealSGLangPool

    pool = RealSGLangPool(tmp_path_factory.mktemp("real_sglang"), qwen_tokenizer_dir, qwen_tokenizer)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def mock(qwen_tokenizer):
    """The SGLang mock speaking 0.5.15's chat protocol, served on 127.0.0.1 for the module; ``.url`` is its address.
    Each test scripts its own questions. A module that needs other releases defines its own ``mock``."""
    from tests.support.sglang_mock import MockSGLang, serve_mock_sglang

    mock = MockSGLang(qwen_tokenizer, version="0.5.15")
    with serve_mock_sglang(mock) as url:
        mock.url = url
        yield mock


@pytest.fixture
async def close_rollout_contexts():
    """Closes the rollout contexts a test's samples opened (their HTTP connections belong to the test's loop). A
    module asks for it with ``pytestmark = pytest.mark.usefixtures("close_rollout_contexts")``."""
    yield
    from tests.support.rollout_helpers import close_contexts

    await close_contexts()
