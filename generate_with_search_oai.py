"""slime entry points: ``--custom-generate-function-path generate_with_search_oai.generate``,
``--custom-rm-path generate_with_search_oai.reward_func``, and the search metrics
``--custom-rollout-log-function-path generate_with_search_oai.log_rollout_metrics`` and
``--custom-eval-rollout-log-function-path generate_with_search_oai.log_eval_metrics``.

The only module that knows slime: it maps a ``Sample`` to the core's inputs (messages, tools, saved state) and the
core's :class:`~search_r1_oai.result.RolloutResult` back onto the ``Sample`` (tokens, loss mask, logprobs, status,
metadata for monitoring and for resuming a partial rollout). Everything else lives in ``search_r1_oai`` and runs
without slime. slime is imported where it is used, so the mapping functions are importable (and tested) without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from argparse import Namespace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from search_r1_oai.config import Settings, load_settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.errors import TrajectoryError
from search_r1_oai.health import dropped_groups, health_samples, process_monitor, summarize
from search_r1_oai.metrics import Finished, search_metrics
from search_r1_oai.result import Outcome, RolloutResult, RolloutStats
from search_r1_oai.reward import is_well_formed, score
from search_r1_oai.rollout import run_trajectory
from search_r1_oai.trajectory import Trajectory

if TYPE_CHECKING:
    from slime.utils.types import Sample

logger = logging.getLogger(__name__)

# metadata key of the state an ABORTED sample resumes from (slime's partial rollout hands the sample back).
STATE_KEY = "search_r1_state"

_CONTEXT: RolloutContext | None = None


def rollout_context(args: Namespace, tokenizer: Any) -> RolloutContext:
    """The process's one context, built on the first sample from slime's args (settings from ``--custom-config-path``
    YAML keys, then the environment) and its tokenizer."""
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.tokenizer is not tokenizer:
        policy_url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}"
        _CONTEXT = RolloutContext(load_settings(args), tokenizer, policy_url, tool_args=args)
    return _CONTEXT


def _settings(args: Namespace) -> Settings:
    """The rollout context's settings once a sample has built it, else read from ``args`` (reward or logging in a
    process that generated nothing)."""
    return _CONTEXT.settings if _CONTEXT is not None else load_settings(args)


async def generate(
    args: Namespace, sample: Sample, sampling_params: dict[str, Any], evaluation: bool = False
) -> Sample:
    """One sample's multi-turn search rollout through the SGLang router's ``/v1/chat/completions``.

    ``evaluation`` is named so that slime passes it (it inspects the signature). Never raises.
    """
    from slime.rollout.sglang_rollout import GenerateState

    context = rollout_context(args, GenerateState(args).tokenizer)
    return await rollout_sample(
        context, sample, sampling_params, is_aborted=lambda: GenerateState(args).aborted, evaluation=evaluation
    )


async def reward_func(args: Namespace, sample: Sample | list[Sample], **kwargs: Any) -> float | list[float]:
    """Search-R1 exact-match reward with format score; a list of samples gives a list of rewards in order."""
    settings: Settings = kwargs.get("settings") or _settings(args)
    if isinstance(sample, list):
        return [score_sample(s, settings.format_score) for s in sample]
    return score_sample(sample, settings.format_score)


# ---- Sample -> core -> Sample --------------------------------------------------------------------------------------


async def rollout_sample(
    context: RolloutContext,
    sample: Sample,
    sampling_params: dict[str, Any],
    *,
    is_aborted: Callable[[], bool] = lambda: False,
    evaluation: bool = False,
) -> Sample:
    """Run the core on ``sample`` and write the result onto it (in place; returned for slime)."""
    if sample.metadata is None:
        sample.metadata = {}
    trajectory = _trajectory_of(sample)
    result = await run_trajectory(context, trajectory, sampling_params, is_aborted=is_aborted, evaluation=evaluation)
    apply_result(sample, result)
    return sample


def _tools_of(metadata: dict[str, Any]) -> Any:
    """slime puts the parquet ``tools`` column (a JSON string) in ``metadata["tools"]``; anything unreadable is
    passed on as it is, for the core to fail the sample with a message rather than raise into slime."""
    tools = metadata.get("tools")
    if isinstance(tools, str):
        with contextlib.suppress(json.JSONDecodeError):
            tools = json.loads(tools)
    return tools


def _trajectory_of(sample: Sample) -> Trajectory:
    """The trajectory an ABORTED sample saved, or a fresh one from its prompt and tools (also when the saved state
    is unusable)."""
    tools = _tools_of(sample.metadata)
    fresh = Trajectory.start(sample.prompt, tools)
    saved = sample.metadata.get(STATE_KEY)
    if sample.status != sample.Status.ABORTED or not isinstance(saved, dict):
        return fresh
    try:
        return Trajectory.load(
            saved,
            tools=tools,
            tokens=sample.tokens,
            loss_mask=sample.loss_mask,
            log_probs=sample.rollout_log_probs,
            response_length=sample.response_length,
            response=sample.response,
        )
    except (TrajectoryError, ValueError) as exc:
        logger.warning("sample %s: saved rollout state unusable (%s); starting over", sample.index, exc)
        sample.metadata["resume_discarded"] = str(exc)
        return fresh


def apply_result(sample: Sample, result: RolloutResult) -> None:
    """Write a result onto its sample: token state, status, and metadata (the counters for monitoring, the stop
    reason and error, the state to resume from)."""
    sample.status = getattr(sample.Status, result.outcome.name)
    if result.tokens or result.outcome is not Outcome.ABORTED:
        # The result's lists are its own copies of the token state: handed over, not copied again.
        sample.tokens = result.tokens
        sample.response_length = result.response_length
        sample.loss_mask = result.loss_mask
        sample.rollout_log_probs = result.log_probs
        sample.response = result.response
    if not result.train and hasattr(sample, "remove_sample"):
        sample.remove_sample = True
    metadata = sample.metadata
    metadata.update(result.stats.to_dict())
    metadata["stop_reason"] = result.stop_reason
    if result.error is not None:
        metadata["error"] = result.error
    else:
        metadata.pop("error", None)
    if result.saved_state is not None:
        metadata[STATE_KEY] = result.saved_state
    else:
        metadata.pop(STATE_KEY, None)


def _outcome_of(sample: Sample) -> tuple[Outcome | None, str]:
    """The core's outcome for the sample's status (``None`` for slime's other statuses) and the status name."""
    status = getattr(getattr(sample, "status", None), "name", "")
    return (Outcome[status] if status in Outcome.__members__ else None), status


def score_sample(sample: Sample, format_score: float) -> float:
    """The reward of one sample, read from what :func:`apply_result` wrote; EM, F1 and the predicted answer are
    added to its metadata for evaluation."""
    if sample.metadata is None:
        sample.metadata = {}
    metadata = sample.metadata
    stats = RolloutStats.from_dict(metadata)
    final_text = str(metadata["final_content"]) if "final_content" in metadata else (sample.response or "")
    outcome, status = _outcome_of(sample)
    # PENDING: a sample that never went through generate() (its text is judged as it stands).
    well_formed = (outcome is not None or status == "PENDING") and is_well_formed(
        final_text, outcome, metadata.get("stop_reason", "answer"), stats.bad_tool_calls
    )
    result = score(final_text, sample.label, well_formed=well_formed, format_score=format_score)
    metadata.update(em=result.em, f1=result.f1, pred_answer=result.pred_answer)
    if result.error is not None:
        logger.error("sample %s: unusable label, reward 0: %s", getattr(sample, "index", None), result.error)
        metadata["reward_error"] = result.error
    return result.reward


# ---- search metrics into slime's logging --------------------------------------------------------------------------


def finished_of(sample: Sample) -> Finished:
    """What the metrics read of a finished (and scored) sample."""
    metadata = sample.metadata or {}
    reward = sample.reward if isinstance(sample.reward, int | float) else None
    return Finished(
        data_source=str(metadata.get("data_source") or "unknown"),
        outcome=_outcome_of(sample)[0],
        stats=RolloutStats.from_dict(metadata),
        stop_reason=str(metadata.get("stop_reason") or ""),
        reward=None if reward is None else float(reward),
        em=metadata.get("em"),
        f1=metadata.get("f1"),
    )


def _flat(samples: Any) -> list[Sample]:
    """slime hands over a flat list, or a list of groups."""
    out: list[Sample] = []
    for item in samples or []:
        out.extend(_flat(item) if isinstance(item, list | tuple) else [item])
    return out


def _publish(args: Namespace, rollout_id: int, metrics: dict[str, float], extra: dict | None, step_key: str) -> None:
    """Into the dict slime is about to log when it passed one; else logged on our own at slime's step."""
    logger.info("search metrics %s %s: %s", step_key.split("/")[0], rollout_id, json.dumps(metrics, sort_keys=True))
    if extra is not None:
        extra.update(metrics)
        return
    from slime.observability.logging_utils import log
    from slime.observability.metric_utils import compute_rollout_step

    log(args, {**metrics, step_key: compute_rollout_step(args, rollout_id)}, step_key=step_key)


def log_rollout_metrics(
    rollout_id: int, args: Namespace, samples: list[Sample], rollout_extra_metrics: dict | None, rollout_time: float
) -> bool:
    """slime's ``--custom-rollout-log-function-path``: adds ``rollout/search/*`` and the training-health monitor's
    ``rollout/health/*`` (with the groups slime's dynamic sampling dropped, when it is on); returns False so slime
    still logs its own metrics."""
    flat = _flat(samples)
    finished = [finished_of(s) for s in flat]
    settings = _settings(args)
    metrics = search_metrics(finished, settings.format_score)
    published = {f"rollout/search/{k}": v for k, v in metrics.items()}
    if finished:
        # slime counts the dropped groups in the metrics it passes here only when a filter is set.
        filtering = getattr(args, "dynamic_sampling_filter_path", None) is not None
        dropped = dropped_groups(rollout_extra_metrics) if filtering else None
        summary = summarize(metrics, health_samples(flat, finished))
        published |= process_monitor(settings).check("rollout", rollout_id, summary, "rollout", dropped)
    _publish(args, rollout_id, published, rollout_extra_metrics, "rollout/step")
    return False


def log_eval_metrics(
    rollout_id: int, args: Namespace, data: dict[str, dict], extra_metrics: dict | None = None
) -> bool:
    """slime's ``--custom-eval-rollout-log-function-path``: adds ``eval/<set>/search/*`` and the health monitor's
    ``eval/<set>/health/*`` per evaluation set (each set its own window of earlier evaluations); returns False so
    slime still logs its own eval rewards."""
    settings = _settings(args)
    monitor = process_monitor(settings)
    metrics: dict[str, float] = {}
    for name, result in data.items():
        flat = _flat(result.get("samples"))
        finished = [finished_of(s) for s in flat]
        search = search_metrics(finished, settings.format_score)
        metrics |= {f"eval/{name}/search/{k}": v for k, v in search.items()}
        if finished:
            summary = summarize(search, health_samples(flat, finished))
            metrics |= monitor.check(f"eval/{name}", rollout_id, summary, f"eval/{name}", training=False)
    _publish(args, rollout_id, metrics, extra_metrics, "eval/step")
    return False
