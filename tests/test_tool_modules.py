"""SEARCH_R1_TOOL_MODULES: a researcher's own tool reaches a real run with one file and one setting. The module is
imported by every rollout context (so by slime's rollout process) and by the preflight, which also checks that every
tool the data offers is registered. Runs in fresh Python processes: a registration lasts as long as its process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search_r1_oai.config import ConfigError, load_settings
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from search_r1_oai.tools import import_tool_modules, registered_tools
from tests.support.calc_tool import CALC_SCHEMA

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = """
from search_r1_oai.tools import register_tool
from tests.support.calc_tool import CALC

register_tool(CALC)
"""


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A folder holding the user's tool module, ``my_tools.py``, as it would sit in the project root."""
    (tmp_path / "my_tools.py").write_text(USER_MODULE)
    return tmp_path


def _python(code_or_module: list[str], user_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SEARCH_R1_")}
    environ |= {"PYTHONPATH": f"{user_dir}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, *code_or_module], cwd=user_dir, env=environ, capture_output=True, text=True, timeout=120
    )


def test_the_setting_reads_module_names_from_the_environment_and_the_slime_config() -> None:
    assert load_settings(None, {}).tool_modules == ()
    assert load_settings(None, {"SEARCH_R1_TOOL_MODULES": " my_tools, lab.tools.calc ,"}).tool_modules == (
        "my_tools",
        "lab.tools.calc",
    )
    args = type("Args", (), {"search_r1_tool_modules": ["my_tools"]})()
    assert load_settings(args, {}).tool_modules == ("my_tools",)
    with pytest.raises(ConfigError, match=r"'my-tools.py' is not a module name"):
        load_settings(None, {"SEARCH_R1_TOOL_MODULES": "my-tools.py"})
    with pytest.raises(ConfigError, match="names no module"):
        load_settings(None, {"SEARCH_R1_TOOL_MODULES": ","})


def test_a_module_that_cannot_be_imported_is_named_with_what_to_do() -> None:
    before = registered_tools()
    with pytest.raises(ConfigError, match=r"'no_such_tool_module_4711', which cannot be imported \(ModuleNotFound"):
        import_tool_modules(["no_such_tool_module_4711"])
    assert registered_tools() == before


def test_a_rollout_context_builds_the_tools_of_the_named_modules(user_dir: Path) -> None:
    code = (
        "import asyncio\n"
        "from search_r1_oai.config import load_settings\n"
        "from search_r1_oai.context import RolloutContext\n"
        "from search_r1_oai.tool_stats import kinds\n"
        "context = RolloutContext(load_settings(), None, 'http://127.0.0.1:9')\n"
        "print(sorted(context.tools), sorted(kind.tool for kind in kinds()))\n"
        "asyncio.run(context.aclose())\n"
    )
    plain = _python(["-c", code], user_dir)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "['search'] ['search']"
    named = _python(["-c", code], user_dir, SEARCH_R1_TOOL_MODULES="my_tools")
    assert named.returncode == 0, named.stderr
    assert named.stdout.strip() == "['calc', 'search'] ['calc', 'search']", "built, and its counters registered"


def test_the_preflight_fails_data_that_offers_an_unregistered_tool(user_dir: Path) -> None:
    row = {
        "prompt": build_messages("What is two plus three?"),
        "tools": json.dumps([SEARCH_TOOL, CALC_SCHEMA]),
        "reward_model": {"ground_truth": {"target": ["5"]}, "style": "rule"},
        "data_source": "nq",
        "metadata": {"question": "What is two plus three?", "split": "train", "index": 0, "data_source": "nq"},
    }
    data = user_dir / "train.parquet"
    pq.write_table(pa.Table.from_pylist([row]), data)
    argv = ["-m", "search_r1_oai.preflight", "--data", str(data)]

    missing = _python(argv, user_dir)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "FAIL  tools: the data offers calc, which no registered tool answers (registered: search)" in missing.stdout
    assert "add the module that registers it to SEARCH_R1_TOOL_MODULES" in missing.stdout

    named = _python(argv, user_dir, SEARCH_R1_TOOL_MODULES="my_tools")
    assert named.returncode == 0, named.stdout + named.stderr
    assert "ok    tools: registered: calc, search; the data offers: search, calc" in named.stdout

    broken = _python(argv, user_dir, SEARCH_R1_TOOL_MODULES="my_tool")
    assert broken.returncode == 1
    assert "FAIL  tools: SEARCH_R1_TOOL_MODULES names 'my_tool', which cannot be imported" in broken.stdout
