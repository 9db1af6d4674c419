"""slime entry points: ``--custom-generate-function-path generate_with_search_oai.generate`` and
``--custom-rm-path generate_with_search_oai.reward_func``.

The only module that imports slime; the logic lives in ``search_r1_oai`` (importable and tested without slime).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from slime.rollout.sglang_rollout import GenerateState
from slime.utils.types import Sample

from search_r1_oai import reward as _reward
from search_r1_oai.rollout import run_rollout


async def generate(
    args: Namespace, sample: Sample, sampling_params: dict[str, Any], evaluation: bool = False
) -> Sample:
    """One sample's multi-turn search rollout through the SGLang router's ``/v1/chat/completions``.

    ``evaluation`` is named so that slime passes it (it inspects the signature). Never raises.
    """
    return await run_rollout(
        sample,
        sampling_params,
        tokenizer=GenerateState(args).tokenizer,
        policy_url=f"http://{args.sglang_router_ip}:{args.sglang_router_port}",
        is_aborted=lambda: GenerateState(args).aborted,
        evaluation=evaluation,
    )


async def reward_func(args: Namespace, sample: Sample | list[Sample], **kwargs: Any) -> float | list[float]:
    """Search-R1 exact-match reward with format score; a list of samples gives a list of rewards in order."""
    return await _reward.reward_func(args, sample, **kwargs)
