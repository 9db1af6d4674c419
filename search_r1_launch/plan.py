"""What ``run_qwen2.5-3B-it.sh`` will run, checked before any GPU is spent: the settings, the paths, the sizes
Megatron and slime would refuse, the eval sets and the rollout settings; then the train command, the Ray head's
command and the job's runtime environment.

The script passes its slime flags in sections (see :func:`split_sections`) and exports the settings those flags
use; the launcher's own settings (the cluster, the eval sets, Megatron's path) are read here with their defaults.
A value that cannot work is a :class:`LaunchError` (one line). A path a live run needs but this machine lacks is a
:class:`LaunchError` in a live run and one warning in a dry run, which may run on a login node without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from search_r1_launch.eval_sets import EvalSetError, EvalSets, find_eval_sets
from search_r1_oai.columns import SLIME_KEY_FLAGS

ROOT = Path(__file__).resolve().parent.parent
# Markers between the script's flag sections; the last one's words are the caller's own, passed as they are.
EVAL_MARK, DYNAMIC_MARK, EXTRA_MARK = "::eval", "::dynamic-sampling", "::extra"
DRY_RUN_FLAG = "--dry-run"
POSITIVE = (
    *("NUM_NODES", "NUM_GPUS", "TP_SIZE", "RAY_PORT", "RAY_DASHBOARD_PORT", "RAY_CLUSTER_TIMEOUT", "NUM_ROLLOUT"),
    *("ROLLOUT_BATCH_SIZE", "N_SAMPLES_PER_PROMPT", "GLOBAL_BATCH_SIZE", "MAX_TOKENS_PER_TURN", "MAX_TOKENS_PER_GPU"),
    "SAVE_INTERVAL",
)
NON_NEGATIVE = ("EVAL_INTERVAL", "EVAL_MAX_SAMPLES")
# The launcher's own settings (the script's header documents them); the flag settings come from the script.
OWN_DEFAULTS = {
    "MEGATRON_DIR": "/root/Megatron-LM",
    "RAY_PORT": "6379",
    "RAY_DASHBOARD_PORT": "8265",
    "RAY_CLUSTER_TIMEOUT": "600",
    "RAY_START_ARGS": "",
    "EVAL_MAX_SAMPLES": "500",
    "SEARCH_R1_CONFIG": "",
}
# slime has eval versions of these key flags (not of --metadata-key): --eval-input-key and so on.
EVAL_KEYED = ("--input-key", "--label-key", "--tool-key")
# slime's own filter (slime/rollout/filter_hub/dynamic_sampling_filters.py): it drops a group whose rewards have
# zero standard deviation, i.e. are all equal, and counts it in rollout/dynamic_filter/drop_zero_std_<reward>.
FILTER_FILE = Path("slime/rollout/filter_hub/dynamic_sampling_filters.py")
OVER_SAMPLING_FACTOR = 2


class LaunchError(ValueError):
    """A setting or path that stops the run: the message is the one line the user sees after ``error: ``."""


@dataclass(frozen=True)
class Sections:
    """The script's slime flags: always passed, passed when evaluation is on, passed with dynamic sampling, and the
    caller's extra arguments (with ``--dry-run`` taken out)."""

    base: tuple[str, ...]
    eval: tuple[str, ...]
    dynamic: tuple[str, ...]
    extra: tuple[str, ...]
    dry_run: bool


def split_sections(argv: Sequence[str]) -> Sections:
    """``BASE... ::eval EVAL... ::dynamic-sampling DYNAMIC... ::extra EXTRA...`` (markers in this order, each once).
    ``--dry-run`` counts anywhere among EXTRA (``--num-rollout 5 --dry-run`` must never be a live run)."""
    words = list(argv)
    try:
        e, d, x = words.index(EVAL_MARK), words.index(DYNAMIC_MARK), words.index(EXTRA_MARK)
    except ValueError:
        raise LaunchError(f"the launcher needs the sections {EVAL_MARK}, {DYNAMIC_MARK}, {EXTRA_MARK}") from None
    if not e < d < x:
        raise LaunchError(f"the launcher's sections must come in the order {EVAL_MARK} {DYNAMIC_MARK} {EXTRA_MARK}")
    extra = words[x + 1 :]
    return Sections(
        tuple(words[:e]),
        tuple(words[e + 1 : d]),
        tuple(words[d + 1 : x]),
        tuple(w for w in extra if w != DRY_RUN_FLAG),
        DRY_RUN_FLAG in extra,
    )


