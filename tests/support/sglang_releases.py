"""The supported SGLang releases, read from ``tests/sglang_releases.txt`` (the one list; setup_env.sh reads it too).

Why a text file: bash (``scripts/setup_env.sh``) and Python (the real-server fixtures, the mock, the mock-vs-real
diff) need the same list, and adding a release must be one line there plus its requirements file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

RELEASES_FILE = Path(__file__).resolve().parents[1] / "sglang_releases.txt"


class Release(NamedTuple):
    version: str  # as pip spells it: tests/requirements-sglang-<version>.txt, .venv-sglang-<version>
    mock_version: str  # the sglang_mock version that behaves like it


def read_releases(path: Path = RELEASES_FILE) -> tuple[Release, ...]:
    """The releases in file order; a line that is not ``<version> <mock version>`` is an error naming it."""
    releases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected '<release> <mock version>', got {line!r}")
        releases.append(Release(*fields))
    if not releases:
        raise ValueError(f"{path} lists no SGLang release")
    return tuple(releases)


RELEASES = read_releases()
SGLANG_VERSIONS = tuple(release.version for release in RELEASES)
# The mock version that claims to behave like each real release.
MOCK_VERSION = {release.version: release.mock_version for release in RELEASES}
