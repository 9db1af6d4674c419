"""Stand-in for slime's train.py: reports how the Ray job ran it, then sleeps and exits as the test asks.

The launcher forwards every SEARCH_R1_* variable to the job, so the test steers this script through them:
SEARCH_R1_STANDIN_REPORT (where to write the report), SEARCH_R1_STANDIN_SLEEP (seconds to stay running, so the
test can interrupt the launcher mid-job) and SEARCH_R1_STANDIN_EXIT (the exit code, to test failed jobs).
"""

from __future__ import annotations

import json
import os
import sys
import time

FORWARDED = ("WANDB_API_KEY", "RETRIEVAL_SERVER_URL", "PYTHONPATH", "CUDA_DEVICE_MAX_CONNECTIONS")


def main() -> int:
    report = os.environ["SEARCH_R1_STANDIN_REPORT"]
    env = {k: v for k, v in os.environ.items() if k in FORWARDED or k.startswith("SEARCH_R1_")}
    # Written whole, then renamed: the test polls for the file and must never read half of it.
    with open(report + ".tmp", "w") as f:
        json.dump({"cwd": os.getcwd(), "argv": sys.argv, "env": env, "pid": os.getpid()}, f)
    os.replace(report + ".tmp", report)
    time.sleep(float(os.environ.get("SEARCH_R1_STANDIN_SLEEP", "0")))
    return int(os.environ.get("SEARCH_R1_STANDIN_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
