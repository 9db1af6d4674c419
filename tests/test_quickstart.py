"""The README's main command, run exactly as a newcomer runs it (into a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e  # runs quickstart.sh: every step as a newcomer runs it

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_the_toy_pipeline_end_to_end(tmp_path: Path) -> None:
    # Run from another folder with a relative QUICKSTART_DIR: it means the caller's folder, not the repository.
    out_dir = tmp_path / "toy"
    result = subprocess.run(
        ["bash", str(ROOT / "quickstart.sh")],
        cwd=tmp_path,
        env={**os.environ, "QUICKSTART_DIR": "toy"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"Files in {out_dir}:" in out and not (ROOT / "toy").exists()
    # Its environment step builds .venv only (the tests' venvs are scripts/test.sh's job) and says so on screen.
    assert "[setup_env] --main-only" in out and "[setup_env] ready (.venv only)" in out
    assert "answer found in the top-3 passages for 100.0% of the toy questions" in out
    assert "preflight passed" in out and out.count("ok    ") == 5
    # One whole trajectory: messages, the tokens with the sampled ones marked, the reward.
    assert "[assistant] I will search for this." in out and "[[I will search for this." in out
    assert "--- reward 1.0 (EM 1" in out
    assert re.search(r"^toy +30 +1\.000", out, re.MULTILINE), "the EM table of the toy test split"
    assert (out_dir / "eval" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out_dir / "eval" / "results.jsonl").read_text().splitlines()) == 30
    # Only what the user needs on screen; the details are in the log.
    assert "Could not load library" not in out + result.stderr and "it/s]" not in out
    assert "Flat with 305 vectors" in (out_dir / "quickstart.log").read_text() and "Flat with" not in out
    # Every server it started is stopped.
    for url in re.findall(r"^(?:retriever|policy): (http://127\.0\.0\.1:\d+)", out, re.MULTILINE):
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    train = pq.read_table(out_dir / "processed" / "train.parquet").to_pylist()
    assert len(train) == 120 and train[0]["prompt"][0]["role"] == "system"
    assert (out_dir / "toy_Flat.index").stat().st_size > 0
