"""What one rollout produces: the token state to train on, how it ended, and what happened on the way.

These types are the core's own, so that callers outside slime (the evaluator, the benchmarks, a researcher's
notebook) never fake a slime ``Sample``; ``generate_with_search_oai.py`` maps them onto one.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from search_r1_oai.tool_stats import S, ToolStats, kinds

# Error messages kept per sample (the counters keep counting past it).
MAX_ERROR_MESSAGES = 8


class Outcome(Enum):
    """How a trajectory ended; the names are slime's ``Sample.Status`` names.

    COMPLETED: the assistant answered without tool calls. TRUNCATED: ``finish_reason == "length"``, the context
    budget ran out, the last allowed turn still called tools, or the trajectory's wall-clock bound passed
    (stop_reason ``deadline``: its tokens are exact but it is not trained on, since the cut is the servers'
    doing, not the policy's). ABORTED: the server aborted the turn or slime asked to stop between turns (the state
    to resume from comes with it). FAILED: the policy call failed for good, the server cannot give token ids, sent
    a value that cannot be trained on (stop_reason ``bad_server_value``), or an invariant broke.
    """

    COMPLETED = "COMPLETED"
    TRUNCATED = "TRUNCATED"
    ABORTED = "ABORTED"
    FAILED = "FAILED"


@dataclass
class Stop:
    """Why a trajectory stopped: its outcome, the stop_reason (see :mod:`search_r1_oai.errors`), the error."""

    outcome: Outcome
    reason: str
    error: str | None = None
    # False keeps even exact tokens out of training (a trajectory cut by the wall clock: the servers' doing).
    train: bool = True


@dataclass
class RolloutStats:
    """Counters of one trajectory (they continue across a resumed partial rollout).

    What a tool counts is its own :class:`~search_r1_oai.tool_stats.ToolStats` (:meth:`of`); :meth:`to_dict` puts
    every registered tool's keys beside these, so a sample's metadata is one flat dict.
    """

    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    # Calls the policy got wrong (bad JSON, unknown tool, bad arguments); a tool's own outage is not counted here.
    bad_tool_calls: int = 0
    tool_error_messages: list[str] = field(default_factory=list)
    has_final_answer: bool = False
    final_content: str = ""
    policy_latency_s: float = 0.0
    token_exact: bool = True
    drift_tokens: int = 0
    resumed: int = 0
    # Each tool's counters, by tool name (built on first use by :meth:`of`).
    tools: dict[str, ToolStats] = field(default_factory=dict)

    def of(self, kind: type[S]) -> S:
        """The counters of the tool ``kind`` belongs to (zeros until the tool records something)."""
        found = self.tools.get(kind.tool)
        if not isinstance(found, kind):
            found = self.tools[kind.tool] = kind()
        return found

    def record_tool_error(self, message: str) -> None:
        self.tool_errors += 1
        if len(self.tool_error_messages) < MAX_ERROR_MESSAGES:
            self.tool_error_messages.append(message)

    def tool_summary(self) -> dict[str, Any]:
        """Every registered tool's headline numbers (for the per-trajectory log line)."""
        return {key: value for kind in kinds() for key, value in self.seen(kind).summary().items()}

    def seen(self, kind: type[S]) -> S:
        """The tool's counters as they stand (zeros for a tool never called), without adding any."""
        found = self.tools.get(kind.tool)
        return found if isinstance(found, kind) else kind()

    def to_dict(self) -> dict[str, Any]:
        """Flat: these counters and every registered tool's (zeros for a tool never called)."""
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "tools"}
        for kind in kinds():
            values.update(self.seen(kind).to_dict())
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RolloutStats:
        """The counters from :meth:`to_dict` (unknown keys ignored, so older saved states still load)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"tools"}
        stats = cls(**{k: v for k, v in values.items() if k in names})
        for kind in kinds():
            if any(key in values for key in kind.metadata_keys()):
                stats.tools[kind.tool] = kind.from_dict(values)
        return stats


@dataclass
class RolloutResult:
    """``tokens = prompt + response``; ``loss_mask`` and ``log_probs`` cover the response only.

    ``train`` is False when the tokens are a placeholder or the trajectory failed (slime's ``remove_sample``).
    ``saved_state`` is set for ABORTED only: :meth:`Trajectory.load <search_r1_oai.trajectory.Trajectory.load>`
    resumes from it.
    """

    tokens: list[int]
    prompt_length: int
    loss_mask: list[int]
    log_probs: list[float]
    response: str
    outcome: Outcome
    stop_reason: str
    stats: RolloutStats
    error: str | None = None
    train: bool = True
    saved_state: dict[str, Any] | None = None
    # The trajectory as chat messages (prompt, assistant turns, tool results), for logs and evaluation.
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def response_length(self) -> int:
        return len(self.tokens) - self.prompt_length
