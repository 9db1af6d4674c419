"""The training-health monitor: every failure mode raised by a synthetic batch that has it (and only the modes that
batch really has), healthy batches raising nothing, the WARN lines, the off-switch, and slime's own call order
(the stand-in rollout manager of tests/support/slime_stub.py, with slime's zero-std dynamic filter)."""

from __future__ import annotations

import logging
import random
from argparse import Namespace
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from generate_with_search_oai import log_eval_metrics, log_rollout_metrics
from search_r1_oai.config import ConfigError, Settings, load_settings
from search_r1_oai.health import dropped_groups, policy_tokens, reset_process_monitor
from search_r1_oai.health_checks import MODES
from tests.support.slime_stub import RolloutManagerStandIn, Sample, install_slime_logging

ARGS = Namespace(search_r1_format_score=0.2)
HEALTH_LOGGER = "search_r1_oai.health"
MAX_LENGTH = 1024


@pytest.fixture(autouse=True)
def fresh_monitor() -> Iterator[None]:
    """Each test starts with an empty history (the monitor is per process)."""
    reset_process_monitor()
    yield
    reset_process_monitor()


def make_sample(
    group: int | None,
    reward: float,
    *,
    status: str = "COMPLETED",
    final: str = "<answer>x</answer>",
    length: int = 350,
    searches: int = 1,
    tool_errors: int = 0,
    bad_tool_calls: int = 0,
    latencies: list[float] | None = None,
    token_exact: bool = True,
    stop_reason: str | None = None,
) -> Sample:
    """A sample as slime holds it after generate() and the reward: status, reward, group, length, our metadata."""
    calls = searches + bad_tool_calls
    # The flat metadata keys apply_result writes (RolloutStats.to_dict, the search tool's keys among them).
    stats = {
        "turns": calls + 1,
        "searches": searches,
        "tool_calls": calls,
        "tool_errors": tool_errors + bad_tool_calls,
        "bad_tool_calls": bad_tool_calls,
        "search_latencies_s": latencies if latencies is not None else [0.1] * searches,
        "has_final_answer": "<answer>" in final,
        "final_content": final,
        "token_exact": token_exact,
    }
    reason = stop_reason or {"COMPLETED": "answer", "TRUNCATED": "max_turns", "FAILED": "policy_error"}[status]
    metadata = {**stats, "stop_reason": reason, "data_source": "nq", "em": float(reward == 1.0)}
    return Sample(
        group_index=group,
        index=group,
        response_length=length,
        reward=reward,
        status=getattr(Sample.Status, status),
        metadata=metadata,
    )


def healthy_batch(seed: int, groups: int = 64, group_size: int = 8, length: float = 350.0) -> list[list[Sample]]:
    """A normal noisy GRPO batch: prompts of every difficulty, 1-3 searches, a few malformed and truncated
    trajectories, a rare tool error and slow search, lengths spread around ``length``."""
    rng = random.Random(seed)
    batch = []
    for g in range(groups):
        p_correct = rng.random()
        group = []
        for _ in range(group_size):
            searches = rng.choice([1, 1, 2, 2, 3])
            latencies = [rng.choice([rng.uniform(0.02, 0.4)] * 30 + [1.5]) for _ in range(searches)]
            errors = sum(rng.random() < 0.02 for _ in range(searches))
            n = max(50, int(rng.gauss(length, length / 4)))
            common: dict[str, Any] = {"searches": searches, "latencies": latencies, "tool_errors": errors}
            draw = rng.random()
            if draw < 0.03:
                sample = make_sample(g, 0.0, status="TRUNCATED", final="", length=MAX_LENGTH, **common)
            elif draw < 0.08:
                sample = make_sample(g, 0.0, final="<answer>a</answer> <answer>b</answer>", length=n, **common)
            elif rng.random() < p_correct:
                sample = make_sample(g, 1.0, length=n, **common)
            else:
                sample = make_sample(g, 0.2, length=n, **common)
            group.append(sample)
        batch.append(group)
    return batch


def health_of(extra: dict, prefix: str = "rollout") -> dict[str, float]:
    return {k.removeprefix(f"{prefix}/health/"): v for k, v in extra.items() if k.startswith(f"{prefix}/health/")}


