"""The README's main command, run exactly as a newcomer runs it (into a temporary folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
    assert "answer found in the top-3 passages for 100.0% of the toy questions" in result.stdout
    train = pq.read_table(tmp_path / "processed" / "train.parquet").to_pylist()
    assert len(train) == 120 and train[0]["prompt"][0]["role"] == "system"
    assert (tmp_path / "toy_Flat.index").stat().st_size > 0
