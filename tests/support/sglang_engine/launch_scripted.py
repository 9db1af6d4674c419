"""``python -m sglang.launch_server`` for the tests: SGLang's own flags and server, the scripted engine as the model.

Usage: ``.venv-sglang-<version>/bin/python tests/support/sglang_engine/launch_scripted.py <launch_server flags>``,
e.g. as ``evaluate.py --model DIR --sglang-command "..."``. The flags are parsed by SGLang's own
``ServerArgs.add_cli_args`` (so a flag ``python -m sglang.launch_server`` refuses is refused here too); the CPU
settings the scripted engine needs (``serve.py``'s) are then applied. Environment: ``SCRIPTED_ENGINE_CONTROL_PORT``
(the engine's control port) and ``SCRIPTED_ENGINE_SCRIPT``, a JSON file of ``{"question", "replies", "standing"}``
entries loaded into the engine before the server answers (the caller cannot script a server it does not start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# What the scripted engine needs on a CPU; everything else comes from the command line.
CPU_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "skip_server_warmup": True,
    "load_format": "dummy",
    "mem_fraction_static": 0.5,
    "disable_cuda_graph": True,
    "log_level": "warning",
}


def run_preloaded_scheduler(*args: Any) -> None:
    """:func:`scripted_scheduler.run_scripted_scheduler` with the script file loaded into its state first."""
    import scripted_scheduler

    class PreloadedState(scripted_scheduler.ScriptState):
        def __init__(self) -> None:
            super().__init__()
            path = os.environ.get("SCRIPTED_ENGINE_SCRIPT")
            for entry in json.loads(Path(path).read_text()) if path else []:
                self.add(entry["question"], entry["replies"], replace=False, standing=bool(entry.get("standing")))

    scripted_scheduler.ScriptState = PreloadedState
    scripted_scheduler.run_scripted_scheduler(*args)


def main(argv: list[str] | None = None) -> None:
    extra = [str(HERE), str(HERE / "standin"), str(HERE.parent)]
    os.environ["PYTHONPATH"] = os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path[:0] = extra

    from launch_scripted import run_preloaded_scheduler as scheduler  # by module name: the spawned child imports it
    from sglang.srt.entrypoints.http_server import launch_server
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="launch_scripted")
    ServerArgs.add_cli_args(parser)
    namespace = parser.parse_args(argv)
    for key, value in CPU_SETTINGS.items():
        if hasattr(namespace, key):
            setattr(namespace, key, value)
    launch_server(ServerArgs.from_cli_args(namespace), run_scheduler_process_func=scheduler)


if __name__ == "__main__":
    main()
