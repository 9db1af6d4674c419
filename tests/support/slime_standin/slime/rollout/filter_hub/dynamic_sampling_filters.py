"""Stand-in for slime's dynamic-sampling filters (slime/rollout/filter_hub/dynamic_sampling_filters.py).

slime loads ``--dynamic-sampling-filter-path`` by its dotted path in the rollout and calls it with ``(args, group)``
for each finished group of ``n_samples_per_prompt`` samples; a false answer drops the group (counted in
``rollout/dynamic_filter/drop_<reason>``). slime's own returns a DynamicFilterOutput and needs torch; a plain bool
is what slime accepts from older filters, and all this stand-in needs: the launcher checks that the file defines the
function, and the stand-in train.py that the path resolves to something callable with slime's signature.
"""

from __future__ import annotations

from typing import Any


def check_reward_nonzero_std(args: Any, samples: list[Any], **kwargs: Any) -> bool:
    """Keep the group unless every sample got the same reward (then GRPO's advantages are all zero)."""
    rewards = [float(sample.reward) for sample in samples]
    return max(rewards) - min(rewards) > 1e-6
