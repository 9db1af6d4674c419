"""One list of supported SGLang releases (tests/sglang_releases.txt) feeds setup, the real-server fixtures and the mock.

Why: the list lived in four places and drifted; adding a release must be one line there plus its requirements file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from search_r1_eval.policy_server import SGLANG_RELEASE
from tests.support import real_sglang, sglang_mock
from tests.support.sglang_releases import MOCK_VERSION, RELEASES, SGLANG_VERSIONS, read_releases

ROOT = Path(__file__).resolve().parent.parent
# The files that used to hold their own copy of the list.
READERS = ["scripts/setup_env.sh", "tests/support/real_sglang.py", "tests/test_sglang_mock_vs_real.py"]


def test_every_release_has_its_requirements_file_and_every_file_is_listed():
    listed = {f"requirements-sglang-{version}.txt" for version in SGLANG_VERSIONS}
    present = {path.name for path in (ROOT / "tests").glob("requirements-sglang-*.txt")}
    assert listed == present


def test_fixtures_and_mock_use_the_list(qwen_tokenizer):
    assert real_sglang.SGLANG_VERSIONS == SGLANG_VERSIONS == ("0.5.15.post1", "0.5.23")
    assert set(MOCK_VERSION.values()) <= set(sglang_mock.SUPPORTED_VERSIONS)
    for release in RELEASES:
        sglang_mock.MockSGLang(qwen_tokenizer, version=release.mock_version)  # accepted, not just listed
    assert RELEASES[0].version == SGLANG_RELEASE, "evaluate.py --model starts the first (slime's image) release"


@pytest.mark.parametrize("reader", READERS)
def test_no_other_file_spells_out_the_releases(reader: str):
    """A copy of the list names several releases on one line (a tuple, a dict, a bash array)."""
    text = (ROOT / reader).read_text()
    assert "sglang_releases" in text
    for line in text.splitlines():
        named = [v for v in SGLANG_VERSIONS if re.search(rf"(?<![\w.-]){re.escape(v)}(?![\w-])", line)]
        assert len(named) < 2, (reader, line)


def test_a_malformed_line_is_an_error_naming_it(tmp_path: Path):
    path = tmp_path / "releases.txt"
    path.write_text("# comment\n0.9.1 0.9.1  # trailing comment\n0.9.2\n")
    with pytest.raises(ValueError, match=r"releases.txt:3: expected '<release> <mock version>', got '0.9.2'"):
        read_releases(path)
    path.write_text("0.9.1 0.9.1  # trailing comment\n\n")
    assert [tuple(r) for r in read_releases(path)] == [("0.9.1", "0.9.1")]


def test_setup_env_reads_the_list_and_stops_on_a_release_without_requirements(tmp_path: Path):
    """setup_env.sh in a copy of the tree whose list names a release without requirements: one line, nothing built."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "scripts" / "setup_env.sh", tmp_path / "scripts")
    (tmp_path / "tests" / "sglang_releases.txt").write_text("# header\n0.5.15.post1 0.5.15\n9.9.9 9.9.9 # new\n")
    (tmp_path / "tests" / "requirements-sglang-0.5.15.post1.txt").write_text("")
    env = {**os.environ, "PYTHON": "/nonexistent-python"}
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"setup_env.sh: {tmp_path}/tests/sglang_releases.txt lists SGLang 9.9.9 but "
        "tests/requirements-sglang-9.9.9.txt is missing"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scripts", "tests"]
