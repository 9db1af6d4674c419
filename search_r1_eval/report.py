"""The evaluation table: one row per data source, ``all`` (the mean over samples) and, with two sets or more,
``avg`` (the mean over sets, what the papers report), computed from the results' JSON lines only, so a resumed
run gives the same table as one uninterrupted run.

EM, F1 and cover-EM are over the finished samples; the ``failed`` column counts the samples whose last attempt
failed (they are not in ``n`` and are run again on resume).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from search_r1_data.files import write_atomic
from search_r1_oai.reward import cover_exact_match
from search_r1_oai.text import clean_text
from search_r1_oai.tool_stats import ReportColumn
from search_r1_oai.tools import counter_kinds

ALL = "all"
AVG = "avg"
SPECIAL = (AVG, ALL)
# (key, header, format) of the table's own columns; each registered tool's go between the two parts (the search
# tool's: mean searches per question).
HEAD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n", "n", "{:d}"),
    ("em", "EM", "{:.3f}"),
    ("f1", "F1", "{:.3f}"),
    ("cover_em", "cover-EM", "{:.3f}"),
    ("mean_turns", "turns", "{:.2f}"),
)
TAIL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("final_answer_pct", "% answer", "{:.1f}"),
    ("tool_error_rate", "tool err", "{:.3f}"),
    ("failed", "failed", "{:d}"),
)
SCORES = ("em", "f1", "cover_em")
SUMMARY_FILES = ("summary.md", "summary.json", "summary.png")

# Search-R1 paper (Jin et al. 2025, Table 2), Qwen2.5-3B-Instruct trained with Search-R1: EM per set and the mean
# over the seven sets (../shared/docs/anchors.md). Keys are the data_source names of search_r1_data/eval_sets.py.
PAPER_ROW = "Search-R1 paper, Qwen2.5-3B-Instruct"
PAPER_EM = {
    "nq": 0.341,
    "triviaqa": 0.545,
    "popqa": 0.378,
    "hotpotqa": 0.324,
    "2wikimultihopqa": 0.319,
    "musique": 0.103,
    "bamboogle": 0.264,
}
PAPER_AVG = 0.325
PAPER_NOTE = (
    "for reference only: our prompts use OpenAI tool calls, not the paper's <search>/<information> tags, and the "
    "sample counts may differ, so the numbers are comparable only roughly"
)


def _tool_columns() -> list[ReportColumn]:
    return [column for kind in counter_kinds() for column in kind.report_columns]


def columns() -> tuple[tuple[str, str, str], ...]:
    """(key, header, format) of the table's columns, in order, with every registered tool's."""
    return HEAD_COLUMNS + tuple((c.key, c.header, c.fmt) for c in _tool_columns()) + TAIL_COLUMNS


def _cover_em(record: dict[str, Any]) -> float:
    """A record's cover-EM; records from before the column are scored from their answer and gold."""
    if isinstance(record.get("cover_em"), int | float):
        return float(record["cover_em"])
    answer, gold = record.get("answer"), record.get("gold")
    if not isinstance(answer, str) or not isinstance(gold, list):
        return 0.0
    return float(cover_exact_match(answer, [str(g) for g in gold]))


def _row(records: list[dict[str, Any]], failed: int) -> dict[str, Any]:
    if not records:
        return {key: 0 if key == "n" else None for key, _, _ in columns()} | {"failed": failed}
    calls = sum(r.get("tool_calls", 0) for r in records)
    return {
        "n": len(records),
        "em": statistics.fmean(r["em"] for r in records),
        "f1": statistics.fmean(r["f1"] for r in records),
        "cover_em": statistics.fmean(_cover_em(r) for r in records),
        "mean_turns": statistics.fmean(r["turns"] for r in records),
        # A record from before a tool was added has none of its calls.
        **{c.key: statistics.fmean(r.get(c.field, 0) for r in records) for c in _tool_columns()},
        "final_answer_pct": 100 * statistics.fmean(float(r["final_answer"]) for r in records),
        "tool_error_rate": sum(r["tool_errors"] for r in records) / calls if calls else 0.0,
        "failed": failed,
    }


