"""The mechanics behind the two launch scripts, so the scripts show only what is trained.

``run_qwen2.5-3B-it.sh`` and ``run_qwen2.5-3B-it-with-retrieval.sh`` keep the settings and slime's flags; everything
else (the Ray cluster, the job, the private files, the tmux session, health waits, cleanup) lives here, where ruff,
mypy and the tests see it. Standard library only: it runs under the ``python3`` of slime's image.
"""