def run_rollouts(batches: list[list[list[Sample]]], args: Namespace = ARGS) -> list[dict[str, float]]:
    """Each batch through slime's rollout log function, in order; the health metrics of each."""
    out = []
    for rollout_id, batch in enumerate(batches):
        extra: dict = {}
        assert log_rollout_metrics(rollout_id, args, batch, extra, 1.0) is False
        out.append(health_of(extra))
    return out


def flagged(health: dict[str, float]) -> set[str]:
    return {mode for mode in MODES if health.get(mode) == 1.0}


def warn_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HEALTH_LOGGER and r.levelno == logging.WARNING]


# ---- each failure mode, from a batch that has it -------------------------------------------------------------------


def _map(batch: list[list[Sample]], change: Callable[[Sample, random.Random], Sample]) -> list[list[Sample]]:
    rng = random.Random(7)
    return [[change(s, rng) for s in group] for group in batch]


def _redo(sample: Sample, **changes) -> Sample:
    """The sample rebuilt with some of its traits changed."""
    m = sample.metadata
    reward = changes.pop("reward", sample.reward)
    traits = {
        "status": sample.status.name,
        "final": m["final_content"],
        "length": sample.response_length,
        "searches": m["searches"],
        "tool_errors": m["tool_errors"] - m["bad_tool_calls"],
        "bad_tool_calls": m["bad_tool_calls"],
        "latencies": m["search_latencies_s"],
        "token_exact": m["token_exact"],
    }
    traits |= changes
    if traits["searches"] == 0:
        traits |= {"latencies": [], "tool_errors": 0}
    return make_sample(sample.group_index, reward, **traits)


def no_searches(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, searches=0)


