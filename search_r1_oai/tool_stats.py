"""A tool's own per-trajectory counters, and what the rollout metrics and the evaluation report read of them.

Each tool brings one :class:`ToolStats` dataclass. Its fields are the tool's keys in a sample's metadata (flat, so
``sample.metadata["searches"]`` stays where dashboards and scripts read it), so a key belongs to one tool only:
:func:`search_r1_oai.tools.register_tool` refuses a clash. The class also says what a batch of them means
(:meth:`ToolStats.batch_metrics`, logged as ``rollout/search/<name>``), what an evaluation record keeps
(:meth:`ToolStats.record`) and which columns the evaluation table shows (:attr:`ToolStats.report_columns`).

The registry of kinds lives here, below :mod:`search_r1_oai.result`, so a trajectory's counters can be saved and
read back (:meth:`~search_r1_oai.result.RolloutStats.from_dict`) without knowing any tool by name.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="ToolStats")


@dataclass(frozen=True)
class ReportColumn:
    """One column of the evaluation table: the mean over a data source's records of ``record[field]``."""

    key: str
    header: str
    fmt: str
    field: str


@dataclass
class ToolStats:
    """Base of a tool's counters for one trajectory. Subclass it as a ``@dataclass`` whose fields all have
    defaults (a trajectory that never called the tool has them) and hold JSON values."""

    # The tool's name (its schema's function name).
    tool: ClassVar[str] = ""
    # Columns of the evaluation table, placed after the turns column.
    report_columns: ClassVar[tuple[ReportColumn, ...]] = ()

    @classmethod
    def metadata_keys(cls) -> tuple[str, ...]:
        """Its keys in a sample's metadata."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any]) -> S:
        """Its counters among ``values`` (a sample's metadata, a saved state); absent ones at their defaults."""
        return cls(**{key: values[key] for key in cls.metadata_keys() if key in values})

    @classmethod
    def batch_metrics(cls: type[S], batch: Sequence[S]) -> dict[str, float]:
        """Metrics of a batch of trajectories, flat names (the caller adds ``rollout/search/`` or the like)."""
        return {}

    def record(self) -> dict[str, Any]:
        """What an evaluation record keeps of it (the report's columns read these fields)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """The few numbers the rollout's per-trajectory log line shows."""
        return {}


_KINDS: dict[str, type[ToolStats]] = {}


def add_kind(kind: type[ToolStats]) -> None:
    """Make ``kind`` known to saving, loading and the metrics (called by the tool registry)."""
    _KINDS[kind.tool] = kind


def remove_kind(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> tuple[type[ToolStats], ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def mean(values: Sequence[float]) -> float:
    """The mean; NaN for no values."""
    return statistics.fmean(values) if values else math.nan
