"""The checks that pass before the wrapper starts anything: settings, and what training and the preflight need.

Each mistake is one line that says what to do. The training side's are gathered and reported together, so one
try shows every path to fix: SLIME_DIR, HF_CKPT, REF_LOAD and DATA_DIR as run_qwen2.5-3B-it.sh reads them (when
it is the training script), HF_CKPT and DATA_DIR as the preflight reads them, and the preflight's Python with the
modules it imports (unless SKIP_PREFLIGHT=1). Without these, a missing checkpoint showed up minutes later, after
the retriever had loaded, as a transformers traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from search_r1_launch.wrapper_log import LaunchError

PROBE = Path(__file__).resolve().with_name("wrapper_probe.py")
# What `python -m search_r1_oai.preflight` imports (data, tokenizer and chat template, retriever client).
PREFLIGHT_IMPORTS = ("pyarrow", "numpy", "transformers", "jinja2", "httpx", "tenacity")
PREFLIGHT_MIN_PYTHON = (3, 11)
FIX_PYTHON = (
    "set PREFLIGHT_PYTHON to this project's python (.venv/bin/python after bash scripts/setup_env.sh, or slime "
    "image's python after pip install -e .), or SKIP_PREFLIGHT=1"
)


def setting(root: Path, name: str, environ: Mapping[str, str]) -> str:
    """A setting as the rollout will see it (variable, else SEARCH_R1_CONFIG's key, else the default), read by
    the same table the training script uses."""
    command = [sys.executable, str(root / "search_r1_oai" / "config.py"), "--value", name]
    if environ.get("SEARCH_R1_CONFIG"):
        command += ["--base", environ["SEARCH_R1_CONFIG"]]
    result = subprocess.run(command, env=dict(environ), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    out = (result.stdout + result.stderr).rstrip("\n")
    if result.returncode != 0:
        raise LaunchError(out.removeprefix("error: "))
    return out


def from_root(root: Path, path: str) -> Path:
    """A path as the training window (which runs in ``root``) reads it."""
    return Path(path) if os.path.isabs(path) else root / path


@dataclass(frozen=True)
class TrainingPaths:
    """What training and the preflight read, relative paths made absolute against the wrapper's folder."""

    slime_dir: Path
    hf_ckpt: Path
    ref_load: Path
    data_dir: Path

    @property
    def train_parquet(self) -> Path:
        return self.data_dir / "train.parquet"


def training_problems(paths: TrainingPaths, *, our_script: bool, preflight: bool) -> list[str]:
    """One line per missing path the training script (``our_script``) or the preflight would stop at."""
    problems = []
    if our_script and not (paths.slime_dir / "train.py").is_file():
        problems.append(
            f"slime not found at SLIME_DIR={paths.slime_dir} (no train.py there): clone THUDM/slime there or set "
            "SLIME_DIR"
        )
    if (our_script or preflight) and not paths.hf_ckpt.is_dir():
        problems.append(
            f"HF checkpoint not found at HF_CKPT={paths.hf_ckpt}: set HF_CKPT to the folder of the Hugging Face "
            "checkpoint (see README: Checkpoints)"
        )
    if our_script and not paths.ref_load.is_dir():
        problems.append(
            f"torch_dist checkpoint not found at REF_LOAD={paths.ref_load}: convert HF_CKPT with slime's "
            "tools/convert_hf_to_torch_dist.py or set REF_LOAD (see README: Checkpoints)"
        )
    if (our_script or preflight) and not paths.train_parquet.is_file():
        problems.append(
            f"{paths.train_parquet} missing: run python data_preprocess.py --local_dir {paths.data_dir}, or set "
            "DATA_DIR to the folder that holds train.parquet"
        )
    return problems


def probe_report(python: str, returncode: int, stdout: str, stderr: str, imports: tuple[str, ...]) -> list[str]:
    """The problems in what wrapper_probe.py printed under ``python`` (empty: it has all of ``imports``)."""
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        version = tuple(int(part) for part in report["python"])
        missing = [str(name) for name in report["missing"]]
    except (ValueError, LookupError, TypeError, AttributeError):
        output = (stderr or stdout).strip()
        last = output.splitlines()[-1] if output else "no output"
        return [
            f"PREFLIGHT_PYTHON={python} could not run a Python script (exit code {returncode}: {last}); {FIX_PYTHON}"
        ]
    if version < PREFLIGHT_MIN_PYTHON:
        shown = ".".join(map(str, version))
        return [f"PREFLIGHT_PYTHON={python} is Python {shown}, the preflight needs >= 3.11; {FIX_PYTHON}"]
    unknown = [name for name in missing if name not in imports]
    if unknown:
        return [f"PREFLIGHT_PYTHON={python}: its report names modules never asked about ({unknown}); {FIX_PYTHON}"]
    if missing:
        return [
            f"PREFLIGHT_PYTHON={python} cannot import {', '.join(missing)}, which the preflight needs; {FIX_PYTHON}"
        ]
    return []


def preflight_python_problems(python: str, environ: Mapping[str, str], timeout_s: float = 60) -> list[str]:
    """Whether ``python`` exists, is new enough and finds every module the preflight imports."""
    if not shutil.which(python, path=environ.get("PATH")):
        return [
            f"PREFLIGHT_PYTHON={python} not found: name the python that has this project's dependencies, or "
            "SKIP_PREFLIGHT=1"
        ]
    imports = PREFLIGHT_IMPORTS + (("yaml",) if environ.get("SEARCH_R1_CONFIG") else ())
    try:
        result = subprocess.run(
            [python, str(PROBE), *imports],
            env=dict(environ),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return [f"PREFLIGHT_PYTHON={python} did not answer within {timeout_s:.0f}s; {FIX_PYTHON}"]
    except OSError as err:
        return [f"PREFLIGHT_PYTHON={python} cannot run ({err.strerror}); {FIX_PYTHON}"]
    return probe_report(python, result.returncode, result.stdout, result.stderr, imports)