def key_flags() -> list[str]:
    """slime's key flags for training and evaluation, from the one definition of the slime-ready columns."""
    return [word for flag, column in SLIME_KEY_FLAGS.items() for word in (flag, column)]


def eval_key_flags() -> list[str]:
    return [word for flag in EVAL_KEYED for word in (f"--eval-{flag[2:]}", SLIME_KEY_FLAGS[flag])]


def flag_value(argv: Sequence[str], name: str, default: str) -> str:
    """The last value of ``name`` on ``argv`` (argparse: the last one wins), or ``default``."""
    value = default
    for i, word in enumerate(argv):
        if word == name:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def positive(argv: Sequence[str], name: str, default: str) -> int:
    value = flag_value(argv, name, default)
    if not re.fullmatch(r"[1-9][0-9]*", value):
        raise LaunchError(f"{name} must be a positive integer, got '{value}'")
    return int(value)


@dataclass
class Settings:
    """The values the launcher works with: the script's exported flag settings and its own, as given."""

    values: dict[str, str]
    eval_dir_given: bool

    @classmethod
    def read(cls, env: Mapping[str, str], cwd: Path) -> Settings:
        values = {name: env.get(name, "") or default for name, default in OWN_DEFAULTS.items()}
        for name in (*POSITIVE, *NON_NEGATIVE, "SLIME_DIR", "HF_CKPT", "REF_LOAD", "SAVE_DIR", "DATA_DIR"):
            values.setdefault(name, env.get(name, ""))
        values["MASTER_ADDR"] = env.get("MASTER_ADDR", "")
        for name in ("MEGATRON_DIR", "SEARCH_R1_CONFIG"):
            if values[name]:
                values[name] = str(cwd / values[name])  # the job runs in SLIME_DIR: relative paths mean here
        given = bool(env.get("EVAL_DIR"))
        values["EVAL_DIR"] = str(cwd / env["EVAL_DIR"]) if given else f"{values['DATA_DIR']}/eval"
        return cls(values, given)

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def number(self, name: str) -> int:
        return int(self.values[name])

    def check(self, extra: Sequence[str]) -> None:
        """Numbers, MASTER_ADDR and the flag this script owns: the first problem is the error."""
        for name in POSITIVE:
            if not re.fullmatch(r"[1-9][0-9]*", self.values[name]):
                raise LaunchError(f"{name} must be a positive integer, got '{self.values[name]}'")
        for name in NON_NEGATIVE:
            if not re.fullmatch(r"0|[1-9][0-9]*", self.values[name]):
                raise LaunchError(f"{name} must be an integer >= 0 (0 = off/all), got '{self.values[name]}'")
        if not self.values["MASTER_ADDR"]:
            if self.number("NUM_NODES") != 1:
                raise LaunchError(
                    f"NUM_NODES={self['NUM_NODES']} needs MASTER_ADDR: set it to this node's IP address that the"
                    " other nodes reach (hostname -I lists them)"
                )
            self.values["MASTER_ADDR"] = "127.0.0.1"
        if any(word.startswith("--custom-config-path") for word in extra):
            raise LaunchError(
                "--custom-config-path is set by this script; name your YAML with SEARCH_R1_CONFIG=FILE instead"
            )


@dataclass
class Checker:
    """Collects what a dry run may look past (a path missing here) as warnings; a live run stops at the first."""

    dry_run: bool
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(f"warning: {message}")

    def refuse(self, message: str) -> None:
        if not self.dry_run:
            raise LaunchError(message)
        self.warn(f"a live run stops here: {message}")