def summarize(
    records: list[dict[str, Any]], failures: list[dict[str, Any]] | tuple[()] = ()
) -> dict[str, dict[str, Any]]:
    """``{data_source: row, ..., "avg": row, "all": row}``: data sources sorted; ``avg`` (the mean of EM, F1 and
    cover-EM over the sets that have finished samples) only with two such sets or more; no rows for nothing.
    ``records`` are finished samples, ``failures`` the latest failed attempt of each sample not finished."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for record in records:
        groups[record["data_source"]].append(record)
    for record in failures:
        failed[record["data_source"]] += 1
    sources = sorted(set(groups) | set(failed))
    table = {source: _row(groups[source], failed[source]) for source in sources}
    scored = [table[source] for source in sources if table[source]["n"]]
    if len(scored) >= 2:
        table[AVG] = {key: None for key, _, _ in columns()} | {
            "n": sum(row["n"] for row in scored),
            "failed": sum(failed.values()),
            "sets": len(scored),
            **{key: statistics.fmean(row[key] for row in scored) for key in SCORES},
        }
    if sources:
        table[ALL] = _row(records, sum(failed.values()))
    return table


def notes(table: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader of the table must know: what the means are over, and the failed samples left out."""
    lines: list[str] = []
    total = table.get(ALL)
    if total is None:
        return lines
    if total["failed"]:
        lines.append(
            f"EM, F1 and cover-EM are over the {total['n']} finished sample(s) only: {total['failed']} failed "
            "sample(s) are left out (not scored as wrong); run the same command to retry them"
        )
    if AVG in table:
        lines.append(f"all: mean over samples; avg: mean over the {table[AVG]['sets']} sets (what papers report)")
    lines.append("cover-EM: a gold answer contained in the answer (both normalised), as Search-R1 reports it")
    return lines


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [headers, *rows]
    ]
    return "\n".join(lines) + "\n"


