"""Stand-in for slime's train.py: loads ``--custom-config-path`` as slime does, reports how the Ray job ran it and
what the rollout's settings are there, then sleeps and exits as the test asks.

slime copies every key of the config YAML onto ``args``; the launcher puts the rollout settings there, and the
test steers this script through the same file: ``standin_report`` (where to write the report), ``standin_sleep``
(seconds to stay running, so the test can interrupt the launcher mid-job) and ``standin_exit`` (the exit code, to
test failed jobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import yaml

FORWARDED = ("WANDB_API_KEY", "RETRIEVAL_SERVER_URL", "PYTHONPATH", "CUDA_DEVICE_MAX_CONNECTIONS")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The two flags of slime's that matter here; everything else is ignored."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--custom-config-path", default=None)
    parser.add_argument("--rollout-max-context-len", type=int, default=None)
    args, _ = parser.parse_known_args(argv)
    if args.custom_config_path:  # what slime/utils/arguments.py does after parsing
        with open(args.custom_config_path) as f:
            data = yaml.safe_load(f) or {}
        for key, value in data.items():
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    # What a rollout worker will see: the job's environment carries no settings, so they come from args.
    from search_r1_oai.config import load_settings

    settings = dataclasses.asdict(load_settings(args))
    env = {k: v for k, v in os.environ.items() if k in FORWARDED or k.startswith("SEARCH_R1_")}
    report = args.standin_report
    # Written whole, then renamed: the test polls for the file and must never read half of it.
    with open(report + ".tmp", "w") as f:
        json.dump({"cwd": os.getcwd(), "argv": sys.argv, "env": env, "pid": os.getpid(), "settings": settings}, f)
    os.replace(report + ".tmp", report)
    time.sleep(float(getattr(args, "standin_sleep", 0)))
    return int(getattr(args, "standin_exit", 0))


if __name__ == "__main__":
    sys.exit(main())