def short(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, length=max(20, s.response_length // 4))


def long(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, length=s.response_length * 3)


def malformed(s: Sample, rng: random.Random) -> Sample:
    # Two answers: an answer is there (not answer-less), but the trajectory is not well formed (reward 0).
    if s.status.name == "COMPLETED" and rng.random() < 0.4:
        return _redo(s, reward=0.0, final="<answer>a</answer><answer>b</answer>")
    return s


def failing(s: Sample, rng: random.Random) -> Sample:
    # The policy server fails a third of the samples: no answer, not truncated, not malformed.
    if rng.random() < 0.35:
        return _redo(s, reward=0.0, status="FAILED", final="")
    return s


def truncated(s: Sample, rng: random.Random) -> Sample:
    if rng.random() < 0.3:
        return _redo(s, reward=0.0, status="TRUNCATED", final="")
    return s


def equal_rewards(s: Sample, rng: random.Random) -> Sample:
    # Every prompt far too hard: every sample well formed and wrong.
    return _redo(s, reward=0.2, final="<answer>x</answer>", status="COMPLETED")


def reencoded(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, token_exact=rng.random() > 0.1)


def tool_failures(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, tool_errors=s.metadata["searches"] if rng.random() < 0.3 else 0)


def slow_search(s: Sample, rng: random.Random) -> Sample:
    return _redo(s, latencies=[8.0 if rng.random() < 0.05 else x for x in s.metadata["search_latencies_s"]])


@pytest.mark.parametrize(
    ("change", "expected", "numbers"),
    [
        # Searches stop while the reward stays where it was (the rewards are the healthy batch's).
        (no_searches, {"search_collapse"}, "searches/sample 0.000"),
        (short, {"response_length_collapse"}, "mean response"),
        (long, {"response_length_blowup"}, "mean response"),
        (malformed, {"format_failures_rising"}, "format failures"),
        (failing, {"answerless_rising"}, "answer-less"),
        # A cut trajectory has no answer: both rise, and both are said.
        (truncated, {"truncation_rising", "answerless_rising"}, "truncated"),
        (equal_rewards, {"no_signal_groups"}, "64 of 64 groups"),
        (reencoded, {"token_exact_below_1"}, "token-exact"),
        (tool_failures, {"tool_errors_high"}, "tool errors"),
        (slow_search, {"retrieval_p99_high"}, "retrieval p99 8.00 s"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_each_failure_mode_is_raised_by_a_batch_that_has_it(change, expected, numbers, caplog) -> None:
    history = [healthy_batch(seed) for seed in range(3)]
    bad = _map(healthy_batch(99), change)
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)
    *before, now = run_rollouts([*history, bad])
    assert all(flagged(h) == set() for h in before), before
    assert flagged(now) == expected
    assert now["alarms"] == len(expected)
    lines = warn_lines(caplog)
    assert len(lines) == len(expected), lines
    for mode in expected:
        [line] = [x for x in lines if f" {mode} " in x]
        assert line.startswith(f"training health: {mode} at rollout 3: ")
        assert "; try: " in line and len(line.split("; try: ")[1]) > 20, "one thing to try"
        assert any(ch.isdigit() for ch in line.split(": ", 2)[2]), "the numbers"
    assert any(numbers in line for line in lines), lines


def test_search_collapse_needs_a_flat_reward() -> None:
    """Searches gone while the reward climbs is the policy answering from memory and being right: not flagged."""
    history = [healthy_batch(seed) for seed in range(3)]
    climbing = _map(healthy_batch(99), lambda s, rng: _redo(s, searches=0, reward=1.0, final="<answer>x</answer>"))
    *_, now = run_rollouts([*history, climbing])
    assert now["search_collapse"] == 0.0


def test_trend_modes_wait_for_a_window_and_restart_after_a_resume(caplog) -> None:
    """The first rollouts have nothing to compare with; a rollout id that goes back (resume from an earlier
    checkpoint) starts the window over instead of comparing with the abandoned future."""
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)
    short_batch = _map(healthy_batch(5), short)
    first, second = run_rollouts([short_batch, healthy_batch(1)])
    assert flagged(first) == set() and flagged(second) == set()
    for rollout_id, batch in enumerate([healthy_batch(2), healthy_batch(3)], start=2):
        log_rollout_metrics(rollout_id, ARGS, batch, {}, 1.0)
    extra: dict = {}
    log_rollout_metrics(1, ARGS, _map(healthy_batch(4), short), extra, 1.0)  # resumed at rollout 1
    assert health_of(extra)["response_length_collapse"] == 0.0
    assert warn_lines(caplog) == []


# ---- healthy batches raise nothing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batches",
    [
        pytest.param([healthy_batch(seed) for seed in range(8)], id="steady"),
        # A run that learns: rewards up (easier prompts), lengths drifting +-20% a step, a smaller batch.
        pytest.param(
            [
                healthy_batch(seed, groups=16, group_size=4, length=300 * (1.2 if seed % 2 else 0.85))
                for seed in range(8)
            ],
            id="noisy-small",
        ),
        pytest.param([healthy_batch(seed, groups=128, group_size=1) for seed in range(5)], id="no-groups"),
    ],
)
def test_healthy_batches_raise_nothing(batches, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)
    for health in run_rollouts(batches):
        assert flagged(health) == set(), health
        assert health["alarms"] == 0.0
        assert 0 <= health["format_failure_rate"] < 0.2 and health["response_length_mean"] > 0
    assert warn_lines(caplog) == []


def test_every_mode_is_logged_every_rollout() -> None:
    [health] = run_rollouts([healthy_batch(0)])
    assert set(MODES) <= set(health)
    assert set(health) >= {"alarms", "zero_std_group_share", "format_failure_rate", "answerless_rate"}
    assert "dropped_groups" not in health, "dynamic sampling is off"
    assert 0 < health["zero_std_group_share"] < 0.5


# ---- settings and the off-switch -----------------------------------------------------------------------------------


def test_off_switch_logs_no_health_and_warns_nothing(caplog) -> None:
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)
    args = Namespace(search_r1_format_score=0.2, search_r1_health=False)
    extra: dict = {}
    log_rollout_metrics(0, args, _map(healthy_batch(1), equal_rewards), extra, 1.0)
    assert extra["rollout/search/samples"] == 512, "the search metrics stay"
    assert not [k for k in extra if "/health/" in k]
    assert warn_lines(caplog) == []


def test_thresholds_are_settings(caplog) -> None:
    """A bound from slime's config (a key on args) moves the alarm: the same batch passes a looser bound."""
    batch = _map(healthy_batch(1), tool_failures)
    strict, loose = Namespace(**vars(ARGS)), Namespace(**vars(ARGS), search_r1_health_max_tool_error_rate=0.9)
    assert run_rollouts([batch], strict)[0]["tool_errors_high"] == 1.0
    reset_process_monitor()
    assert run_rollouts([batch], loose)[0]["tool_errors_high"] == 0.0
    assert load_settings(env={"SEARCH_R1_HEALTH_WINDOW": "3"}).health_window == 3
    with pytest.raises(ConfigError, match="SEARCH_R1_HEALTH_LENGTH_LOW"):
        load_settings(env={"SEARCH_R1_HEALTH_LENGTH_LOW": "1.5"})
    assert Settings().health is True


# ---- eval: the same summary per set ---------------------------------------------------------------------------------


def test_eval_sets_get_their_own_health(caplog) -> None:
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)

    def data(nq: list[list[Sample]]) -> dict:
        flat = [s for g in nq for s in g]
        hotpot = [s for g in healthy_batch(50, groups=32, group_size=1) for s in g]
        return {
            "nq": {"rewards": [s.reward for s in flat], "samples": flat},
            "hotpotqa": {"rewards": [s.reward for s in hotpot], "samples": hotpot},
        }

    for rollout_id, seed in enumerate([10, 11]):
        log_eval_metrics(rollout_id * 20, ARGS, data(healthy_batch(seed, groups=32, group_size=1)), {})
    extra: dict = {}
    log_eval_metrics(40, ARGS, data(_map(healthy_batch(12, groups=32, group_size=1), no_searches)), extra)
    assert flagged(health_of(extra, "eval/nq")) == {"search_collapse"}
    assert flagged(health_of(extra, "eval/hotpotqa")) == set()
    [line] = warn_lines(caplog)
    assert line.startswith("training health: search_collapse at eval/nq 40: ")
    assert not [k for k in extra if k.startswith("rollout/")]


