"""The wrapper's settings as the .sh passes them (its defaults are visible there), and the user's arguments.

    python3 search_r1_launch/wrapper.py --script PATH --session NAME ... -- [--attach|--cleanup] [-- slime flags]

Everything before the first ``--`` comes from the .sh; what follows is the user's command line.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from search_r1_launch.wrapper_log import LaunchError

SESSION = re.compile(r"[^\x00-\x1f\x7f:.]+")


@dataclass
class Settings:
    script: str  # the .sh, as the user named it (for "run bash ... --cleanup")
    session: str
    log_dir: str
    ready_timeout: str
    train_script: str
    skip_preflight: str
    preflight_python: str
    slime_dir: str
    hf_ckpt: str
    ref_load: str
    data_dir: str
    host: str = ""
    retriever_gpus: str = ""
    retriever_env: str = ""
    environ_fd: int | None = None  # where the .sh's exact environment arrives (`env -0`), see read_environ
    attach: bool = False
    cleanup: bool = False
    help: bool = False
    train_args: list[str] = field(default_factory=list)


def _settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search_r1_launch/wrapper.py", add_help=False)
    for name in ("script", "session", "log-dir", "ready-timeout", "train-script", "skip-preflight",
                 "preflight-python", "slime-dir", "hf-ckpt", "ref-load", "data-dir"):  # fmt: skip
        parser.add_argument(f"--{name}", required=True)
    for name in ("host", "retriever-gpus", "retriever-env"):
        parser.add_argument(f"--{name}", default="")
    parser.add_argument("--environ-fd", type=int, default=None)
    return parser


def read_environ(fd: int) -> dict[str, str]:
    """The caller's environment as the .sh saw it, NUL-separated on ``fd``.

    Not this process's own: a ``python3`` that is a pyenv (or similar) shim reaches here with PATH and PYENV_*
    changed, and the training window must get exactly what the user started the .sh with."""
    with os.fdopen(fd, "rb") as stream:
        data = stream.read()
    environ = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            environ[os.fsdecode(name)] = os.fsdecode(value)
    return environ


def parse(argv: Sequence[str]) -> Settings:
    """The .sh's settings, then (after ``--``) the user's arguments; a LaunchError for a mistake in the latter."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    settings = Settings(**vars(_settings_parser().parse_args(argv[:split])))
    user = argv[split + 1 :]
    while user:
        arg = user.pop(0)
        if arg == "--attach":
            settings.attach = True
        elif arg == "--cleanup":
            settings.cleanup = True
        elif arg in ("-h", "--help"):
            settings.help = True
            return settings
        elif arg == "--":
            break
        elif arg == "--dry-run":
            raise LaunchError(
                "this script has no dry run (it starts a retriever); check the training with: bash "
                "run_qwen2.5-3B-it.sh --dry-run"
            )
        else:
            raise LaunchError(f"unknown argument: {arg} (slime flags go after --; see --help)")
    settings.train_args = user
    if settings.cleanup and (settings.attach or settings.train_args):
        raise LaunchError("--cleanup takes no other argument")
    if not SESSION.fullmatch(settings.session):
        raise LaunchError(
            f"TMUX_SESSION must be a non-empty name without control characters, ':' or '.' (got '{settings.session}')"
        )
    # The training script's --dry-run counts anywhere among its flags: here it would start the retriever for nothing.
    if "--dry-run" in settings.train_args:
        raise LaunchError(
            "--dry-run after -- would start the retriever for nothing: run bash run_qwen2.5-3B-it.sh --dry-run [flags]"
        )
    return settings
