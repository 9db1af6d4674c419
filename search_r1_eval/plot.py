"""One PNG per evaluation: EM per data source, and how many searches the policy made per question."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

from search_r1_data.files import write_atomic
from search_r1_eval.report import ALL, SPECIAL


def plot_summary(table: dict[str, dict[str, Any]], records: list[dict[str, Any]], path: Path) -> Path:
    """Write the plot to ``path`` (PNG, replaced whole) and return it. Sets without a finished sample are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training node
    import matplotlib.pyplot as plt

    sources = [source for source, row in table.items() if source not in SPECIAL and row["em"] is not None]
    searches = Counter(record["searches"] for record in records)
    figure, (em_axis, search_axis) = plt.subplots(1, 2, figsize=(11, 4))
    em_axis.bar(sources, [table[s]["em"] for s in sources], color="tab:blue")
    em_axis.set_ylim(0, 1)
    em_axis.set_ylabel("exact match")
    total = table.get(ALL, {}).get("em")
    em_axis.set_title(f"EM per data source (all: {total:.3f})" if total is not None else "EM per data source")
    em_axis.tick_params(axis="x", labelrotation=30)
    counts = sorted(searches)
    search_axis.bar([str(c) for c in counts], [searches[c] for c in counts], color="tab:orange")
    search_axis.set_xlabel("searches per question")
    search_axis.set_ylabel("questions")
    search_axis.set_title("Searches per question")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    return write_atomic(path, image.getvalue())