def check_paths(settings: Settings, checker: Checker) -> bool:
    """Every checkout, checkpoint and the training data; True when slime is there."""
    slime = Path(settings["SLIME_DIR"])
    found = (slime / "train.py").is_file()
    if not found:
        checker.refuse(
            f"slime not found at SLIME_DIR={slime} (clone THUDM/slime there or set SLIME_DIR): the train command"
            " has no model flags (slime's scripts/models/qwen2.5-3B.sh)"
        )
    if not Path(settings["MEGATRON_DIR"]).is_dir():
        checker.refuse(
            f"Megatron-LM not found at MEGATRON_DIR={settings['MEGATRON_DIR']} (slime's image has it; or set"
            " MEGATRON_DIR)"
        )
    if not Path(settings["HF_CKPT"]).is_dir():
        checker.refuse(f"HF checkpoint not found at HF_CKPT={settings['HF_CKPT']} (see README: Checkpoints)")
    if not Path(settings["REF_LOAD"]).is_dir():
        checker.refuse(f"torch_dist checkpoint not found at REF_LOAD={settings['REF_LOAD']} (see README: Checkpoints)")
    data = settings["DATA_DIR"]
    if not Path(data, "train.parquet").is_file():
        checker.refuse(f"{data}/train.parquet missing: run python data_preprocess.py --local_dir {data}")
    return found


def ray_version() -> str | None:
    """The version of the ``ray`` this python3 imports; None when it cannot import it."""
    try:
        import ray
    except ImportError:
        return None
    return str(getattr(ray, "__version__", ""))


