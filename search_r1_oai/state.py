"""The state of one trajectory in progress: what an aborted rollout saves and a resumed one loads.

slime's partial rollout hands an ABORTED sample back later with its tokens, loss mask and logprobs; everything else
the loop needs to carry on (the chat messages, where an unfinished turn started, how ids are obtained, the
counters) travels in :meth:`RolloutState.to_saved`, a JSON-able dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search_r1_oai.result import RolloutStats
from search_r1_oai.trajectory import Trajectory, TrajectoryError


@dataclass
class RolloutState:
    """Messages and token state of one trajectory; ``trajectory`` is ``None`` until the first turn returned."""

    messages: list[dict[str, Any]]
    prompt_messages: int
    trajectory: Trajectory | None = None
    # Start of a turn the server aborted: its resumed generation belongs to the same turn.
    pending_turn_start: int | None = None
    # Ids re-encoded from text (servers without token ids, SEARCH_R1_ALLOW_REENCODE_FALLBACK=1).
    reencoded: bool = False
    stats: RolloutStats = field(default_factory=RolloutStats)
    # Response text built turn by turn (decoding the whole response at the end costs O(length) again).
    response_parts: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, messages: list[dict[str, Any]]) -> RolloutState:
        """A fresh trajectory from the prompt messages (the OpenAI messages list)."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError(
                "the prompt must be the OpenAI messages list (do not pass --apply-chat-template to slime); "
                f"got {type(messages).__name__}"
            )
        return cls(messages=[dict(m) for m in messages], prompt_messages=len(messages))

    @property
    def prompt(self) -> list[dict[str, Any]]:
        return self.messages[: self.prompt_messages]

    def to_saved(self) -> dict[str, Any] | None:
        """What :meth:`from_saved` needs besides the token arrays (``None`` before the first turn: nothing to
        resume, the next attempt starts over)."""
        if self.trajectory is None:
            return None
        return {
            "prompt_length": self.trajectory.prompt_length,
            "messages": self.messages,
            "prompt_messages": self.prompt_messages,
            "pending_turn_start": self.pending_turn_start,
            "fallback": self.reencoded,
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_saved(
        cls,
        saved: dict[str, Any],
        *,
        tokens: list[int],
        loss_mask: list[int] | None,
        log_probs: list[float] | None,
        response_length: int,
        response: str,
    ) -> RolloutState:
        """Resume from :meth:`to_saved` plus the token arrays slime kept (its loss mask may have been zeroed since).

        Raises ``ValueError`` (or :class:`TrajectoryError`) when the saved state does not fit the tokens.
        """
        try:
            prompt_length = int(saved["prompt_length"])
            state = cls(
                messages=[dict(m) for m in saved["messages"]],
                prompt_messages=int(saved["prompt_messages"]),
                pending_turn_start=saved.get("pending_turn_start"),
                reencoded=bool(saved.get("fallback", False)),
                stats=RolloutStats.from_dict(saved.get("stats") or {}),
                response_parts=[response or ""],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"saved rollout state is incomplete: {exc!r}") from None
        tokens = list(tokens or [])
        if prompt_length <= 0 or len(tokens) - prompt_length != response_length:
            raise TrajectoryError(
                f"saved state does not match the sample: {len(tokens)} tokens, prompt {prompt_length}, "
                f"response_length {response_length}"
            )
        state.trajectory = Trajectory(
            tokens=tokens,
            prompt_length=prompt_length,
            loss_mask=list(loss_mask or []),
            log_probs=list(log_probs or []),
        )
        state.trajectory.validate()
        state.stats.resumed += 1
        return state
