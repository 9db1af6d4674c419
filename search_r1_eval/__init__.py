"""Evaluation of a policy with the training rollout core: runner, report, plot, and a scripted plumbing-check policy."""
