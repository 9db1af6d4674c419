"""The failure modes of GRPO search training, each a check of one batch against the batches before it.

A check reads a :class:`Summary` (one rollout's or one evaluation set's numbers) and the summaries of the window
before it, and returns an :class:`Alarm` when its mode is present: its name (the metric ``.../health/<name>``),
what it means, the numbers that raised it and one thing to try. The thresholds are the ``health_*`` rows of
:class:`~search_r1_oai.config.Settings`. Pure functions: :mod:`search_r1_oai.health` owns the history.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search_r1_oai.config import Settings


@dataclass(frozen=True)
class Summary:
    """One batch's numbers. Rates are fractions; NaN where the batch has nothing to measure (no search made, no
    scored sample, no trajectory that ended on its own)."""

    samples: int
    reward_mean: float
    reward_sem: float  # standard error of reward_mean: its noise at this batch size
    searches_per_sample: float
    response_length_mean: float  # policy tokens per sample (tool results left out)
    completed: int  # trajectories that ended on their own: the denominator of the format failure rate
    format_failure_rate: float
    answerless_rate: float
    truncated_rate: float
    failed_rate: float
    groups: int  # GRPO groups of 2 or more scored samples
    zero_std_groups: int
    token_exact_rate: float
    tool_error_rate: float
    bad_tool_call_rate: float
    retrieval_p99_s: float

    @property
    def zero_std_share(self) -> float:
        return self.zero_std_groups / self.groups if self.groups else math.nan


@dataclass(frozen=True)
class Alarm:
    """A failure mode present in a batch."""

    mode: str
    meaning: str
    numbers: str
    remedy: str

    def line(self, where: str) -> str:
        """The WARN line: the mode, where, what it means, the numbers, one thing to try."""
        return f"training health: {self.mode} at {where}: {self.meaning} ({self.numbers}); try: {self.remedy}"


Check = Callable[[Summary, Sequence[Summary], Settings], Alarm | None]


def baseline(history: Sequence[Summary], field: str) -> float:
    """The window's mean of ``field`` (NaN entries skipped; NaN when none is left)."""
    values = [getattr(s, field) for s in history]
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def enough_history(history: Sequence[Summary], settings: Settings) -> bool:
    """Trend checks need 2 earlier batches (1 with a window of 1): one batch is too noisy to compare with."""
    return len(history) >= min(2, settings.health_window)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def search_collapse(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    if not enough_history(history, settings) or math.isnan(now.searches_per_sample):
        return None
    before_reward = baseline(history, "reward_mean")
    if math.isnan(now.reward_mean) or math.isnan(before_reward):
        return None
    # Flat: within the setting, or within the batch's noise (3 standard errors: a small eval set's mean wobbles).
    flat_bound = max(settings.health_flat_reward, 3 * now.reward_sem if not math.isnan(now.reward_sem) else 0.0)
    flat = abs(now.reward_mean - before_reward) <= flat_bound
    if now.searches_per_sample > settings.health_min_searches or not flat:
        return None
    return Alarm(
        "search_collapse",
        "the policy stopped searching and answers from memory while its reward does not improve",
        f"searches/sample {now.searches_per_sample:.3f} (window {baseline(history, 'searches_per_sample'):.3f},"
        f" bound {settings.health_min_searches:g}); reward {now.reward_mean:.3f} vs window {before_reward:.3f}",
        "resume from the last checkpoint before the fall with a lower learning rate (--lr)",
    )


def response_length_collapse(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    before = baseline(history, "response_length_mean")
    if not enough_history(history, settings) or not before > 0:
        return None
    if not now.response_length_mean < settings.health_length_low * before:
        return None
    return Alarm(
        "response_length_collapse",
        "responses shrank sharply: the policy is dropping its reasoning and searches (a common start of collapse)",
        f"mean response {now.response_length_mean:.0f} policy tokens vs window {before:.0f}"
        f" (bound {settings.health_length_low:g}x)",
        "read a few trajectories (SEARCH_R1_LOG_EVERY) and lower the learning rate (--lr) if they are degenerate",
    )


def response_length_blowup(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    before = baseline(history, "response_length_mean")
    if not enough_history(history, settings) or not before > 0:
        return None
    if not now.response_length_mean > settings.health_length_high * before:
        return None
    return Alarm(
        "response_length_blowup",
        "responses grew sharply: repetition or runaway reasoning, which ends in truncation and a reward of 0",
        f"mean response {now.response_length_mean:.0f} policy tokens vs window {before:.0f}"
        f" (bound {settings.health_length_high:g}x)",
        "if slime's rollout/repetition_frac rose with it, raise the KL loss (--kl-loss-coef) to hold the policy"
        " near the reference",
    )


def rising(
    now_rate: float, n: int, history: Sequence[Summary], field: str, settings: Settings
) -> tuple[bool, float, float]:
    """Whether ``now_rate`` (of ``n`` items) exceeds the window's mean by the rise setting and by 3 binomial
    standard deviations of that mean at this batch size; also the window's mean and the bound used."""
    before = baseline(history, field)
    if not enough_history(history, settings) or math.isnan(now_rate) or math.isnan(before) or n <= 0:
        return False, before, math.nan
    noise = 3 * math.sqrt(before * (1 - before) / n)
    bound = before + max(settings.health_rate_rise, noise)
    return now_rate > bound, before, bound


def format_failures_rising(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    up, before, bound = rising(now.format_failure_rate, now.completed, history, "format_failure_rate", settings)
    if not up:
        return None
    return Alarm(
        "format_failures_rising",
        "more trajectories that ended on their own are malformed (not exactly one <answer>, or malformed tool"
        " calls): they earn no format score",
        f"format failures {_pct(now.format_failure_rate)} of {now.completed} completed vs window {_pct(before)}"
        f" (bound {_pct(bound)}); malformed tool calls {_pct(now.bad_tool_call_rate)} of calls",
        f"raise the format reward (SEARCH_R1_FORMAT_SCORE, now {settings.format_score:g}) so well-formed"
        " trajectories pay more than malformed ones",
    )


def answerless_rising(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    up, before, bound = rising(now.answerless_rate, now.samples, history, "answerless_rate", settings)
    if not up:
        return None
    return Alarm(
        "answerless_rising",
        "more samples end without an <answer>: they score 0 whatever they found",
        f"answer-less {_pct(now.answerless_rate)} of {now.samples} vs window {_pct(before)} (bound {_pct(bound)});"
        f" truncated {_pct(now.truncated_rate)}, failed {_pct(now.failed_rate)}",
        "see which share grew: truncated ones need more turns (SEARCH_R1_MAX_TURNS), failed ones a look at the"
        " policy server's log",
    )


def truncation_rising(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    up, before, bound = rising(now.truncated_rate, now.samples, history, "truncated_rate", settings)
    if not up:
        return None
    return Alarm(
        "truncation_rising",
        "more trajectories are cut (length, turns, context budget or deadline): they are not well formed and score"
        " at most an exact match",
        f"truncated {_pct(now.truncated_rate)} of {now.samples} vs window {_pct(before)} (bound {_pct(bound)});"
        f" mean response {now.response_length_mean:.0f} policy tokens",
        "raise --rollout-max-response-len or SEARCH_R1_MAX_TURNS if the trajectories are sound, else treat it as a"
        " length blow-up",
    )


def no_signal_groups(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    share = now.zero_std_share
    if math.isnan(share) or share <= settings.health_max_zero_std_share:
        return None
    return Alarm(
        "no_signal_groups",
        "GRPO groups whose samples all got the same reward have zero advantage: the step learns nothing from them",
        f"{now.zero_std_groups} of {now.groups} groups ({_pct(share)}, bound"
        f" {_pct(settings.health_max_zero_std_share)}); mean reward {now.reward_mean:.3f}",
        "turn on dynamic sampling (DYNAMIC_SAMPLING=1 in the run script), which over-samples and drops such groups",
    )


def token_exact_below_1(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    rate = now.token_exact_rate
    if math.isnan(rate) or rate >= settings.health_min_token_exact:
        return None
    return Alarm(
        "token_exact_below_1",
        "some samples are trained on re-encoded text, not the tokens the policy sampled (their log-probs do not match)",
        f"token-exact {_pct(rate)} of {now.samples} (bound {_pct(settings.health_min_token_exact)})",
        "serve the policy with SGLang >= 0.5.13 and set SEARCH_R1_ALLOW_REENCODE_FALLBACK=false",
    )


def tool_errors_high(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    rate = now.tool_error_rate
    if math.isnan(rate) or rate <= settings.health_max_tool_error_rate:
        return None
    return Alarm(
        "tool_errors_high",
        "many tool calls fail: the policy reads error messages instead of passages",
        f"tool errors {_pct(rate)} of calls (bound {_pct(settings.health_max_tool_error_rate)}); malformed"
        f" calls {_pct(now.bad_tool_call_rate)} of calls",
        "if malformed calls are few, check the retriever (its log, GET /health) and RETRIEVAL_SERVER_URL",
    )


def retrieval_p99_high(now: Summary, history: Sequence[Summary], settings: Settings) -> Alarm | None:
    p99 = now.retrieval_p99_s
    if math.isnan(p99) or p99 <= settings.health_max_retrieval_p99_s:
        return None
    return Alarm(
        "retrieval_p99_high",
        "slow searches hold trajectories, and slime waits for the slowest sample of the step",
        f"retrieval p99 {p99:.2f} s (bound {settings.health_max_retrieval_p99_s:g} s)",
        "add retriever replicas (RETRIEVAL_SERVER_URL takes several) or serve the index on a GPU",
    )


CHECKS: tuple[Check, ...] = (
    search_collapse,
    response_length_collapse,
    response_length_blowup,
    format_failures_rising,
    answerless_rising,
    no_signal_groups,
    token_exact_below_1,
    tool_errors_high,
    retrieval_p99_high,
    truncation_rising,
)
MODES: tuple[str, ...] = tuple(check.__name__ for check in CHECKS)
"""The mode names, in order: each is logged as ``.../health/<name>`` (1 present, 0 not)."""
TRAINING_ONLY: frozenset[str] = frozenset({"no_signal_groups"})
"""Modes that concern what GRPO trains on: not checked on evaluation sets (nothing learns from them)."""