def render_table(table: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """The table as aligned text, or as a markdown table."""
    shown = columns()
    headers = ["data source", *(header for _, header, _ in shown)]
    rows = [[clean_text(source), *(_cell(row.get(key), fmt) for key, _, fmt in shown)] for source, row in table.items()]
    return _render(headers, rows, markdown)


def reference(table: dict[str, dict[str, Any]], markdown: bool = False) -> str | None:
    """The paper's row beside ours when every evaluated set is one of the seven benchmarks, else ``None``. The
    ``avg`` compares like with like: both means are over the sets evaluated here."""
    sources = [source for source, row in table.items() if source not in SPECIAL and row["n"]]
    if not sources or any(source not in PAPER_EM for source in sources):
        return None
    rows = [
        [source, str(table[source]["n"]), f"{table[source]['em']:.3f}", f"{PAPER_EM[source]:.3f}"] for source in sources
    ]
    if len(sources) >= 2:
        ours = statistics.fmean(table[source]["em"] for source in sources)
        paper = PAPER_AVG if len(sources) == len(PAPER_EM) else statistics.fmean(PAPER_EM[s] for s in sources)
        label = "avg" if len(sources) == len(PAPER_EM) else f"avg of these {len(sources)}"
        rows.append([label, str(sum(table[s]["n"] for s in sources)), f"{ours:.3f}", f"{paper:.3f}"])
    title = f"EM beside the {PAPER_ROW} row ({PAPER_NOTE}):"
    return (
        title
        + "\n"
        + ("\n" if markdown else "")
        + _render(["data source", "n", "EM (ours)", "EM (paper)"], rows, markdown)
    )


def render_summary(table: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """The table, its notes and (for the seven benchmarks) the paper's row: what the screen and summary.md show."""
    text = render_table(table, markdown)
    lines = notes(table)
    if lines:
        text += ("\n" if markdown else "") + "".join(("- " if markdown else "") + line + "\n" for line in lines)
    ref = reference(table, markdown)
    if ref:
        text += "\n" + ref
    return text


def write_summary(table: dict[str, dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.json`` in ``out_dir``, each replaced whole (never seen half written)."""
    markdown, as_json = out_dir / "summary.md", out_dir / "summary.json"
    write_atomic(markdown, render_summary(table, markdown=True).encode("utf-8"))
    write_atomic(as_json, clean_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return markdown, as_json


class NotASummary(ValueError):
    """A file given to ``--compare`` is not an evaluate.py ``summary.json``; the message names it."""


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))


def check_summary(summary: Any, name: str) -> dict[str, dict[str, Any]]:
    """``summary`` if it has the shape of a ``summary.json`` (rows with ``n``, ``em``, ``f1``), else raises
    :class:`NotASummary`."""
    hint = "pass the summary.json that evaluate.py wrote into --out"
    if not isinstance(summary, dict) or not summary:
        raise NotASummary(f"{name} is not an evaluate.py summary (a JSON object of rows per data source); {hint}")
    for source, row in summary.items():
        if not isinstance(row, dict) or not {"n", "em", "f1"} <= set(row):
            raise NotASummary(f"{name}: entry {source!r} is not a summary row with n, EM and F1; {hint}")
        if not isinstance(row["n"], int) or not all(_number(row[key]) for key in ("em", "f1")):
            raise NotASummary(f"{name}: entry {source!r} has a non-numeric n, EM or F1; {hint}")
    return summary


def coverage_warnings(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """Why the two sides may not be comparable: sets only on one side, or a set with different sample counts."""
    a = {s for s in before if s not in SPECIAL}
    b = {s for s in after if s not in SPECIAL}
    warnings = []
    if a - b:
        warnings.append(f"sets only in A: {', '.join(sorted(a - b))}")
    if b - a:
        warnings.append(f"sets only in B: {', '.join(sorted(b - a))}")
    counts = [f"{s} ({before[s]['n']} vs {after[s]['n']})" for s in sorted(a & b) if before[s]["n"] != after[s]["n"]]
    if counts:
        warnings.append("different sample counts: " + ", ".join(counts))
    if warnings:
        return [
            "warning: A and B cover different samples, so their all/avg rows are not comparable: " + "; ".join(warnings)
        ]
    return []


def _score(value: Any) -> str:
    return f"{value:>8.3f}" if value is not None else f"{'-':>8}"


def _delta(x: Any, y: Any) -> str:
    return f"{y - x:>+8.3f}" if x is not None and y is not None else f"{'-':>8}"


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], names: tuple[str, str]) -> str:
    """Two summaries side by side: each side's n, EM and F1, and the change, per data source."""
    special = [s for s in SPECIAL if s in before or s in after]
    sources = [s for s in dict.fromkeys([*before, *after]) if s not in SPECIAL] + special
    a, b = names
    header = (
        f"{'data source':<20}{'n ' + a:>8}{'n ' + b:>8}{'EM ' + a:>8}{'EM ' + b:>8}{'dEM':>8}"
        f"{'F1 ' + a:>8}{'F1 ' + b:>8}{'dF1':>8}"
    )
    lines = [header]
    for source in sources:
        x, y = before.get(source), after.get(source)
        label = clean_text(source)
        if x is None or y is None:
            lines.append(f"{label:<20}  only in {'B' if x is None else 'A'}")
            continue
        lines.append(
            f"{label:<20}{x['n']:>8}{y['n']:>8}{_score(x['em'])}{_score(y['em'])}{_delta(x['em'], y['em'])}"
            f"{_score(x['f1'])}{_score(y['f1'])}{_delta(x['f1'], y['f1'])}"
        )
    return "\n".join(lines) + "\n"
