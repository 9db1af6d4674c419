"""The core's exceptions, in one tree, each class carrying the ``stop_reason`` a trajectory ends with.

::

    RolloutError                 a trajectory cannot go on        stop_reason
    ├── PolicyError              the policy call failed for good  policy_error
    │   ├── BadServerValue       a value that must not be trained bad_server_value
    │   └── RouteError           no route returns token ids       capability
    ├── CapabilityError          the server cannot do token-exact capability
    ├── TemplateError            the chat template is not usable  capability
    ├── PromptError              the sample's prompt or tools     bad_prompt
    │                            cannot be rolled out
    └── TrajectoryError          a token invariant broke          invariant
    ToolError                    a tool call failed: it becomes a tool message, the trajectory goes on
    └── SearchError              the retriever could not answer

The rollout loop maps any :class:`RolloutError` to its outcome by ``exc.stop_reason`` instead of case by case, so
a new failure is one subclass here. Anything else that escapes is a bug: stop_reason ``internal_error``.
"""

from __future__ import annotations


class RolloutError(RuntimeError):
    """A trajectory cannot go on; it ends FAILED with :attr:`stop_reason`."""

    stop_reason = "internal_error"


class PolicyError(RolloutError):
    """The policy call failed for good (non-retryable 4xx, or retries exhausted, or a malformed reply)."""

    stop_reason = "policy_error"


class BadServerValue(PolicyError):
    """The policy server sent a value that must not become training data (see :mod:`search_r1_oai.server_values`);
    the message names the field, the position and the value."""

    stop_reason = "bad_server_value"


class RouteError(PolicyError):
    """No path to the policy returns the token ids a token-exact rollout needs; the message says what was tried."""

    stop_reason = "capability"


class CapabilityError(RolloutError):
    """The policy server cannot give what a token-exact rollout needs."""

    stop_reason = "capability"


class TemplateError(RolloutError):
    """The chat template cannot be extended turn by turn (no end-of-turn token, or not append-only)."""

    stop_reason = "capability"


class PromptError(RolloutError):
    """The sample's prompt is not an OpenAI messages list, or its tools are not OpenAI function schemas."""

    stop_reason = "bad_prompt"


class TrajectoryError(RolloutError):
    """The token state broke an invariant (server prompt not our prefix, lengths out of step)."""

    stop_reason = "invariant"


class ToolError(RuntimeError):
    """A tool call failed; the policy gets the reason as the tool message and the trajectory goes on."""
