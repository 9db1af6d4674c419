"""The scripted servers' logprob: shared by the SGLang mock and the scripted engine inside real SGLang.

Dependency-free on purpose: it is imported both by the test process and by the engine process running in an SGLang
test environment, so the two servers report identical logprobs for identical scripts.
"""

from __future__ import annotations


def mock_logprob(token_id: int, position: int) -> float:
    """Deterministic, position-dependent, always negative logprob of ``token_id`` sampled at ``position``.

    ``position`` is the absolute index in the sequence (``len(prompt_ids) + i``), so a client that attaches a
    logprob to the wrong token or the wrong turn gets a different number.
    """
    return -(1 + (token_id * 7919 + position * 104729) % 4999) / 1024.0
