"""The training wrapper's mechanics (search_r1_launch/wrapper_*.py), piece by piece, without tmux.

tests/test_wrapper.py runs the whole wrapper in real tmux sessions; these pin the pieces it is made of: the
argument rules, which variables reach the retriever, how an environment file survives the shell, which URLs
count as this machine, the checks made before anything starts, the run's record and process handling.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_r1_launch import wrapper_checks, wrapper_env, wrapper_procs, wrapper_record, wrapper_settings, wrapper_urls
from search_r1_launch.wrapper_log import LaunchError

SETTINGS = ["--script", "run.sh", "--session", "s", "--log-dir", "logs", "--ready-timeout", "600", "--train-script",
            "train.sh", "--skip-preflight", "0", "--preflight-python", "python3", "--slime-dir", "/slime", "--hf-ckpt",
            "/ckpt", "--ref-load", "/ref", "--data-dir", "data"]  # fmt: skip


# ---- the user's arguments ------------------------------------------------------------------------------------


def test_user_arguments_after_the_settings() -> None:
    parsed = wrapper_settings.parse([*SETTINGS, "--", "--attach", "--", "--num-rollout", "2", "--attach"])
    assert parsed.attach and not parsed.cleanup
    assert parsed.train_args == ["--num-rollout", "2", "--attach"]  # after the second --: slime's, untouched
    assert parsed.hf_ckpt == "/ckpt" and parsed.host == ""


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (["--cleanup", "--attach"], "--cleanup takes no other argument"),
        (["--cleanup", "--", "--x"], "--cleanup takes no other argument"),
        (["--bogus"], "unknown argument: --bogus (slime flags go after --; see --help)"),
        (["--dry-run"], "this script has no dry run"),
        (["--", "--lr", "1", "--dry-run"], "--dry-run after -- would start the retriever for nothing"),
    ],
)
def test_argument_mistakes_are_one_line(user: list[str], message: str) -> None:
    with pytest.raises(LaunchError) as raised:
        wrapper_settings.parse([*SETTINGS, "--", *user])
    assert message in raised.value.lines[0] and len(raised.value.lines) == 1


@pytest.mark.parametrize("session", ["", "a:b", "a.b", "tab\there"])
def test_a_session_name_tmux_would_misread_is_refused(session: str) -> None:
    argv = [*SETTINGS, "--", "--attach"]
    argv[argv.index("s")] = session
    with pytest.raises(LaunchError, match="TMUX_SESSION must be a non-empty name"):
        wrapper_settings.parse(argv)


def test_help_wins_over_what_follows() -> None:
    assert wrapper_settings.parse([*SETTINGS, "--", "--help", "--bogus"]).help


# ---- what each window gets -----------------------------------------------------------------------------------


def test_the_retriever_reads_its_own_variables_and_never_trainings() -> None:
    for name in ("PATH", "HF_HOME", "CUDA_VISIBLE_DEVICES", "RETRIEVER_API_KEY", "INDEX_PATH", "LC_ALL", "https_proxy"):
        assert wrapper_env.retriever_reads(name), name
    for name in ("HF_CKPT", "WANDB_API_KEY", "SEARCH_R1_MAX_TURNS", "TRAIN_SCRIPT"):
        assert not wrapper_env.retriever_reads(name), name
    assert wrapper_env.retriever_reads("MY_SETTING", ["MY_SETTING"])  # named in RETRIEVER_ENV
    assert not wrapper_env.retriever_reads("HF_CKPT", ["HF_CKPT"])


def test_an_environment_file_gives_bash_exactly_the_values(tmp_path: Path) -> None:
    environ = {
        "TRICKY": "two\nlines, 'single' \"double\" $HOME `tick` \\ %q",
        "EMPTY": "",
        "NOT-AN-IDENTIFIER": "x",
        "TMUX": "/tmp/sock,1,0",
        "TERM": "xterm",
        "SHELLOPTS": "braceexpand",
    }
    path = tmp_path / "environment"
    wrapper_env.write_private(path, wrapper_env.env_file_text(environ))
    assert path.stat().st_mode & 0o777 == 0o600
    shown = subprocess.run(
        ["env", "-i", "bash", "--noprofile", "--norc", "-c", f'. "{path}" && env -0'],
        capture_output=True,
        check=True,
    )
    seen = dict(item.split("=", 1) for item in shown.stdout.decode().split("\0") if "=" in item)
    assert seen["TRICKY"] == environ["TRICKY"] and seen["EMPTY"] == ""
    assert "NOT-AN-IDENTIFIER" not in seen and "TMUX" not in seen and "TERM" not in seen
    assert not shown.stderr  # nothing bash refuses (its read-only SHELLOPTS is left out)
    with pytest.raises(FileExistsError):  # never written over: a file somebody else made stays theirs
        wrapper_env.write_private(path, "")


def test_a_runner_reads_then_deletes_its_environment_file(tmp_path: Path) -> None:
    env_file, status, log = tmp_path / "environment", tmp_path / "status", tmp_path / "training.log"
    wrapper_env.write_private(env_file, wrapper_env.env_file_text({"GREETING": "hi there", "PATH": os.environ["PATH"]}))
    script = tmp_path / "runner.sh"
    command = ["bash", "-c", 'echo "$GREETING $1"; exit 4', "_", "arg with space"]
    script.write_text(wrapper_env.training_runner(env_file, "rm", str(tmp_path), command, log, status))
    subprocess.run(["env", "-i", "bash", "--noprofile", "--norc", str(script)], check=True, timeout=30)
    assert not env_file.exists()
    assert log.read_text() == "hi there arg with space\n" and status.read_text() == "4\n"


def test_the_retriever_runner_sets_the_rollouts_top_k_and_gpus(tmp_path: Path) -> None:
    text = wrapper_env.retriever_runner(tmp_path / "e", "/bin/rm", ["bash", "start server.sh"], "7", "1,2")
    assert "export TOPK=7\n" in text and "export CUDA_VISIBLE_DEVICES=1,2\n" in text
    assert text.splitlines()[-1] == "exec bash 'start server.sh'"
    assert "CUDA_VISIBLE_DEVICES" not in wrapper_env.retriever_runner(tmp_path / "e", "rm", ["x"], "3")


# ---- which replicas this machine starts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "local", "port", "bind"),
    [
        ("http://127.0.0.1:8000", True, 8000, "127.0.0.1"),
        ("http://localhost:9000", True, 9000, "127.0.0.1"),
        ("http://0.0.0.0:8001", True, 8001, "0.0.0.0"),
        ("http://[::1]:8002", True, 8002, "::1"),
        ("https://127.0.0.2", True, 443, "127.0.0.2"),
        ("http://retriever.remote.invalid:8000", False, 8000, ""),
        (f"http://{socket.gethostname()}:8003", True, 8003, None),
    ],
)
def test_a_replica_is_local_when_this_machine_can_serve_it(url: str, local: bool, port: int, bind: str | None) -> None:
    replica = wrapper_urls.classify(url)
    assert (replica.local, replica.port) == (local, port)
    assert bind is None or replica.bind == bind


@pytest.mark.parametrize("urls", ["ftp://127.0.0.1:21", "127.0.0.1:8000", "http://127.0.0.1:99999", "http://"])
def test_a_url_that_is_not_http_is_refused(urls: str) -> None:
    with pytest.raises(LaunchError, match="is not an http\\(s\\) URL with a host and a valid port"):
        wrapper_urls.replicas(urls)


def test_replicas_keep_their_order_and_drop_trailing_slashes() -> None:
    found = wrapper_urls.replicas(" http://127.0.0.1:8000/ , http://retriever.remote.invalid:8000,")
    assert [replica.url for replica in found] == ["http://127.0.0.1:8000", "http://retriever.remote.invalid:8000"]
    with pytest.raises(LaunchError, match="names no URL"):
        wrapper_urls.replicas(" , ")


# ---- checks before anything starts ---------------------------------------------------------------------------


def paths(root: Path) -> wrapper_checks.TrainingPaths:
    return wrapper_checks.TrainingPaths(root / "slime", root / "ckpt", root / "ref", root / "data")


def test_training_paths_are_checked_as_their_reader_needs_them(tmp_path: Path) -> None:
    found = paths(tmp_path)
    everything = wrapper_checks.training_problems(found, our_script=True, preflight=True)
    assert [line.split(" ")[0] for line in everything] == [
        "slime",
        "HF",
        "torch_dist",
        f"{tmp_path}/data/train.parquet",
    ]
    # Another training script: only what the preflight reads; neither: nothing to check.
    assert len(wrapper_checks.training_problems(found, our_script=False, preflight=True)) == 2
    assert wrapper_checks.training_problems(found, our_script=False, preflight=False) == []
    for folder in ("slime", "ckpt", "ref", "data"):
        (tmp_path / folder).mkdir()
    (tmp_path / "slime" / "train.py").touch()
    (tmp_path / "data" / "train.parquet").touch()
    assert wrapper_checks.training_problems(found, our_script=True, preflight=True) == []


def test_relative_paths_are_read_from_the_wrappers_folder(tmp_path: Path) -> None:
    assert wrapper_checks.from_root(tmp_path, "data/x") == tmp_path / "data" / "x"
    assert wrapper_checks.from_root(tmp_path, "/abs/x") == Path("/abs/x")


def test_the_probe_runs_in_a_real_python_and_names_what_is_missing() -> None:
    result = subprocess.run(
        [sys.executable, str(wrapper_checks.PROBE), "json", "no_such_module_here"], capture_output=True, text=True
    )
    report = wrapper_checks.probe_report(
        "py", result.returncode, result.stdout, result.stderr, ("json", "no_such_module_here")
    )
    assert report == [
        "PREFLIGHT_PYTHON=py cannot import no_such_module_here, which the preflight needs; " + wrapper_checks.FIX_PYTHON
    ]
    assert wrapper_checks.preflight_python_problems(sys.executable, os.environ) == []  # this venv has them all


@pytest.mark.parametrize(
    ("stdout", "stderr", "expected"),
    [
        (
            '{"python": [3, 8, 10], "executable": "x", "missing": []}',
            "",
            "is Python 3.8.10, the preflight needs >= 3.11",
        ),
        ("", "SyntaxError: invalid syntax", "could not run a Python script (exit code 1: SyntaxError: invalid syntax)"),
        ("not json", "", "could not run a Python script (exit code 1: not json)"),
    ],
)
def test_a_python_that_cannot_run_the_preflight_is_one_line(stdout: str, stderr: str, expected: str) -> None:
    report = wrapper_checks.probe_report("old", 1, stdout, stderr, ("pyarrow",))
    assert len(report) == 1 and expected in report[0] and "SKIP_PREFLIGHT=1" in report[0]


def test_a_missing_preflight_python_is_named() -> None:
    report = wrapper_checks.preflight_python_problems("/nonexistent/python", os.environ)
    assert report == [
        "PREFLIGHT_PYTHON=/nonexistent/python not found: name the python that has this project's dependencies, or "
        "SKIP_PREFLIGHT=1"
    ]


# ---- the run's record and its processes ----------------------------------------------------------------------


def test_a_record_round_trips_privately_and_ignores_what_is_malformed(tmp_path: Path) -> None:
    path = wrapper_record.record_path(str(tmp_path), "my session/1")
    assert path.name == ".with-retrieval-my_session_1.run"
    record = wrapper_record.Record(path, wrapper_procs_of_self(), 5, "my session/1", "17", "/tmp/s", "/tmp/d")
    record.port, record.host = "8000", "127.0.0.1"
    record.write()
    assert path.stat().st_mode & 0o777 == 0o600 and list(tmp_path.iterdir()) == [path]
    assert wrapper_record.Record.read(path) == record
    path.write_text("wrapper=0 1\nretriever=12 x\nsession=a:b\nrun_dir=relative\nhost=a b\nport=80x\nstarted=-1\n")
    assert wrapper_record.Record.read(path) == wrapper_record.Record(path)


def wrapper_procs_of_self() -> wrapper_record.Proc:
    return wrapper_record.Proc.of(os.getpid())


def test_leftovers_are_only_a_run_folder_of_ours(tmp_path: Path) -> None:
    path = tmp_path / ".with-retrieval-s.run"
    precious = tmp_path / "precious"
    precious.mkdir()
    path.touch()
    wrapper_record.Record(path, run_dir=str(precious)).remove_leftovers()
    assert precious.is_dir() and not path.exists()
    ours = tmp_path / "search-r1-run.abc"
    ours.mkdir()
    (ours / "environment").touch()
    wrapper_record.Record(path, run_dir=str(ours)).remove_leftovers()
    assert not ours.exists()


def test_a_process_is_ours_only_with_its_start_time() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        started = wrapper_procs.start_time(child.pid)
        assert started is not None and wrapper_procs.ours(child.pid, started)
        assert not wrapper_procs.ours(child.pid, str(int(started) + 1))  # a reused PID: another process
        assert not wrapper_procs.ours(child.pid, "") and wrapper_procs.running(child.pid)
        child.kill()
        time.sleep(0.2)
        assert not wrapper_procs.running(child.pid)  # a zombie (not reaped yet) has ended
        assert wrapper_procs.start_time(child.pid) is None
    finally:
        child.kill()
        child.wait()


def test_stop_ends_a_whole_process_group_even_one_that_ignores_sigterm() -> None:
    script = "trap '' TERM; sleep 60 & sleep 60 & wait"
    leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        time.sleep(0.5)
        assert wrapper_procs.running(-leader.pid)
        wrapper_procs.stop(-leader.pid, "a group", grace_s=1)
        deadline = time.monotonic() + 10
        while wrapper_procs.running(-leader.pid) and time.monotonic() < deadline:
            leader.poll()  # reap the leader; its children go to init
            time.sleep(0.1)
        assert not wrapper_procs.running(-leader.pid)
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_port_held_sees_a_listener_and_a_free_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert wrapper_record.port_held("0.0.0.0", port) and wrapper_record.port_held("127.0.0.1", port)
    assert not wrapper_record.port_held("127.0.0.1", port)


def test_the_callers_environment_arrives_exactly_through_a_pipe() -> None:
    read, write = os.pipe()
    caller = {"PATH": "/caller/bin:/usr/bin", "ODD": "a=b\nc", "EMPTY": ""}
    os.write(write, b"".join(f"{k}={v}".encode() + b"\0" for k, v in caller.items()))
    os.close(write)
    assert wrapper_settings.read_environ(read) == caller
