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
    result = subprocess.run(
        ["bash", str(ROOT / "quickstart.sh")],
        env={**os.environ, "QUICKSTART_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "answer found in the top-3 passages for 100.0% of the toy questions" in out
    assert "preflight passed" in out and out.count("ok    ") == 5
    # One whole trajectory: messages, the tokens with the sampled ones marked, the reward.
    assert "[assistant] I will search for this." in out and "[[I will search for this." in out
    assert "--- reward 1.0 (EM 1" in out
    assert re.search(r"^toy +30 +1\.000", out, re.MULTILINE), "the EM table of the toy test split"
    assert (tmp_path / "eval" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "eval" / "results.jsonl").read_text().splitlines()) == 30
    # Only what the user needs on screen; the details are in the log.
    assert "Could not load library" not in out + result.stderr and "it/s]" not in out
    assert "Flat with 305 vectors" in (tmp_path / "quickstart.log").read_text() and "Flat with" not in out
    # Every server it started is stopped.
    for url in re.findall(r"^(?:retriever|policy): (http://127\.0\.0\.1:\d+)", out, re.MULTILINE):
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    train = pq.read_table(tmp_path / "processed" / "train.parquet").to_pylist()
    assert len(train) == 120 and train[0]["prompt"][0]["role"] == "system"
    assert (tmp_path / "toy_Flat.index").stat().st_size > 0
