"""search_r1_oai.redact_output: the filter the launcher runs slime's train.py under, so that the secrets of the
private slime config, which slime and Megatron print, reach neither Ray's log files nor ``ray job logs``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_r1_oai.redact_output import Redactor

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wandb-0123456789abcdef"


@pytest.mark.parametrize("size", [1, 2, 5, 7, 64])
def test_a_secret_split_across_chunks_is_masked_and_nothing_else_changes(size: int) -> None:
    text = f"Argument wandb_key is already set to None, will override with {SECRET}.\nkey={SECRET}{SECRET}\ntail wand"
    redactor = Redactor([SECRET, "short"])
    data = text.encode()
    out = b"".join(redactor.feed(data[i : i + size]) for i in range(0, len(data), size)) + redactor.flush()
    assert out.decode() == text.replace(SECRET, "***")


def test_complete_lines_pass_at_once() -> None:
    """A line is never held back waiting for more output: `ray job logs --follow` shows it as it comes."""
    redactor = Redactor([SECRET])
    assert redactor.feed(b"step 1 done\n") == b"step 1 done\n"


def run_filtered(tmp_path: Path, script: str, **popen: object) -> subprocess.Popen:
    config = tmp_path / "slime_config.yaml"
    config.write_text(f'{{"wandb_key": "{SECRET}", "retriever_api_key": "r-{SECRET}", "search_r1_topk": 3}}\n')
    command = [sys.executable, "-m", "search_r1_oai.redact_output", str(config), "--", sys.executable, "-c", script]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_the_commands_output_is_masked_and_its_exit_code_kept(tmp_path: Path) -> None:
    script = f"import sys; print('key {SECRET} and r-{SECRET}'); print('err', file=sys.stderr); sys.exit(3)"
    process = run_filtered(tmp_path, script)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 3
    assert sorted(out.decode().splitlines()) == ["err", "key *** and ***"]


def test_term_reaches_the_command_and_what_it_prints_while_stopping_is_masked(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (print('stopping {SECRET}', flush=True), sys.exit(143)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = run_filtered(tmp_path, script)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert time.monotonic() - started < 30
    assert process.returncode == 143 and out == b"stopping ***\n"
