"""run_qwen2.5-3B-it.sh run for real against Ray 2.60 (CPU build, logical GPUs) and a stand-in slime checkout.

What a user of the launcher relies on, each checked with real Ray clusters:
- the job runs slime's train.py from SLIME_DIR whatever folder the script is called from and whichever cluster it
  uses (one it starts, or one already running), with the project's settings in its slime config
  (--custom-config-path, read by load_settings(args) in the job), the W&B key on slime's args (wandb_key, from the
  same private file), and the key on no command line, in no runtime env, no output and no Ray log;
- a head the launcher starts uses Ray's token authentication and binds its dashboard to loopback; a reused cluster
  without authentication gets a warning;
- the script's exit code is the job's outcome, and Ctrl-C / TERM stop the job;
- a cluster the script started is gone after it, a cluster it reused keeps running, and another Ray cluster on the
  machine is never touched (the script never runs `ray stop`);
- with NUM_NODES > 1 it prints the worker command, waits until the workers' GPUs are there, or says what is missing.

Every Ray port of every cluster here is a free port (no fixed default is used) and every cluster keeps its files
under one private temp dir, so a developer's Ray on the same machine is never reached. The tests stop what they
started by PID and session, and check at the end that no Ray process of theirs is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.live_server import free_port

pytestmark = pytest.mark.e2e  # a real CPU Ray cluster and job

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "run_qwen2.5-3B-it.sh"
STANDIN = Path(__file__).resolve().parent / "support" / "slime_standin"
SECRET = "wandb-test-key-7f3a9c0e"
# Upper bounds only (they never decide a pass): a Ray head starts in ~5-10 s on two cores.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 180.0


# ---------------------------------------------------------------- processes and ports


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]; None once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited process nobody reaped yet)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def session_members(sid: int) -> list[int]:
    """Live processes of session SID: every Ray process a `setsid ray start --block` started stays in it."""
    members = []
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            members.append(pid)
    return members


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[str]:
    return [f"{pid}: {line[:200]}" for pid in all_pids() if alive(pid) and text in (line := cmdline(pid))]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll CONDITION until it holds; fail naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def free_ports(count: int) -> list[int]:
    """COUNT distinct free ports (free_port() alone may hand out the same port twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def node_port_flags(head: bool) -> list[str]:
    """`ray start` flags moving every port with a fixed default (or a fixed range) to a free port."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    ]
    if head:
        names.append("ray-client-server-port")
    flags = [f"--{name}={port}" for name, port in zip(names, free_ports(len(names)), strict=True)]
    # 0/0: workers bind ports the OS picks instead of the default range 10002-19999.
    return [*flags, "--min-worker-port=0", "--max-worker-port=0", "--object-store-memory=100000000"]


def http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def token_json(url: str, token: str) -> object:
    """The dashboard's JSON answer to a request that carries Ray's token; None when it does not answer (yet)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def dashboard_answers(url: str) -> bool:
    try:
        http_json(f"{url}/api/version")
    except (OSError, ValueError):
        return False
    return True


def minimal_env(real_venv: Path, shim_bin: Path) -> dict[str, str]:
    """An environment without the caller's Ray/slime/wandb settings: the launcher sees only what a test sets."""
    return {
        "PATH": f"{shim_bin}:{real_venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
    }


# ---------------------------------------------------------------- a Ray cluster owned by a test


@dataclass
class RayCluster:
    """A Ray head the test started (`ray start --head --block` in its own session), stopped by PID and session."""

    process: subprocess.Popen
    gcs_port: int
    dashboard_port: int
    log: Path
    token: str | None = None

    @classmethod
    def start(
        cls, real_venv: Path, shim_bin: Path, temp_dir: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> RayCluster:
        gcs_port, dashboard_port = free_ports(2)
        log = temp_dir.with_suffix(".log")
        argv = [
            str(real_venv / "bin" / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            f"--dashboard-port={dashboard_port}",
            *node_port_flags(head=True),
            f"--temp-dir={temp_dir}",
            "--num-gpus=1",
            "--disable-usage-stats",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**minimal_env(real_venv, shim_bin), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        token_path = (env or {}).get("RAY_AUTH_TOKEN_PATH")
        token = Path(token_path).read_text().strip() if token_path else None
        cluster = cls(process, gcs_port, dashboard_port, log, token)
        try:
            cluster.wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ray start exited: {self.log.read_text()[-3000:]}")
            if self.token is not None:  # its dashboard answers 401 to everything else
                return self.process.poll() is None and token_json(f"{self.dashboard_url}/api/version", self.token)
            if not dashboard_answers(self.dashboard_url):
                return False
            nodes = http_json(f"{self.dashboard_url}/api/v0/nodes")["data"]["result"]["result"]
            return any(node["state"] == "ALIVE" and node["resources_total"].get("GPU") for node in nodes)

        wait_until(ready, START_TIMEOUT, f"the test's Ray head on port {self.gcs_port}")

    def node_ip(self) -> str:
        """The address the head node registered (this machine's, unless it only has a loopback)."""
        nodes = http_json(f"{self.dashboard_url}/api/v0/nodes")["data"]["result"]["result"]
        return next(node["node_ip"] for node in nodes if node["is_head_node"])

    def core_pids(self) -> list[int]:
        """`ray start` and its direct children (GCS, raylet, dashboard, monitors): alive as long as the cluster."""
        children = [pid for pid in all_pids() if (f := stat_fields(pid)) and int(f[1]) == self.process.pid]
        return [self.process.pid, *children]

    def running(self) -> bool:
        return all(alive(pid) for pid in self.core_pids()) and dashboard_answers(self.dashboard_url)

    def job(self, submission_id: str) -> dict:
        return http_json(f"{self.dashboard_url}/api/jobs/{submission_id}")

    def stop(self) -> None:
        stop_session(self.process)


def stop_session(process: subprocess.Popen) -> None:
    """TERM the session leader, then KILL whatever of its session is left, by PID; bounded in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    deadline = time.monotonic() + 30
    while (left := session_members(process.pid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not session_members(process.pid), f"Ray processes of session {process.pid} survived"


# ---------------------------------------------------------------- the launcher under test


@dataclass
class Launch:
    """The real launcher, run with `bash` from a folder that is not slime, its output collected as it comes."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, env: dict[str, str], cwd: Path, args: tuple[str, ...] = ()) -> Launch:
        process = subprocess.Popen(
            ["bash", str(TRAIN), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # signals reach the launcher only when a test sends them
        )
        launch = cls(process)
        threading.Thread(target=launch._read, daemon=True).start()
        return launch

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> str:
        found: list[str] = []

        def seen() -> bool:
            found.extend(line for line in list(self.lines) if text in line)
            if not found and self.process.poll() is not None:
                raise AssertionError(
                    f"the launcher exited ({self.process.returncode}) before printing {text!r}:\n{self.output}"
                )
            return bool(found)

        wait_until(seen, timeout, f"{text!r} in the launcher's output")
        return found[0]

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher ran past {timeout:.0f}s:\n{self.output}") from None

    def close(self) -> None:
        """After a failed test: let the launcher's own cleanup run (TERM), then KILL what is left of it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Standin:
    """A stand-in slime checkout plus the checkpoint, Megatron and data paths the launcher checks."""

    root: Path
    slime: Path
    megatron: Path
    real_venv: Path
    shim_bin: Path

    def env(self, report: Path, config: dict | None = None, **settings: str) -> dict[str, str]:
        """The launcher's environment. The job's environment carries no settings, so the stand-in is steered
        through the slime config like the rollout: ``STANDIN_*`` arguments and ``config`` become keys of a user
        YAML (``standin_exit: 3``) named by SEARCH_R1_CONFIG, which the launcher merges into the job's config."""
        user = {"standin_report": str(report), **(config or {})}
        user.update({name.lower(): value for name, value in settings.items() if name.startswith("STANDIN_")})
        config_file = report.with_suffix(".user-config.yaml")
        config_file.write_text(json.dumps(user))  # JSON is YAML
        settings = {name: value for name, value in settings.items() if not name.startswith("STANDIN_")}
        return {
            **minimal_env(self.real_venv, self.shim_bin),
            "SLIME_DIR": str(self.slime),
            "MEGATRON_DIR": str(self.megatron),
            "HF_CKPT": str(self.root / "hf"),
            "REF_LOAD": str(self.root / "ref"),
            "SAVE_DIR": str(self.root / "save"),
            "DATA_DIR": str(self.root / "data"),
            "NUM_GPUS": "1",
            "TP_SIZE": "1",
            "RAY_CLUSTER_TIMEOUT": str(int(START_TIMEOUT)),
            "RAY_ARGV_LOG": str(report.with_suffix(".ray-calls.jsonl")),
            "SEARCH_R1_CONFIG": str(config_file),
            **settings,
        }


def ray_calls(report: Path) -> list[dict]:
    """Every `ray` command the launcher ran, as recorded by the shim in front of the real ray."""
    log = report.with_suffix(".ray-calls.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def submission_id(report: Path) -> str:
    (submit,) = [call["argv"] for call in ray_calls(report) if call["argv"][:2] == ["job", "submit"]]
    return submit[submit.index("--submission-id") + 1]


# ---------------------------------------------------------------- fixtures

# Records argv (and the runtime-env file's permissions and content) of each `ray` call, then becomes the real ray
# (exec: same process, same PID and session), so what runs is Ray itself.
SHIM = """#!{python}
import json, os, stat, sys

argv = sys.argv[1:]
record = {{"argv": argv}}
if "--runtime-env" in argv:
    path = argv[argv.index("--runtime-env") + 1]
    record["file_mode"] = stat.S_IMODE(os.stat(path).st_mode)
    record["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
    with open(path) as f:
        record["file_content"] = f.read()
log = os.environ.get("RAY_ARGV_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\\n")
os.execv({ray!r}, [{ray!r}, *argv])
"""


@pytest.fixture(scope="module")
def ray_root() -> Iterator[Path]:
    """One short private folder for every Ray temp dir of this module (Ray's socket paths must stay short)."""
    root = Path(tempfile.mkdtemp(prefix="srl", dir="/tmp"))
    yield root
    try:
        wait_until(lambda: not processes_mentioning(str(root)), 30, f"Ray processes under {root} to exit")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shim_bin(real_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shim_bin")
    shim = folder / "ray"
    shim.write_text(SHIM.format(python=real_venv / "bin" / "python", ray=str(real_venv / "bin" / "ray")))
    shim.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def standin(real_venv: Path, shim_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Standin:
    root = tmp_path_factory.mktemp("standin")
    slime = root / "slime"
    shutil.copytree(STANDIN, slime, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("megatron", "hf", "ref", "data"):
        (root / name).mkdir()
    (root / "data" / "train.parquet").touch()  # the launcher checks it exists; the stand-in never reads it
    return Standin(root, slime, root / "megatron", real_venv, shim_bin)


@pytest.fixture(scope="module")
def reused_cluster(real_venv: Path, shim_bin: Path, ray_root: Path) -> Iterator[RayCluster]:
    """A cluster already running when the launcher starts (started in ray_root, so a job there runs in ray_root
    unless the launcher says otherwise); it is also the bystander the launcher must never stop."""
    cluster = RayCluster.start(real_venv, shim_bin, ray_root / "reused", cwd=ray_root)
    yield cluster
    cluster.stop()


@pytest.fixture
def report(tmp_path: Path) -> Path:
    return tmp_path / "job-report.json"


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    """Launchers a test started; any still running at the end (a failed test) get TERM, then KILL."""
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.close()


# ---------------------------------------------------------------- tests


def test_job_runs_train_py_in_slime_dir_with_the_settings_and_the_key_off_every_command_line(
    reused_cluster: RayCluster, standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    # MASTER_ADDR is this machine's address, but the cluster's dashboard listens on 127.0.0.1 only: the job must go
    # to the address the cluster reports, not to MASTER_ADDR:RAY_DASHBOARD_PORT.
    env = standin.env(
        report,
        {"search_r1_topk": 5, "search_r1_max_turns": 9},  # a user's YAML; the variable below wins over its 9
        MASTER_ADDR=reused_cluster.node_ip(),
        RAY_PORT=str(reused_cluster.gcs_port),
        WANDB_API_KEY=SECRET,
        SEARCH_R1_MAX_TURNS="3",
        RETRIEVAL_SERVER_URL="http://10.0.0.1:8000,http://10.0.0.2:8000",
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))

    assert launch.finish() == 0, launch.output
    job = json.loads(report.read_text())
    assert job["cwd"] == str(standin.slime)
    assert job["argv"][0] == str(standin.slime / "train.py")
    # The key reached slime's args (slime logs in to W&B with args.wandb_key), not the job's environment.
    assert job["wandb_key_sha256"] == sha256(SECRET) and "--use-wandb" in job["argv"]
    assert "WANDB_API_KEY" not in job["env"]
    # The settings reached the job through slime's --custom-config-path, not its environment: load_settings(args)
    # there sees the variables exported here over the user's YAML.
    assert not [name for name in job["env"] if name.startswith("SEARCH_R1_") or name == "RETRIEVAL_SERVER_URL"]
    assert (job["settings"]["max_turns"], job["settings"]["topk"]) == (3, 5)
    assert job["settings"]["retrieval_urls"] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    config_file = Path(job["argv"][job["argv"].index("--custom-config-path") + 1])
    assert job["env"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert job["env"]["PYTHONPATH"].split(":")[:2] == [str(standin.megatron), str(ROOT)]
    assert "--standin-model-args" in job["argv"]  # slime's scripts/models/qwen2.5-3B.sh was sourced
    assert f"Ray dashboard: {reused_cluster.dashboard_url}" in launch.output
    # The test's cluster has no authentication: the launcher says what that means, in one line.
    (warning,) = [line for line in launch.lines if "has no authentication" in line]
    assert "submit jobs (run any code" in warning and "RAY_AUTH_MODE=token" in warning
    assert reused_cluster.job(submission_id(report))["status"] == "SUCCEEDED"

    # The key is on no `ray` command line, in no output (slime's "will override with <key>" line is masked) and not
    # in the runtime env (Ray's dashboard lists it and its agent logs it), which is private all the same.
    calls = ray_calls(report)
    assert calls and all(SECRET not in " ".join(call["argv"]) for call in calls)
    assert SECRET not in launch.output and "Argument wandb_key is already set to None, will override with ***" in (
        launch.output
    )
    (submit,) = [call for call in calls if call["argv"][:2] == ["job", "submit"]]
    assert "--runtime-env-json" not in submit["argv"]
    assert (submit["file_mode"], submit["dir_mode"]) == (0o600, 0o700)
    assert SECRET not in submit["file_content"]
    assert SECRET not in json.dumps(reused_cluster.job(submission_id(report)))
    runtime_env_file = Path(submit["argv"][submit["argv"].index("--runtime-env") + 1])
    assert config_file.parent == runtime_env_file.parent  # the launcher's private folder
    assert not runtime_env_file.parent.exists()  # removed on exit


def test_a_failing_job_makes_the_launcher_fail_with_its_exit_code(
    reused_cluster: RayCluster, standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    env = standin.env(report, RAY_PORT=str(reused_cluster.gcs_port), STANDIN_EXIT="3")
    launches.append(launch := Launch.start(env, cwd=tmp_path))

    assert launch.finish() == 3, launch.output
    assert reused_cluster.job(submission_id(report))["status"] == "FAILED"
    assert reused_cluster.running()


def test_slimes_own_flags_are_refused_in_the_config_and_validated_by_slime_on_the_command_line(
    reused_cluster: RayCluster, standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    """slime applies --custom-config-path after validating its flags: rollout_temperature: 0 there would train
    greedily, unchecked. The launcher refuses the key before Ray is touched; the same value as a flag reaches slime,
    whose validation (the stand-in models slime's order) fails the job."""
    env = standin.env(report, {"rollout_temperature": 0}, RAY_PORT=str(reused_cluster.gcs_port))
    launches.append(launch := Launch.start(env, cwd=tmp_path))
    assert launch.finish() == 1, launch.output
    config_file = report.with_suffix(".user-config.yaml")
    assert launch.output == (
        f"error: rollout_temperature in SEARCH_R1_CONFIG={config_file} is slime's own flag: pass --rollout-temperature"
        " 0 on the command line (slime validates its flags and builds the eval datasets from them, then applies this"
        " file unchecked)\n"
    )
    assert ray_calls(report) == [] and not report.exists()

    env = standin.env(report, RAY_PORT=str(reused_cluster.gcs_port))
    launches.append(launch := Launch.start(env, cwd=tmp_path, args=("--rollout-temperature", "0")))
    assert launch.finish() == 1, launch.output
    assert "--rollout-temperature must be > 0" in launch.output and not report.exists()
    assert reused_cluster.job(submission_id(report))["status"] == "FAILED"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"])
def test_interrupting_the_launcher_stops_its_job_and_leaves_a_reused_cluster_running(
    reused_cluster: RayCluster,
    standin: Standin,
    report: Path,
    tmp_path: Path,
    launches: list[Launch],
    sig: signal.Signals,
    code: int,
) -> None:
    env = standin.env(report, RAY_PORT=str(reused_cluster.gcs_port), STANDIN_SLEEP="600")
    launches.append(launch := Launch.start(env, cwd=tmp_path))
    wait_until(report.exists, START_TIMEOUT, "the job to start")
    train_pid = json.loads(report.read_text())["pid"]
    assert alive(train_pid)

    launch.process.send_signal(sig)

    assert launch.finish() == code, launch.output
    assert reused_cluster.job(submission_id(report))["status"] == "STOPPED"
    wait_until(lambda: not alive(train_pid), 10, "train.py to exit")
    assert reused_cluster.running()
    assert "reusing the Ray cluster" in launch.output


def test_interrupting_the_launcher_stops_the_cluster_it_started_and_no_other(
    reused_cluster: RayCluster,
    standin: Standin,
    report: Path,
    tmp_path: Path,
    ray_root: Path,
    launches: list[Launch],
) -> None:
    bystander = reused_cluster  # another Ray cluster on this machine, started before the launcher
    bystander_pids = bystander.core_pids()
    temp_dir = ray_root / "own"
    gcs_port, dashboard_port = free_ports(2)
    env = standin.env(
        report,
        RAY_PORT=str(gcs_port),
        RAY_DASHBOARD_PORT=str(dashboard_port),
        RAY_START_ARGS=" ".join([*node_port_flags(head=True), f"--temp-dir={temp_dir}"]),
        STANDIN_SLEEP="600",
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))
    wait_until(report.exists, START_TIMEOUT, "the job to start")
    job = json.loads(report.read_text())
    assert job["cwd"] == str(standin.slime)  # its head was started in tmp_path, yet the job runs in SLIME_DIR
    (head_pid,) = [pid for pid in all_pids() if "start --head" in (c := cmdline(pid)) and str(temp_dir) in c]
    assert len(session_members(head_pid)) > 3  # GCS, raylet, dashboard, ... all in the head's session

    launch.process.send_signal(signal.SIGINT)

    assert launch.finish() == 130, launch.output
    assert not alive(job["pid"])
    assert session_members(head_pid) == []
    assert processes_mentioning(str(temp_dir)) == []
    assert all(alive(pid) for pid in bystander_pids) and bystander.running()


def test_multi_node_prints_the_worker_command_and_submits_once_the_workers_gpus_joined(
    real_venv: Path, standin: Standin, report: Path, tmp_path: Path, ray_root: Path, launches: list[Launch]
) -> None:
    temp_dir = ray_root / "multi"
    gcs_port, dashboard_port = free_ports(2)
    env = standin.env(
        report,
        NUM_NODES="2",
        MASTER_ADDR="127.0.0.1",
        RAY_PORT=str(gcs_port),
        RAY_DASHBOARD_PORT=str(dashboard_port),
        RAY_START_ARGS=" ".join([*node_port_flags(head=True), f"--temp-dir={temp_dir}"]),
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))
    words = launch.wait_for_line("run:").split("run:", 1)[1].split()
    # The head uses token authentication: the command names the token's file (copied to the worker), not the token.
    assert words[:2] == ["RAY_AUTH_MODE=token", words[1]] and words[1].startswith("RAY_AUTH_TOKEN_PATH=/")
    token_file = words[1].split("=", 1)[1]
    assert f"first copy {token_file} from this node" in " ".join(words)
    command = words[2 : words.index("--num-gpus") + 2]
    assert command == ["ray", "start", "--address", f"127.0.0.1:{gcs_port}", "--num-gpus", "1"]
    launch.wait_for_line("waiting for GPUs: 1 of 2 on 1 node(s)")
    assert not report.exists()  # nothing is submitted before the second node's GPU is there

    # The "worker node" runs the printed command (on this machine, with its ports moved off the defaults). Without
    # draining, its TERM at the end does not wait 30 s for the head it drained to, which is gone by then.
    with (tmp_path / "worker.log").open("wb") as worker_log:
        worker = subprocess.Popen(
            [str(real_venv / "bin" / command[0]), *command[1:], "--block", *node_port_flags(head=False)],
            cwd=tmp_path,
            env={
                **minimal_env(real_venv, standin.shim_bin),
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": token_file,
            },
            stdin=subprocess.DEVNULL,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert launch.finish() == 0, launch.output
        job = json.loads(report.read_text())
        argv = job["argv"]
        assert job["cwd"] == str(standin.slime)
        assert argv[argv.index("--actor-num-nodes") + 1] == "2"
        assert argv[argv.index("--actor-num-gpus-per-node") + 1] == "1"
        assert argv[argv.index("--rollout-num-gpus") + 1] == "2"
    finally:
        stop_session(worker)


def test_multi_node_names_the_missing_gpus_and_the_worker_command_when_they_never_come(
    reused_cluster: RayCluster, standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    env = standin.env(
        report, NUM_NODES="2", MASTER_ADDR="127.0.0.1", RAY_PORT=str(reused_cluster.gcs_port), RAY_CLUSTER_TIMEOUT="3"
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))

    assert launch.finish() == 1, launch.output
    error = next(line for line in launch.lines if line.startswith("error:"))
    assert "has 1 GPU(s) on 1 node(s), the run needs 2" in error
    assert f"ray start --address 127.0.0.1:{reused_cluster.gcs_port} --num-gpus 1" in error
    assert not any(call["argv"][:2] == ["job", "submit"] for call in ray_calls(report))
    assert reused_cluster.running()


def test_a_busy_dashboard_port_is_reported_before_any_ray_process_starts(
    standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    """A head whose dashboard port is taken would come up without a dashboard, and no job could be submitted."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        dashboard_port = busy.getsockname()[1]
        env = standin.env(report, RAY_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(dashboard_port))
        launches.append(launch := Launch.start(env, cwd=tmp_path))
        assert launch.finish() == 1, launch.output

    assert f"error: port {dashboard_port} is in use" in launch.output and "RAY_DASHBOARD_PORT" in launch.output
    assert ray_calls(report) == []  # not even `ray start`


def test_a_head_that_fails_to_start_is_reported_with_rays_own_words(
    standin: Standin, report: Path, tmp_path: Path, launches: list[Launch]
) -> None:
    gcs_port, dashboard_port = free_ports(2)
    env = standin.env(
        report, RAY_PORT=str(gcs_port), RAY_DASHBOARD_PORT=str(dashboard_port), RAY_START_ARGS="--no-such-flag"
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))

    assert launch.finish() == 1, launch.output
    assert "--no-such-flag" in launch.output  # only `ray start`'s own complaint names it
    assert "error: the Ray head exited while starting" in launch.output
    assert not any(call["argv"][:2] == ["job", "submit"] for call in ray_calls(report))


# ---------------------------------------------------------------- a head the launcher starts: authenticated, private


def listening_addresses(pids: list[int]) -> dict[int, set[str]]:
    """{port: addresses} of the TCP sockets in LISTEN state that the processes PIDS hold (/proc/net/tcp{,6}, the
    data `ss -ltnp` shows)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    listening: dict[int, set[str]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # The kernel writes each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            address = str(ipaddress.ip_address(words))
            listening.setdefault(int(port_hex, 16), set()).add(address)
    return listening


def holders_of(secret: str, skip: set[int]) -> list[str]:
    """Processes (not in SKIP) whose command line or environment holds SECRET; those of other users are unreadable
    and cannot have it from us."""
    found = []
    for pid in all_pids():
        if pid in skip:
            continue
        for part in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                if secret.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
                    found.append(f"{pid} ({part}): {cmdline(pid)[:200]}")
    return found


def files_holding(secret: str, root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_a_head_the_launcher_starts_is_authenticated_and_the_keys_reach_only_slimes_args(
    standin: Standin, report: Path, tmp_path: Path, ray_root: Path, launches: list[Launch]
) -> None:
    retriever_key = "retriever-test-key-41b2"
    temp_dir = ray_root / "auth"
    gcs_port, dashboard_port = free_ports(2)
    private_root = tmp_path / "tmp"  # mktemp puts the launcher's private folder here
    home = tmp_path / "home"  # no ~/.ray/auth_token: the launcher makes a token of its own
    private_root.mkdir()
    home.mkdir()
    env = standin.env(
        report,
        RAY_PORT=str(gcs_port),
        RAY_DASHBOARD_PORT=str(dashboard_port),
        RAY_START_ARGS=" ".join([*node_port_flags(head=True), f"--temp-dir={temp_dir}"]),
        STANDIN_SLEEP="600",
        WANDB_API_KEY=SECRET,
        RETRIEVER_API_KEY=retriever_key,
        TMPDIR=str(private_root),
        HOME=str(home),
    )
    launches.append(launch := Launch.start(env, cwd=tmp_path))
    wait_until(report.exists, START_TIMEOUT, "the job to start")
    job = json.loads(report.read_text())
    assert job["wandb_key_sha256"] == sha256(SECRET) and job["retriever_api_key_sha256"] == sha256(retriever_key)
    (private,) = private_root.glob("search-r1-oai-launch.*")
    token_file = private / "ray_auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    dashboard = f"http://127.0.0.1:{dashboard_port}"

    # Without the token the dashboard lists nothing; with it, the job is there and holds neither key.
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json(f"{dashboard}/api/jobs/")
    assert refused.value.code in (401, 403)
    request = urllib.request.Request(
        f"{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        listing = response.read().decode()
    assert submission_id(report) in listing
    assert SECRET not in listing and retriever_key not in listing

    # What Ray lets us bind to loopback is there: the dashboard, which takes job submissions.
    (head_pid,) = [pid for pid in all_pids() if "start --head" in (c := cmdline(pid)) and str(temp_dir) in c]
    listening = listening_addresses(session_members(head_pid))
    assert listening.get(dashboard_port) == {"127.0.0.1"}, listening
    assert gcs_port in listening  # (on every address: Ray has no flag for it; the token guards it)

    # The keys are in no process's command line or environment: not the driver's (slime has them on args), not
    # Ray's, not the retriever client's. The launcher's own shell (and bash's copies of it) started with them in
    # the environment the test gave it, and so did this test.
    own = {os.getpid()} | {pid for pid in session_members(launch.process.pid) if cmdline(pid).startswith("bash ")}
    for secret in (SECRET, retriever_key):
        assert holders_of(secret, own) == []
    # On disk, only the private slime config (0600, in the 0700 run folder) holds them.
    config_file = private / "slime_config.yaml"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600 and stat.S_IMODE(private.stat().st_mode) == 0o700
    for secret in (SECRET, retriever_key):
        assert files_holding(secret, tmp_path) == [str(config_file)]
        assert files_holding(secret, temp_dir) == []

    launch.process.send_signal(signal.SIGTERM)
    assert launch.finish() == 143, launch.output
    assert not private.exists()
    for secret in (SECRET, retriever_key):  # Ray's logs stay after the run: still nothing in them
        assert secret not in launch.output
        assert files_holding(secret, temp_dir) == [] and files_holding(secret, tmp_path) == []


def test_a_reused_cluster_with_token_authentication_works_with_the_users_token_and_not_without(
    real_venv: Path, standin: Standin, report: Path, tmp_path: Path, ray_root: Path, launches: list[Launch]
) -> None:
    token_file = tmp_path / "ray_token"
    token_file.write_text("reused-cluster-token-" + "0" * 24)
    token_file.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    cluster = RayCluster.start(real_venv, standin.shim_bin, ray_root / "reused-auth", cwd=ray_root, env=auth)
    try:
        home = tmp_path / "home"  # no ~/.ray/auth_token
        home.mkdir()
        env = standin.env(report, RAY_PORT=str(cluster.gcs_port), RAY_AUTH_TOKEN_PATH=str(token_file), HOME=str(home))
        launches.append(launch := Launch.start(env, cwd=tmp_path))
        assert launch.finish() == 0, launch.output
        assert "reusing the Ray cluster" in launch.output and "has no authentication" not in launch.output
        assert cluster.token is not None
        job = token_json(f"{cluster.dashboard_url}/api/jobs/{submission_id(report)}", cluster.token)
        assert isinstance(job, dict) and job["status"] == "SUCCEEDED"

        # Without the token the launcher cannot connect, and says what to give it.
        env = standin.env(report, RAY_PORT=str(cluster.gcs_port), RAY_CLUSTER_TIMEOUT="5", HOME=str(home))
        launches.append(launch := Launch.start(env, cwd=tmp_path))
        assert launch.finish() == 1, launch.output
        error = next(line for line in launch.lines if line.startswith("error:"))
        assert "does not accept a driver" in error and "RAY_AUTH_TOKEN_PATH=FILE or ~/.ray/auth_token" in error
        assert cluster.process.poll() is None  # left running
    finally:
        cluster.stop()
