"""README's "What is where" names every module of the packages, the support code and the benches, so a new module
cannot land without a line saying what it is for."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTED_FOLDERS = ("search_r1_oai", "search_r1_data", "search_r1_eval", "search_r1_launch", "tests/support", "bench")


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## What is where\n(.*?)^## ", text, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '## What is where' section"
    return match.group(1)


def test_what_is_where_names_every_module() -> None:
    named = set(re.findall(r"[\w.]+\.py\b", _section()))
    modules = {path.name for folder in LISTED_FOLDERS for path in (ROOT / folder).glob("*.py")}
    modules |= {path.name for path in ROOT.glob("*.py")}
    missing = sorted(name for name in modules - named if name != "__init__.py")
    assert not missing, f"README 'What is where' does not name: {missing}"
