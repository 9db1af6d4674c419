"""Stand-in for slime/utils/arguments.py: the order in which slime turns its command line into ``args``.

Written from reading slime (parse_args -> slime_validate_args), not copied from it; only what this project relies
on is modelled, in slime's order:

1. parse the flags (a few of slime's, with slime's defaults; every other flag is accepted and ignored);
2. validate them: ``--rollout-temperature`` must be > 0; ``--over-sampling-batch-size`` defaults to
   ``--rollout-batch-size`` and must not be below it (dynamic sampling's granularity, slime_validate_args);
3. build the eval datasets from ``--eval-config``, each taking ``--n-samples-per-eval-prompt`` and
   ``--eval-temperature`` unless its entry sets them;
4. only then copy every key of ``--custom-config-path`` onto ``args``, unchecked: a flag of slime's set there is
   never validated, and never reaches the eval datasets. Like slime, it logs each key that overrides one of its
   flags with both values (``Argument wandb_key is already set to None, will override with <the key>``): the
   launcher's output filter must keep that line's secret out of Ray's logs.

The launcher reads this file's ``--flag`` strings as slime's flags (search_r1_oai/config.py, flags_defined_in), as it
reads slime's own arguments files.
"""

from __future__ import annotations

import argparse

import yaml


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--custom-config-path", default=None)
    parser.add_argument("--rollout-max-context-len", type=int, default=None)
    parser.add_argument("--rollout-temperature", type=float, default=1.0)
    parser.add_argument("--rollout-batch-size", type=int, default=None)
    parser.add_argument("--over-sampling-batch-size", type=int, default=None)
    parser.add_argument("--dynamic-sampling-filter-path", type=str, default=None)
    parser.add_argument("--eval-config", default=None)
    parser.add_argument("--eval-interval", type=int, default=None)
    parser.add_argument("--eval-temperature", type=float, default=None)
    parser.add_argument("--n-samples-per-eval-prompt", type=int, default=1)
    parser.add_argument("--use-wandb", action="store_true")
    parser.add_argument("--wandb-key", default=None)
    return parser


def _resolve_eval_datasets(args: argparse.Namespace) -> list[dict]:
    if not args.eval_config:
        return []
    with open(args.eval_config) as f:
        datasets = (yaml.safe_load(f) or {})["eval"]["datasets"]
    from_args = {"n_samples_per_eval_prompt": args.n_samples_per_eval_prompt, "temperature": args.eval_temperature}
    return [{**from_args, **dataset} for dataset in datasets]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``args`` as slime's parse_args leaves it; a refused flag raises ValueError, as in slime."""
    args, _ = _parser().parse_known_args(argv)
    args.eval_datasets = _resolve_eval_datasets(args)
    if args.rollout_temperature <= 0:
        raise ValueError(
            "--rollout-temperature must be > 0; temperature 0 is greedy decoding and is not a valid RL policy."
        )
    if args.over_sampling_batch_size is None:
        args.over_sampling_batch_size = args.rollout_batch_size
    if args.rollout_batch_size is not None and args.over_sampling_batch_size < args.rollout_batch_size:
        raise ValueError(
            f"over_sampling_batch_size {args.over_sampling_batch_size} should be greater than or equal to "
            f"rollout_batch_size {args.rollout_batch_size}"
        )
    if args.custom_config_path:
        with open(args.custom_config_path) as f:
            data = yaml.safe_load(f) or {}
        for key, value in data.items():
            if hasattr(args, key):
                print(f"Warning: Argument {key} is already set to {getattr(args, key)}, will override with {value}.")
            setattr(args, key, value)
    return args
