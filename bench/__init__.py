"""Benchmarks; run each from the project root as ``.venv/bin/python -m bench.<name>`` (imports need no path edits)."""
