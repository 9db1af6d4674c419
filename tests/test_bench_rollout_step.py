"""``python -m bench.rollout_step`` runs one small step through the real rollout core, the scripted policy and both
retriever designs, prints the table, and leaves no server behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
DEADLINE_S = 240


def _children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.e2e
def test_rollout_step_prints_the_three_designs_and_stops_its_servers() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [sys.executable, "-m", "bench.rollout_step", "--prompts", "2", "--samples", "2", "--time-scale", "1"]
    proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None and time.monotonic() < deadline:
        children |= _children_of(proc.pid)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "2 prompts x 2 samples" in output
    for row in ("generation alone", "batched retriever", "per-request"):
        assert any(line.startswith(row) for line in output.splitlines()), output
    assert "per-request step / batched step:" in output
    assert "policy model alone, same calls" in output
    assert len(children) >= 3, "the policy and both retrievers run in their own processes"
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "a server outlived the benchmark"


def test_bad_numbers_stop_with_a_one_line_error() -> None:
    argv = [sys.executable, "-m", "bench.rollout_step", "--decode-total-tps", "0"]
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--decode-total-tps must be > 0" in done.stderr
