"""Stand-in for slime's train.py: parses its command line as slime does (slime/utils/arguments.py beside it: flags,
validation, eval datasets, then ``--custom-config-path``), reports how the Ray job ran it and what the rollout's
settings are there, then sleeps and exits as the test asks.

slime copies every key of the config YAML onto ``args``; the launcher puts the rollout settings there, and the
test steers this script through the same file: ``standin_report`` (where to write the report), ``standin_sleep``
(seconds to stay running, so the test can interrupt the launcher mid-job) and ``standin_exit`` (the exit code, to
test failed jobs).

The secrets it was given (``args.wandb_key``, which slime logs in to W&B with, and the rollout's retriever key) are
reported as SHA-256 digests, so the report itself holds no secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
import time

from slime.utils.arguments import parse_args

FORWARDED = ("WANDB_API_KEY", "RETRIEVAL_SERVER_URL", "PYTHONPATH", "CUDA_DEVICE_MAX_CONNECTIONS")


def digest(secret: str | None) -> str | None:
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()


def resolved(path: str | None) -> str | None:
    """slime's load_function: a dotted path's module imported, its attribute taken; reported by qualified name."""
    if path is None:
        return None
    module, name = path.rsplit(".", 1)
    function = getattr(importlib.import_module(module), name)
    return f"{function.__module__}.{function.__qualname__}" if callable(function) else None


def main() -> int:
    args = parse_args(sys.argv[1:])
    # What a rollout worker will see: the job's environment carries no settings, so they come from args.
    from search_r1_oai.config import load_settings

    settings = dataclasses.asdict(load_settings(args))
    retriever_key = settings.pop("retriever_api_key")
    env = {k: v for k, v in os.environ.items() if k in FORWARDED or k.startswith("SEARCH_R1_")}
    report = args.standin_report
    # Written whole, then renamed: the test polls for the file and must never read half of it.
    with open(report + ".tmp", "w") as f:
        json.dump(
            {
                "cwd": os.getcwd(),
                "argv": sys.argv,
                "env": env,
                "pid": os.getpid(),
                "settings": settings,
                "rollout_temperature": args.rollout_temperature,
                "eval_datasets": args.eval_datasets,
                "over_sampling_batch_size": args.over_sampling_batch_size,
                "dynamic_sampling_filter": resolved(args.dynamic_sampling_filter_path),
                "wandb_key_sha256": digest(args.wandb_key),
                "retriever_api_key_sha256": digest(retriever_key),
            },
            f,
        )
    os.replace(report + ".tmp", report)
    time.sleep(float(getattr(args, "standin_sleep", 0)))
    return int(getattr(args, "standin_exit", 0))


if __name__ == "__main__":
    sys.exit(main())
