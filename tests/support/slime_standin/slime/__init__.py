"""Stand-in for slime's package: only what the launcher tests rely on (see utils/arguments.py)."""
