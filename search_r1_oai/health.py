"""Training-health monitor: is this run going wrong, and what to try.

slime logs raw rates; nothing there says "search collapsed three steps ago". After every rollout (and every
evaluation set) the monitor summarises the batch (:class:`~search_r1_oai.health_checks.Summary`), runs the checks of
:mod:`search_r1_oai.health_checks` against the previous batches of the same stream, and returns the metrics to log
(``<prefix>/health/<mode>`` = 1 or 0 for every mode, plus the numbers no other metric shows) while logging one WARN
line per mode present.

The history lives in one :class:`HealthMonitor` per process (:func:`process_monitor`): slime calls the log functions
in its rollout manager, one process for the whole run, so the monitor there sees every rollout in order. A restarted
manager starts with an empty window (the trend checks wait for it to fill again), and a rollout id that goes
back (a run resumed from an earlier checkpoint) clears that stream's window.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from search_r1_oai.config import Settings
from search_r1_oai.health_checks import CHECKS, TRAINING_ONLY, Alarm, Summary
from search_r1_oai.metrics import Finished
from search_r1_oai.result import Outcome
from search_r1_oai.reward import is_well_formed

logger = logging.getLogger(__name__)

# slime's dynamic sampling counts the groups its filter dropped as ``rollout/dynamic_filter/drop_<reason>`` in the
# metrics it hands the rollout log function (slime/rollout/filter_hub/base_types.py, MetricGatherer); its
# zero-std filter's reasons are ``zero_std_<reward>``.
DROP_PREFIX = "rollout/dynamic_filter/drop_"
ZERO_STD_REASON = "zero_std"


@dataclass(frozen=True)
class HealthSample:
    """What the monitor reads of one scored sample besides the search metrics: its GRPO group and the number of
    tokens the policy generated in it."""

    finished: Finished
    group: int | None
    response_length: int


def policy_tokens(sample: Any) -> int:
    """The tokens the policy generated in a sample: its loss mask's ones (slime's ``effective_response_length``),
    not the tool results between its turns, so fewer searches alone do not read as a shorter response."""
    mask = getattr(sample, "loss_mask", None)
    if mask is not None:
        return int(sum(mask))
    length = getattr(sample, "response_length", 0)
    return length if isinstance(length, int) and not isinstance(length, bool) else 0


def health_samples(samples: Sequence[Any], finished: Sequence[Finished]) -> list[HealthSample]:
    """slime's ``Sample`` objects (read for ``group_index``, ``loss_mask`` and ``response_length`` only) beside
    what the metrics read of them."""
    out = []
    for sample, item in zip(samples, finished, strict=True):
        group = getattr(sample, "group_index", None)
        out.append(HealthSample(item, group if isinstance(group, int) else None, policy_tokens(sample)))
    return out


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _zero_std_groups(samples: Sequence[HealthSample]) -> tuple[int, int]:
    """(groups of 2 or more scored samples, those whose rewards are all equal)."""
    rewards: dict[int, list[float]] = {}
    for sample in samples:
        if sample.group is not None and sample.finished.reward is not None:
            rewards.setdefault(sample.group, []).append(sample.finished.reward)
    groups = [values for values in rewards.values() if len(values) >= 2]
    return len(groups), sum(max(values) - min(values) <= 1e-9 for values in groups)


def summarize(metrics: Mapping[str, float], samples: Sequence[HealthSample]) -> Summary:
    """One batch's summary from its search metrics (:func:`~search_r1_oai.metrics.search_metrics`, unprefixed)
    and its samples."""
    completed = [s.finished for s in samples if s.finished.outcome is Outcome.COMPLETED]
    malformed = [
        not is_well_formed(f.stats.final_content, f.outcome, f.stop_reason, f.stats.bad_tool_calls) for f in completed
    ]
    groups, zero_std = _zero_std_groups(samples)
    rewards = [s.finished.reward for s in samples if s.finished.reward is not None]
    nan = math.nan
    return Summary(
        samples=len(samples),
        reward_mean=_mean(rewards),
        reward_sem=statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) >= 2 else math.nan,
        searches_per_sample=float(metrics.get("searches_per_sample", nan)),
        response_length_mean=_mean([float(s.response_length) for s in samples]),
        completed=len(completed),
        format_failure_rate=_mean([float(m) for m in malformed]),
        answerless_rate=1.0 - float(metrics.get("final_answer_rate", nan)),
        truncated_rate=float(metrics.get("truncated_rate", nan)),
        failed_rate=float(metrics.get("failed_rate", nan)),
        groups=groups,
        zero_std_groups=zero_std,
        token_exact_rate=float(metrics.get("token_exact_rate", nan)),
        tool_error_rate=float(metrics.get("tool_error_rate", nan)),
        bad_tool_call_rate=float(metrics.get("bad_tool_call_rate", nan)),
        retrieval_p99_s=float(metrics.get("retrieval_latency_p99_s", nan)),
    )


def dropped_groups(extra: Mapping[str, object] | None) -> tuple[int, int]:
    """(groups slime's dynamic sampling dropped this rollout, those dropped for all-equal rewards), read from the
    metrics slime passes the rollout log function."""
    total = zero_std = 0
    for key, value in (extra or {}).items():
        if not key.startswith(DROP_PREFIX) or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        total += int(value)
        if key[len(DROP_PREFIX) :].startswith(ZERO_STD_REASON):
            zero_std += int(value)
    return total, zero_std


class HealthMonitor:
    """The windows of earlier batches, one per stream (``rollout``, ``eval/<set>``), and the checks against them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._windows: dict[str, deque[Summary]] = {}
        self._last_step: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(
        self,
        stream: str,
        step: int,
        summary: Summary,
        prefix: str,
        dropped: tuple[int, int] | None = None,
        training: bool = True,
    ) -> dict[str, float]:
        """Check one batch of ``stream`` (at rollout ``step``) against that stream's window, log a WARN line per
        mode present, remember the batch, and return the metrics named ``<prefix>/health/*``. ``dropped`` is what
        :func:`dropped_groups` read when dynamic sampling is on (``None`` when it is off); ``training`` False (an
        evaluation set) leaves out the modes about what GRPO trains on. Off: ``{}``."""
        if not self.settings.health:
            return {}
        history = self._remember(stream, step, summary)
        checks = [check for check in CHECKS if training or check.__name__ not in TRAINING_ONLY]
        alarms: list[Alarm] = [alarm for check in checks if (alarm := check(summary, history, self.settings))]
        present = {alarm.mode for alarm in alarms}
        where = f"{stream} {step}"
        for alarm in alarms:
            logger.warning(alarm.line(where))
        metrics = {check.__name__: float(check.__name__ in present) for check in checks}
        metrics |= {
            "alarms": float(len(alarms)),
            "zero_std_group_share": summary.zero_std_share,
            "format_failure_rate": summary.format_failure_rate,
            "answerless_rate": summary.answerless_rate,
            "response_length_mean": summary.response_length_mean,
            "reward_mean": summary.reward_mean,
        }
        if dropped is not None:
            metrics |= _dropped_metrics(summary, dropped, where)
        return {f"{prefix}/health/{name}": value for name, value in metrics.items()}

    def _remember(self, stream: str, step: int, summary: Summary) -> tuple[Summary, ...]:
        """The stream's window before this batch; the batch joins it."""
        with self._lock:
            window = self._windows.setdefault(stream, deque(maxlen=self.settings.health_window))
            # A step that goes back is a run resumed from an earlier checkpoint: the batches after it are not its
            # past. The same step again is not (slime evaluates at rollout 0 before training and after it).
            if step < self._last_step.get(stream, step):
                window.clear()
            self._last_step[stream] = step
            history = tuple(window)
            window.append(summary)
        return history


def _dropped_metrics(summary: Summary, dropped: tuple[int, int], where: str) -> dict[str, float]:
    """What slime's dynamic sampling dropped this step: all groups, the zero-std ones, and of every group generated
    the share without signal (what over-sampling pays for)."""
    total, zero_std = dropped
    generated = summary.groups + total
    if total:
        logger.info("training health: %s: dynamic sampling dropped %d groups (%d zero-std)", where, total, zero_std)
    return {
        "dropped_groups": float(total),
        "dropped_zero_std_groups": float(zero_std),
        "generated_zero_std_share": (summary.zero_std_groups + zero_std) / generated if generated else 0.0,
    }


_MONITOR: HealthMonitor | None = None
_MONITOR_LOCK = threading.Lock()


def process_monitor(settings: Settings) -> HealthMonitor:
    """The process's one monitor (slime's rollout manager calls every log function in one process); a new one when
    the settings change."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None or _MONITOR.settings != settings:
            _MONITOR = HealthMonitor(settings)
        return _MONITOR


def reset_process_monitor() -> None:
    """Forget the process's monitor and its history (tests; a new run in the same process)."""
    global _MONITOR
    with _MONITOR_LOCK:
        _MONITOR = None
