"""What one rollout produces: the token state to train on, how it ended, and what happened on the way.

These types are the core's own, so that callers outside slime (the evaluator, the benchmarks, a researcher's
notebook) never fake a slime ``Sample``; ``generate_with_search_oai.py`` maps them onto one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

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
class RolloutStats:
    """Counters of one trajectory (they continue across a resumed partial rollout)."""

    turns: int = 0
    searches: int = 0
    search_queries: int = 0
    # The distinct queries of each /retrieve call, in order (for evaluation and trajectory logs).
    queries: list[str] = field(default_factory=list)
    # One entry per /retrieve call: attempts it took, and the replica that answered ("" when none did).
    search_attempts: list[int] = field(default_factory=list)
    search_replicas: list[str] = field(default_factory=list)
    # Failed /retrieve calls with the addresses tried (for operators; the policy's tool message names none).
    search_errors: list[str] = field(default_factory=list)
    # Seconds each /retrieve call took (successful ones), for latency percentiles.
    search_latencies_s: list[float] = field(default_factory=list)
    tool_calls: int = 0
    tool_errors: int = 0
    # Calls the policy got wrong (bad JSON, unknown tool, no query); a retriever outage is not counted here.
    bad_tool_calls: int = 0
    tool_error_messages: list[str] = field(default_factory=list)
    has_final_answer: bool = False
    final_content: str = ""
    retrieval_latency_s: float = 0.0
    policy_latency_s: float = 0.0
    token_exact: bool = True
    drift_tokens: int = 0
    resumed: int = 0

    def record_tool_error(self, message: str) -> None:
        self.tool_errors += 1
        if len(self.tool_error_messages) < MAX_ERROR_MESSAGES:
            self.tool_error_messages.append(message)

    def record_search_error(self, detail: str) -> None:
        if len(self.search_errors) < MAX_ERROR_MESSAGES:
            self.search_errors.append(detail)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RolloutStats:
        """The counters from :meth:`to_dict` (unknown keys ignored, so older saved states still load)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class RolloutResult:
    """``tokens = prompt + response``; ``loss_mask`` and ``log_probs`` cover the response only.

    ``train`` is False when the tokens are a placeholder or the trajectory failed (slime's ``remove_sample``).
    ``saved_state`` is set for ABORTED only: :meth:`RolloutState.from_saved` resumes from it.
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