def check_live_tools(log: list[str]) -> None:
    """What only the live run uses (a dry run may run on a login node without it)."""
    if shutil.which("ray") is None:
        raise LaunchError("ray is not installed in this environment (use slime's image)")
    version = ray_version()
    if version is None:
        raise LaunchError("python3 cannot import ray: run in the Python environment that has ray (slime's image)")
    # Token authentication came with Ray 2.52; an older Ray ignores RAY_AUTH_MODE and its head lets anyone in.
    match = re.match(r"(\d+)\.(\d+)", version)
    if match and (int(match[1]), int(match[2])) < (2, 52):
        log.append(
            f"warning: Ray {version} has no token authentication (Ray >= 2.52): anyone who reaches the cluster's"
            " ports can submit jobs, i.e. run any code as you; upgrade ray"
        )
    try:
        chdir_works = subprocess.run(["env", "--chdir=/", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        chdir_works = False
    if not chdir_works:
        raise LaunchError("env --chdir is not supported here (needs GNU coreutils >= 8.28)")


@dataclass(frozen=True)
class Evaluation:
    """Evaluation as the run will do it: the flags, the sets (None when off) and one line saying so."""

    flags: tuple[str, ...]
    sets: EvalSets | None
    summary: str


def plan_evaluation(settings: Settings, flags: Sequence[str], checker: Checker) -> Evaluation:
    """Evaluation runs the training hook greedily on every set of EVAL_DIR; a missing default folder is a warning
    (the run trains without evaluation), anything else wrong with the sets is an error."""
    interval, folder = settings.number("EVAL_INTERVAL"), Path(settings["EVAL_DIR"])
    if interval == 0:
        return Evaluation((), None, "off (EVAL_INTERVAL=0)")
    if not settings.eval_dir_given and not folder.exists():
        checker.warn(
            f"no eval sets at {folder}: training without evaluation (make them with python data_preprocess.py"
            " --eval_sets nq,hotpotqa,..., or set EVAL_DIR; EVAL_INTERVAL=0 silences this)"
        )
        return Evaluation((), None, f"off (no {folder})")
    make = "python data_preprocess.py --eval_sets nq,hotpotqa,... (one SET.parquet each)"
    if not folder.is_dir():
        raise LaunchError(f"EVAL_DIR={folder} is not a folder; make the eval sets with {make} or set EVAL_INTERVAL=0")
    try:
        sets = find_eval_sets(folder, settings.number("EVAL_MAX_SAMPLES"), pyarrow_required=not checker.dry_run)
    except EvalSetError as error:
        raise LaunchError(str(error)) from None
    if not sets.datasets:
        raise LaunchError(
            f"EVAL_INTERVAL={interval} but EVAL_DIR={folder} holds no *.parquet eval set; make them with {make} or"
            " set EVAL_INTERVAL=0"
        )
    summary = f"every {interval} rollouts and before training, greedy, on {len(sets.datasets)} set(s): "
    return Evaluation((*flags, *eval_key_flags()), sets, summary + ", ".join(sets.described))


def check_filter(settings: Settings, filter_path: str, checker: Checker) -> None:
    """slime loads the dynamic-sampling filter only in the first rollout: a slime without it fails there, after the
    model is loaded. Its file is read here instead (not imported: it needs torch)."""
    module, _, name = filter_path.rpartition(".")
    source = Path(settings["SLIME_DIR"], *module.split(".")).with_suffix(".py")
    try:
        text = source.read_text()
    except OSError:
        text = ""
    if not re.search(rf"^def {re.escape(name)}\(", text, re.MULTILINE):
        checker.refuse(
            f"DYNAMIC_SAMPLING=1 needs {filter_path} ({source} defines no {name}): update slime, or unset"
            " DYNAMIC_SAMPLING"
        )


def _data_parallel_size(gpus: int, total: int, tp: int, pp: int, cp: int, engine: int) -> int:
    """The data-parallel size, once the GPUs split the way Megatron and slime's engines need."""
    # Megatron splits each node's GPUs into tensor-parallel groups; SGLang runs engines of `engine` GPUs on a node.
    if gpus % tp:
        raise LaunchError(
            f"the tensor-parallel size {tp} (TP_SIZE or --tensor-model-parallel-size) does not divide NUM_GPUS={gpus}"
            f" (GPUs per node): Megatron cannot split the node's GPUs into groups of {tp}"
        )
    if gpus % engine:
        raise LaunchError(
            f"the SGLang engine size {engine} (TP_SIZE or --rollout-num-gpus-per-engine) does not divide"
            f" NUM_GPUS={gpus} (GPUs per node): slime cannot place its engines"
        )
    if total % (tp * pp * cp):  # Megatron's validate_args: the rest of the world size is data parallel
        raise LaunchError(
            f"NUM_NODES x NUM_GPUS = {total} GPUs is not a multiple of tensor x pipeline x context parallel ="
            f" {tp} x {pp} x {cp} (Megatron refuses it)"
        )
    return total // (tp * pp * cp)


def check_sizes(settings: Settings, argv: Sequence[str], checker: Checker) -> int:
    """Sizes Megatron or slime would refuse after the GPUs are allocated; returns the rollout batch size (prompts).
    ``argv`` is the train command with the caller's flags last (their values win)."""
    gpus, total = settings.number("NUM_GPUS"), settings.number("NUM_GPUS") * settings.number("NUM_NODES")
    tp = positive(argv, "--tensor-model-parallel-size", settings["TP_SIZE"])
    pp = positive(argv, "--pipeline-model-parallel-size", "1")
    cp = positive(argv, "--context-parallel-size", "1")
    engine = positive(argv, "--rollout-num-gpus-per-engine", settings["TP_SIZE"])
    micro = positive(argv, "--micro-batch-size", "1")  # slime's default
    prompts = positive(argv, "--rollout-batch-size", settings["ROLLOUT_BATCH_SIZE"])
    n_samples = positive(argv, "--n-samples-per-prompt", settings["N_SAMPLES_PER_PROMPT"])
    batch = positive(argv, "--global-batch-size", settings["GLOBAL_BATCH_SIZE"])
    per_rollout = prompts * n_samples
    dp = _data_parallel_size(gpus, total, tp, pp, cp, engine)
    if batch % (micro * dp):  # Megatron's micro-batch calculator: whole micro-batches per data-parallel rank
        raise LaunchError(
            f"GLOBAL_BATCH_SIZE={batch} is not a multiple of micro-batch size x data-parallel size = {micro} x {dp}"
            f" ({total} GPUs / TP {tp} / PP {pp} / CP {cp}): Megatron refuses it"
        )
    if per_rollout < batch:  # slime (utils/dp_schedule.py) asserts at the first training step that there is one
        raise LaunchError(
            f"a rollout makes ROLLOUT_BATCH_SIZE x N_SAMPLES_PER_PROMPT = {prompts} x {n_samples} = {per_rollout}"
            f" samples, fewer than GLOBAL_BATCH_SIZE={batch}: slime fails its first training step"
        )
    steps = flag_value(argv, "--num-steps-per-rollout", "")
    if steps:
        if not re.fullmatch(r"[1-9][0-9]*", steps):
            raise LaunchError(f"--num-steps-per-rollout must be a positive integer, got '{steps}'")
        if batch != per_rollout // int(steps):
            raise LaunchError(
                f"--num-steps-per-rollout {steps} needs GLOBAL_BATCH_SIZE = {per_rollout} / {steps} ="
                f" {per_rollout // int(steps)}, got {batch} (slime refuses it)"
            )
    over = flag_value(argv, "--over-sampling-batch-size", "")
    if over and (not re.fullmatch(r"[1-9][0-9]*", over) or int(over) < prompts):
        raise LaunchError(
            f"--over-sampling-batch-size {over} must be an integer >= the rollout batch size {prompts} (slime"
            " refuses it)"
        )
    if per_rollout % batch:
        checker.warn(
            f"{per_rollout % batch} of each rollout's {per_rollout} samples (ROLLOUT_BATCH_SIZE x"
            f" N_SAMPLES_PER_PROMPT) are not trained on: slime trains whole steps of GLOBAL_BATCH_SIZE={batch}"
        )
    return prompts


def placement(settings: Settings) -> list[str]:
    """``train.py`` by its absolute path, in SLIME_DIR (a Ray job runs where the cluster's head was started, and
    slime resolves some paths against its folder), on every GPU of the cluster, training and rollout colocated."""
    slime, nodes, gpus = settings["SLIME_DIR"], settings.number("NUM_NODES"), settings.number("NUM_GPUS")
    return [
        *("env", f"--chdir={slime}", "python3", f"{slime}/train.py"),
        *("--actor-num-nodes", str(nodes), "--actor-num-gpus-per-node", str(gpus)),
        *("--rollout-num-gpus", str(nodes * gpus), "--colocate"),
    ]


def head_command(settings: Settings) -> list[str]:
    """The Ray head a run starts when no cluster answers: its dashboard (job submission) on loopback only; the
    other ports are bound where Ray chooses (no flag moves them) and guarded by the token (README: Security)."""
    return [
        *("ray", "start", "--head", "--block", "--node-ip-address", settings["MASTER_ADDR"]),
        *("--port", settings["RAY_PORT"], "--dashboard-host", "127.0.0.1"),
        *("--dashboard-port", settings["RAY_DASHBOARD_PORT"], "--num-gpus", settings["NUM_GPUS"]),
        "--disable-usage-stats",
        *settings["RAY_START_ARGS"].split(),
    ]


def worker_command(settings: Settings) -> list[str]:
    address = f"{settings['MASTER_ADDR']}:{settings['RAY_PORT']}"
    return ["ray", "start", "--address", address, "--num-gpus", settings["NUM_GPUS"]]


def runtime_env(settings: Settings) -> dict[str, dict[str, str]]:
    """What the job's processes need from here (no secret: Ray's dashboard lists it and its agent logs it)."""
    return {"env_vars": {"PYTHONPATH": f"{settings['MEGATRON_DIR']}:{ROOT}", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}}


def job_id() -> str:
    return f"search-r1-oai-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
