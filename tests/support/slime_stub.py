"""A small stand-in for slime's ``Sample`` (slime/utils/types.py) and ``GenerateState``, for tests without slime.

Only the fields this project touches, with slime's names, defaults and the nested ``Sample.Status`` enum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass
class Sample:
    """Mirrors slime's ``Sample`` fields used by the rollout and the reward."""

    group_index: int | None = None
    index: int | None = None
    prompt: str | list[dict[str, str]] = ""
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    label: Any = None
    reward: float | dict[str, Any] | None = None
    loss_mask: list[int] | None = None
    rollout_log_probs: list[float] | None = None
    remove_sample: bool = False

    class Status(Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    status: Status = Status.PENDING
    metadata: dict = field(default_factory=dict)
    session_id: str | None = None


class GenerateState:
    """Process-wide singleton like slime's (``SingletonMeta``): the first ``GenerateState(args)`` wins."""

    _instance: GenerateState | None = None
    tokenizer: Any = None

    def __new__(cls, args: Any) -> GenerateState:
        if cls._instance is None:
            instance = super().__new__(cls)
            instance.args = args
            instance.tokenizer = args.stub_tokenizer
            instance.aborted = False
            cls._instance = instance
        return cls._instance

    @classmethod
    def reset_singleton(cls) -> None:
        cls._instance = None
