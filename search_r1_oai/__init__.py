"""Search-R1 rollout logic for slime, importable and testable without slime installed."""