def test_two_evaluations_at_rollout_0_both_count() -> None:
    """slime evaluates at rollout 0 before training and, with --eval-interval 1, again after it: the same step is
    not a resume, so both stay in the window."""

    def data(batch: list[list[Sample]]) -> dict:
        flat = [s for g in batch for s in g]
        return {"nq": {"rewards": [s.reward for s in flat], "samples": flat}}

    log_eval_metrics(0, ARGS, data(healthy_batch(20, groups=64, group_size=1)), {})
    log_eval_metrics(0, ARGS, data(healthy_batch(21, groups=64, group_size=1)), {})
    extra: dict = {}
    log_eval_metrics(1, ARGS, data(_map(healthy_batch(22, groups=64, group_size=1), no_searches)), extra)
    assert extra["eval/nq/health/search_collapse"] == 1.0


def test_eval_sets_are_not_warned_about_groups_without_signal(caplog) -> None:
    """Several samples per eval prompt that all score the same is a measurement, not a lost training signal."""
    caplog.set_level(logging.WARNING, logger=HEALTH_LOGGER)
    flat = [s for g in _map(healthy_batch(1), equal_rewards) for s in g]
    extra: dict = {}
    log_eval_metrics(0, ARGS, {"nq": {"rewards": [s.reward for s in flat], "samples": flat}}, extra)
    health = health_of(extra, "eval/nq")
    assert health["zero_std_group_share"] == 1.0 and "no_signal_groups" not in health
    assert health["alarms"] == 0 and warn_lines(caplog) == []


# ---- slime's call order, with its dynamic sampling -----------------------------------------------------------------


@pytest.fixture
def slime_logging(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, str]]:
    """slime.observability's logger and step, for the calls our log functions make on their own (eval: slime's
    default eval rollout passes no metrics dict)."""
    return install_slime_logging(monkeypatch)


