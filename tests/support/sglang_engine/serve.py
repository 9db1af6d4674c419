"""Start SGLang's real HTTP server with the scripted engine in place of the model (run with an SGLang test venv).

Usage: ``.venv-sglang-<version>/bin/python tests/support/sglang_engine/serve.py --model-dir DIR --port P --control-port C``.
``tests/support/real_sglang.py`` starts it in its own process group and stops it by that group.

Everything but the scheduler is SGLang's: ``launch_server`` builds the TokenizerManager (chat template, tool
parser, the ``generation_config.json`` sampling defaults), spawns the DetokenizerManager, and serves the FastAPI
app; ``run_scheduler_process_func`` gets :func:`scripted_scheduler.run_scripted_scheduler` instead of the model.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="tokenizer + config.json + generation_config.json")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--control-port", type=int, required=True, help="the scripted engine's control port")
    parser.add_argument("--served-model-name", default="qwen2.5-3b")
    args = parser.parse_args(argv)

    # The scheduler subprocess is spawned: it finds this folder, the torchvision stand-in and tests/support (for
    # scripted_logprob, imported flat: this venv does not have the project on its path) via PYTHONPATH.
    extra = [str(HERE), str(HERE / "standin"), str(HERE.parent)]
    os.environ["PYTHONPATH"] = os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path[:0] = extra
    os.environ["SCRIPTED_ENGINE_CONTROL_PORT"] = str(args.control_port)

    from scripted_scheduler import run_scripted_scheduler
    from sglang.srt.entrypoints.http_server import launch_server
    from sglang.srt.server_args import ServerArgs

    wanted = {
        "model_path": args.model_dir,
        "tokenizer_path": args.model_dir,
        "served_model_name": args.served_model_name,
        "host": "127.0.0.1",
        "port": args.port,
        "tool_call_parser": "qwen25",
        "device": "cpu",
        "skip_server_warmup": True,
        "load_format": "dummy",
        "mem_fraction_static": 0.5,
        "disable_cuda_graph": True,
        "log_level": "warning",
    }
    fields = inspect.signature(ServerArgs).parameters
    server_args = ServerArgs(**{key: value for key, value in wanted.items() if key in fields})
    launch_server(server_args, run_scheduler_process_func=run_scripted_scheduler)


if __name__ == "__main__":
    main()
