"""The evaluation table: one row per data source (and one for all), computed from the results' JSON lines only,
so a resumed or merged results file gives the same table as one uninterrupted run."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

ALL = "all"
# (key, header, format) of the table's columns, in order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n", "n", "{:d}"),
    ("em", "EM", "{:.3f}"),
    ("f1", "F1", "{:.3f}"),
    ("mean_turns", "turns", "{:.2f}"),
    ("mean_searches", "searches", "{:.2f}"),
    ("final_answer_pct", "% answer", "{:.1f}"),
    ("tool_error_rate", "tool err", "{:.3f}"),
    ("failed", "failed", "{:d}"),
)


def _row(records: list[dict[str, Any]]) -> dict[str, Any]:
    calls = sum(r.get("tool_calls", 0) for r in records)
    return {
        "n": len(records),
        "em": statistics.fmean(r["em"] for r in records),
        "f1": statistics.fmean(r["f1"] for r in records),
        "mean_turns": statistics.fmean(r["turns"] for r in records),
        "mean_searches": statistics.fmean(r["searches"] for r in records),
        "final_answer_pct": 100 * statistics.fmean(float(r["final_answer"]) for r in records),
        "tool_error_rate": sum(r["tool_errors"] for r in records) / calls if calls else 0.0,
        "failed": sum(r["status"] == "FAILED" for r in records),
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{data_source: row, ..., "all": row}`` (data sources sorted; no rows for no records)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["data_source"]].append(record)
    table = {source: _row(group) for source, group in sorted(groups.items())}
    if records:
        table[ALL] = _row(records)
    return table


def render_table(table: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """The table as aligned text, or as a markdown table."""
    headers = ["data source", *(header for _, header, _ in COLUMNS)]
    rows = [[source, *(fmt.format(row[key]) for key, _, fmt in COLUMNS)] for source, row in table.items()]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [headers, *rows]
    ]
    return "\n".join(lines) + "\n"


def write_summary(table: dict[str, dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.json`` in ``out_dir``."""
    markdown, as_json = out_dir / "summary.md", out_dir / "summary.json"
    markdown.write_text(render_table(table, markdown=True), encoding="utf-8")
    as_json.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return markdown, as_json


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], names: tuple[str, str]) -> str:
    """Two summaries side by side: EM and F1 of each, and the change, per data source."""
    sources = [s for s in dict.fromkeys([*before, *after]) if s != ALL] + [ALL]
    a, b = names
    header = (
        f"{'data source':<20}{'n':>6}{'EM ' + a:>16}{'EM ' + b:>16}{'dEM':>8}{'F1 ' + a:>16}{'F1 ' + b:>16}{'dF1':>8}"
    )
    lines = [header]
    for source in sources:
        x, y = before.get(source), after.get(source)
        if x is None or y is None:
            lines.append(f"{source:<20}  only in {'B' if x is None else 'A'}")
            continue
        lines.append(
            f"{source:<20}{y['n']:>6}{x['em']:>16.3f}{y['em']:>16.3f}{y['em'] - x['em']:>+8.3f}"
            f"{x['f1']:>16.3f}{y['f1']:>16.3f}{y['f1'] - x['f1']:>+8.3f}"
        )
    return "\n".join(lines) + "\n"