def _standin_args(**extra) -> Namespace:
    return Namespace(
        search_r1_format_score=0.2,
        custom_rollout_log_function_path="generate_with_search_oai.log_rollout_metrics",
        custom_eval_rollout_log_function_path="generate_with_search_oai.log_eval_metrics",
        reward_key=None,
        **extra,
    )


def test_through_slimes_rollout_manager_with_dynamic_sampling(caplog, slime_logging) -> None:
    """slime's filter drops the all-equal groups and counts them in the metrics it hands our log function; the
    health metrics report them and land in the one dict slime logs at rollout/step, beside slime's own."""
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    batch = healthy_batch(3)
    zero_std = sum(len({s.reward for s in g}) == 1 for g in batch)
    assert 0 < zero_std < 16, "the seed gives some all-equal groups"
    # Over-sampled by exactly the groups the filter will drop: every group is looked at.
    args = _standin_args(
        dynamic_sampling_filter_path="tests.support.slime_stub.check_reward_nonzero_std",
        rollout_batch_size=len(batch) - zero_std,
    )
    manager = RolloutManagerStandIn(args)
    kept = manager.generate(0, batch)
    [(logged, step_key)] = manager.logged
    assert step_key == "rollout/step" and logged["rollout/step"] == 0
    drops = {k: v for k, v in logged.items() if k.startswith("rollout/dynamic_filter/drop_")}
    assert sum(drops.values()) == zero_std, "slime's own drop counts are still logged"
    health = health_of(logged)
    assert health["dropped_groups"] == zero_std and health["dropped_zero_std_groups"] == zero_std
    assert health["zero_std_group_share"] == 0.0, "the kept batch has signal in every group"
    assert health["generated_zero_std_share"] == pytest.approx(zero_std / (len(kept) // 8 + zero_std))
    assert logged["rollout/search/samples"] == len(kept) and "rollout/truncated_ratio" in logged
    assert flagged(health) == set()
    assert any(f"dynamic sampling dropped {zero_std} groups" in r.getMessage() for r in caplog.records)
    assert slime_logging == [], "everything went into slime's dict"


def test_through_slimes_rollout_manager_without_dynamic_sampling(slime_logging) -> None:
    manager = RolloutManagerStandIn(_standin_args(dynamic_sampling_filter_path=None))
    manager.generate(0, _map(healthy_batch(1), equal_rewards))
    [(logged, _)] = manager.logged
    health = health_of(logged)
    assert "dropped_groups" not in health
    assert health["no_signal_groups"] == 1.0 and health["zero_std_group_share"] == 1.0


def test_through_slimes_eval_call(slime_logging) -> None:
    """slime's default eval rollout passes ``None`` for the metrics: ours are logged at eval/step first, then
    slime logs its own rewards."""
    manager = RolloutManagerStandIn(_standin_args())
    flat = [s for g in healthy_batch(2, groups=16, group_size=1) for s in g]
    manager.eval(20, {"nq": {"rewards": [s.reward for s in flat], "samples": flat}})
    [(ours, step_key)] = slime_logging
    assert step_key == "eval/step" and ours["eval/step"] == 20
    modes = set(health_of(ours, "eval/nq")) & set(MODES)
    assert modes == set(MODES) - {"no_signal_groups"}, "nothing trains on an eval set: its groups carry no signal"
    [(slimes, _)] = manager.logged
    assert "eval/nq" in slimes and not [k for k in slimes if "/health/" in k]


def test_length_is_the_policys_own_tokens() -> None:
    """Tool results sit in the response with loss mask 0: the length checks count the policy's tokens only."""
    sample = make_sample(0, 1.0, length=6)
    sample.loss_mask = [1, 1, 0, 0, 0, 1]
    assert policy_tokens(sample) == 3
    sample.loss_mask = None
    assert policy_tokens(sample) == 6


def test_dropped_groups_reads_only_slimes_drop_counts() -> None:
    extra = {
        "rollout/dynamic_filter/drop_zero_std_0.0": 3,
        "rollout/dynamic_filter/drop_zero_std_1.0": 2,
        "rollout/dynamic_filter/drop_too_long": 1,
        "rollout/other": 7,
    }
    assert dropped_groups(extra) == (6, 5)
    assert dropped_groups(None) == (0, 0)
