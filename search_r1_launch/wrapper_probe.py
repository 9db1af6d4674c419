"""Run by PREFLIGHT_PYTHON before anything starts: which of the modules named on the command line it lacks.

    PREFLIGHT_PYTHON search_r1_launch/wrapper_probe.py pyarrow transformers ...

Prints one JSON line, ``{"python": [3, 11, 9], "executable": "...", "missing": ["pyarrow"]}``. It looks the
modules up without importing them (fast, no side effects) and is written for any Python 3, so that an old one
still says what it is rather than failing on syntax.
"""

import importlib.util
import json
import sys


def missing(names):
    """The names of ``names`` this Python cannot find."""
    absent = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


if __name__ == "__main__":
    report = {"python": list(sys.version_info[:3]), "executable": sys.executable, "missing": missing(sys.argv[1:])}
    print(json.dumps(report))
