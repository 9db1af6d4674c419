"""The test suite (a package so tests and benches import ``tests.support`` without ``sys.path`` edits)."""
