"""What each tmux window sees of the caller's environment, and the runner scripts that hand it over.

The training window gets all of it; the retriever's window only what start_server.sh, the server and its
libraries read (``retriever_reads``), never training's settings or secrets. The variables travel in a file
created 0600 inside the run's 0700 folder; the window's runner sources it and deletes it as its first line, so
it exists only until the window has read it, never on a command line or in tmux's environment.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

# What the retriever reads: start_server.sh's variables, the server's libraries (CUDA, Hugging Face, torch,
# BLAS), the Python it runs in, proxies and CA bundles.
RETRIEVER_READS = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "SAVE_PATH", "INDEX_PATH",
    "CORPUS_PATH", "TOPK", "FAISS_GPU", "FP16", "RETRIEVER_*", "CUDA_*", "NVIDIA_*", "LD_LIBRARY_PATH", "HF_*",
    "HUGGINGFACE_*", "TRANSFORMERS_*", "SENTENCE_TRANSFORMERS_HOME", "TOKENIZERS_PARALLELISM", "TORCH_*",
    "PYTORCH_*", "OMP_*", "MKL_*", "KMP_*", "OPENBLAS_*", "XDG_CACHE_HOME", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
    "CONDA_PREFIX", "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)  # fmt: skip
# Training's, though HF_* would match it.
NOT_FOR_THE_RETRIEVER = frozenset({"HF_CKPT"})
# The terminal's own (a pane is a tmux terminal) and bash's read-only variables, which a runner cannot set.
NEVER_PASSED = frozenset({"TMUX", "TMUX_PANE", "TERM", "_", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO", "EUID",
                          "PPID", "UID"})  # fmt: skip
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def retriever_reads(name: str, extra: Sequence[str] = ()) -> bool:
    """Whether the retriever's window gets variable ``name`` (``extra``: the names in RETRIEVER_ENV)."""
    if name in NOT_FOR_THE_RETRIEVER:
        return False
    return name in extra or any(fnmatchcase(name, pattern) for pattern in RETRIEVER_READS)


def env_file_text(environ: Mapping[str, str], keep: Callable[[str], bool] = lambda _: True) -> str:
    """``export NAME=value`` lines (shell-quoted) for the variables of ``environ`` that ``keep`` accepts."""
    lines = []
    for name in sorted(environ):
        if name in NEVER_PASSED or not _IDENTIFIER.fullmatch(name) or not keep(name):
            continue
        lines.append(f"export {name}={shlex.quote(environ[name])}\n")
    return "".join(lines)


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (it must not exist) and write ``text`` into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", errors="surrogateescape") as out:  # a value that is not UTF-8 goes through as bytes
        out.write(text)


def source_once(env_file: Path, rm: str = "rm") -> str:
    """A runner's first line: read the environment file, then delete it (even if the wrapper was killed)."""
    return f". {shlex.quote(str(env_file))}; {shlex.quote(rm)} -f -- {shlex.quote(str(env_file))}\n"


def retriever_runner(env_file: Path, rm: str, server: Sequence[str], topk: str, gpus: str = "") -> str:
    """The retriever window's script: its environment, the rollout's top-k, then exec the server (the pane's PID
    is the server's PID)."""
    lines = [source_once(env_file, rm)]
    if gpus:
        lines.append(f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus)}\n")
    lines.append(f"export TOPK={shlex.quote(topk)}\n")
    lines.append(f"exec {shlex.join(server)}\n")
    return "".join(lines)


def training_runner(env_file: Path, rm: str, root: str, command: Sequence[str], log: Path, status: Path) -> str:
    """The training window's script: its environment, then training from ``root`` into ``log``; training's exit
    code goes to ``status`` when it ends (a window killed before that writes nothing)."""
    return "".join(
        [
            source_once(env_file, rm),
            f"cd {shlex.quote(root)}\n",
            f"{shlex.join(command)} 2>&1 | tee {shlex.quote(str(log))}\n",
            f'echo "${{PIPESTATUS[0]}}" >{shlex.quote(str(status))}\n',
        ]
    )
