"""One PNG per evaluation: EM per data source, and how many searches the policy made per question."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from search_r1_eval.report import ALL


def plot_summary(table: dict[str, dict[str, Any]], records: list[dict[str, Any]], path: Path) -> Path:
    """Write the plot to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training node
    import matplotlib.pyplot as plt

    sources = [source for source in table if source != ALL]
    searches = Counter(record["searches"] for record in records)
    figure, (em_axis, search_axis) = plt.subplots(1, 2, figsize=(11, 4))
    em_axis.bar(sources, [table[s]["em"] for s in sources], color="tab:blue")
    em_axis.set_ylim(0, 1)
    em_axis.set_ylabel("exact match")
    em_axis.set_title(f"EM per data source (all: {table[ALL]['em']:.3f})" if ALL in table else "EM per data source")
    em_axis.tick_params(axis="x", labelrotation=30)
    counts = sorted(searches)
    search_axis.bar([str(c) for c in counts], [searches[c] for c in counts], color="tab:orange")
    search_axis.set_xlabel("searches per question")
    search_axis.set_ylabel("questions")
    search_axis.set_title("Searches per question")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path
