"""A small stand-in for slime's ``Sample`` (slime/utils/types.py) and ``GenerateState``, for tests without slime.

Only the fields this project touches, with slime's names, defaults and the nested ``Sample.Status`` enum; also
slime's rollout-manager control flow around the log functions and its logger (:func:`install_slime_logging`).
"""

from __future__ import annotations

import importlib
import statistics
import sys
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest


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

    def get_reward_value(self, args: Any) -> Any:
        """slime's: the reward, or its ``args.reward_key`` entry when the reward is a dict."""
        key = getattr(args, "reward_key", None)
        return self.reward[key] if key and isinstance(self.reward, dict) else self.reward


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


# ---- slime's rollout-side logging: the order and arguments of the custom log calls -------------------------------
# Mirrors slime (commit 624b824a8): slime/rollout/sglang_rollout.py generate_rollout_async (the dynamic filter and
# its drop counts), slime/rollout/filter_hub/ (DynamicFilterOutput, MetricGatherer, check_reward_nonzero_std),
# slime/ray/rollout.py RolloutManager.generate/eval, slime/observability/rollout_metrics.py log_rollout_data and
# log_eval_rollout_data. Only the control flow and the dicts; slime's own metric computations are left out.


def load_function(path: str) -> Any:
    """slime.utils.misc.load_function: ``module.attr``."""
    module_path, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_path), attr)


@dataclass
class DynamicFilterOutput:
    """slime.rollout.filter_hub.base_types.DynamicFilterOutput."""

    keep: bool
    reason: str | None = None
    keep_when_insufficient: bool = False


def check_reward_nonzero_std(args: Any, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """slime's zero-std filter (filter_hub/dynamic_sampling_filters.py) without torch: keep a group whose rewards
    have a (sample) standard deviation above 1e-6; drop reason ``zero_std_<first reward rounded to 0.1>``."""
    rewards = [sample.get_reward_value(args) for sample in samples]
    keep = len(rewards) > 1 and statistics.stdev(rewards) > 1e-6  # torch's std of one value is NaN: not kept
    return DynamicFilterOutput(keep=keep, reason=None if keep else f"zero_std_{round(rewards[0], 1)}")


class RolloutManagerStandIn:
    """slime's rollout manager, the part that calls the custom log functions: ``generate`` filters the finished
    groups as generate_rollout_async does, counts the drops as MetricGatherer does, flattens the kept groups and
    calls log_rollout_data; ``eval`` calls log_eval_rollout_data. What slime would log goes to ``logged``."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.logged: list[tuple[dict[str, Any], str]] = []

    def generate(self, rollout_id: int, groups: list[list[Sample]], rollout_time: float = 1.0) -> list[Sample]:
        args = self.args
        path = getattr(args, "dynamic_sampling_filter_path", None)
        dynamic_filter = load_function(path) if path is not None else None
        target = getattr(args, "rollout_batch_size", len(groups))
        remaining = len(groups)  # every group was submitted (over-sampling)
        drops: dict[str, int] = defaultdict(int)
        data: list[list[Sample]] = []
        for group in groups:
            if len(data) >= target:
                break
            output = DynamicFilterOutput(keep=True) if dynamic_filter is None else dynamic_filter(args, group)
            if not isinstance(output, DynamicFilterOutput):
                output = DynamicFilterOutput(keep=output)
            drop = not output.keep and not (output.keep_when_insufficient and remaining <= target)
            if drop:
                if output.reason:
                    drops[output.reason] += 1
                remaining -= 1
                continue
            data.append(group)
        metrics = {f"rollout/dynamic_filter/drop_{reason}": count for reason, count in drops.items()}
        samples = [sample for group in data for sample in group]
        self.log_rollout_data(rollout_id, samples, metrics, rollout_time)
        return samples

    def log_rollout_data(
        self, rollout_id: int, samples: list[Sample], rollout_extra_metrics: dict | None, rollout_time: float
    ) -> None:
        args = self.args
        if getattr(args, "custom_rollout_log_function_path", None) is not None:
            custom_log_func = load_function(args.custom_rollout_log_function_path)
            if custom_log_func(rollout_id, args, samples, rollout_extra_metrics, rollout_time):
                return
        log_dict = {**(rollout_extra_metrics or {})}
        log_dict["rollout/truncated_ratio"] = sum(s.status == Sample.Status.TRUNCATED for s in samples) / len(samples)
        log_dict["rollout/step"] = rollout_id  # compute_rollout_step without --wandb-always-use-train-step
        self.logged.append((log_dict, "rollout/step"))

    def eval(self, rollout_id: int, data: dict[str, dict[str, Any]], metrics: dict[str, Any] | None = None) -> None:
        args = self.args
        if getattr(args, "custom_eval_rollout_log_function_path", None) is not None:
            custom_log_func = load_function(args.custom_eval_rollout_log_function_path)
            if custom_log_func(rollout_id, args, data, metrics):
                return
        log_dict = metrics or {}
        for key in data:
            rewards = data[key]["rewards"]
            log_dict[f"eval/{key}"] = sum(rewards) / len(rewards)
        log_dict["eval/step"] = rollout_id
        self.logged.append((log_dict, "eval/step"))


def install_slime_logging(
    monkeypatch: pytest.MonkeyPatch, step_of: Callable[[int], int] = lambda rollout_id: rollout_id
) -> list[tuple[dict, str]]:
    """slime.observability's ``log`` and ``compute_rollout_step`` (in ``sys.modules`` until the test ends), for the
    calls our log functions make on their own; ``step_of`` maps a rollout id to slime's step. Returns the list every
    ``log(metrics, step_key)`` lands in."""
    logged: list[tuple[dict, str]] = []
    logging_utils = types.ModuleType("slime.observability.logging_utils")
    logging_utils.log = lambda args, metrics, step_key: logged.append((metrics, step_key))  # type: ignore[attr-defined]
    metric_utils = types.ModuleType("slime.observability.metric_utils")
    metric_utils.compute_rollout_step = lambda args, rollout_id: step_of(rollout_id)  # type: ignore[attr-defined]
    for name, module in {
        "slime": types.ModuleType("slime"),
        "slime.observability": types.ModuleType("slime.observability"),
        "slime.observability.logging_utils": logging_utils,
        "slime.observability.metric_utils": metric_utils,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return logged
