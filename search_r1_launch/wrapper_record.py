"""The run's record: what a run started, so that a run killed with SIGKILL can be found and cleaned up later.

It lives next to the logs, one per session name (``LOG_DIR/.with-retrieval-<session>.run``, mode 0600), so that
the next run with the same LOG_DIR and TMUX_SESSION finds it whatever TMPDIR it has. One ``key=value`` per line;
a process is recorded as ``PID START`` (see wrapper_procs.ours). It is always complete or absent: written to a
temporary file in its folder, then renamed. A value read back that is not of its expected form is ignored.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from search_r1_launch.wrapper_log import log
from search_r1_launch.wrapper_procs import ours, start_time
from search_r1_launch.wrapper_settings import SESSION
from search_r1_launch.wrapper_tmux import Tmux

_PID = re.compile(r"[1-9][0-9]*")
_HOST = re.compile(r"[][0-9A-Za-z.:-]+")


def record_path(log_dir: str, session: str) -> Path:
    return Path(log_dir) / f".with-retrieval-{re.sub(r'[^A-Za-z0-9_-]', '_', session)}.run"


@dataclass
class Proc:
    """A recorded process: its PID and start time (empty when not recorded)."""

    pid: int = 0
    start: str = ""

    def text(self) -> str:
        return f"{self.pid} {self.start}" if self.pid else ""

    def alive(self) -> bool:
        return ours(self.pid, self.start)

    @classmethod
    def of(cls, pid: int) -> Proc:
        """``pid`` as it runs now (no start time if it has already ended)."""
        return cls(pid, start_time(pid) or "")

    @classmethod
    def parse(cls, value: str) -> Proc:
        parts = value.split()
        if len(parts) >= 2 and _PID.fullmatch(parts[0]) and parts[1].isdigit():
            return cls(int(parts[0]), parts[1])
        return cls()


@dataclass
class Record:
    path: Path
    wrapper: Proc = field(default_factory=Proc)
    started: int = 0
    session: str = ""
    session_created: str = ""
    socket: str = ""
    run_dir: str = ""
    host: str = ""
    port: str = ""
    retriever: Proc = field(default_factory=Proc)
    training: Proc = field(default_factory=Proc)

    def write(self) -> None:
        """The record as it stands now, complete or not at all."""
        lines = {
            "wrapper": self.wrapper.text(),
            "started": str(self.started),
            "session": self.session,
            "session_created": self.session_created,
            "socket": self.socket,
            "run_dir": self.run_dir,
            "host": self.host,
            "port": self.port,
            "retriever": self.retriever.text(),
            "training": self.training.text(),
        }
        fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", dir=self.path.parent)  # mode 0600
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{key}={value}\n" for key, value in lines.items()))
        os.replace(tmp, self.path)

    @classmethod
    def read(cls, path: Path) -> Record:
        record = cls(path)
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key in ("wrapper", "retriever", "training"):
                setattr(record, key, Proc.parse(value))
            elif key == "started" and value.isdigit():
                record.started = int(value)
            elif key in ("session_created", "port") and value.isdigit():
                setattr(record, key, value)
            elif key == "session" and SESSION.fullmatch(value):
                record.session = value
            elif key in ("socket", "run_dir") and value.startswith("/"):
                setattr(record, key, value)
            elif key == "host" and _HOST.fullmatch(value):
                record.host = value
        return record

    def tmux(self, environ: dict[str, str]) -> Tmux:
        """tmux on the server the recorded run used."""
        return Tmux(environ, self.socket if self.socket and Path(self.socket).is_socket() else "")

    def session_alive(self, environ: dict[str, str]) -> bool:
        """The recorded session exists and is the one that run made (same creation time)."""
        tmux = self.tmux(environ)
        if not self.session or not tmux.binary:
            return False
        created = tmux.query(f"={self.session}:", "#{session_created}")
        if created is None or not created.isdigit():
            return False
        return created == self.session_created if self.session_created else int(created) >= self.started

    def alive(self, environ: dict[str, str]) -> list[str]:
        """What of the recorded run still runs, one description each."""
        found = []
        if self.wrapper.alive():
            found.append(f"its wrapper (pid {self.wrapper.pid})")
        if self.retriever.alive():
            found.append(f"retriever pid {self.retriever.pid}")
        if self.training.alive():
            found.append(f"training pid {self.training.pid}")
        if self.session_alive(environ):
            found.append(f"tmux session '{self.session}'")
        return found

    def port_note(self) -> str:
        """What the recorded port looks like now."""
        if not self.port:
            return ""
        host = self.host or "127.0.0.1"
        return f"; port {self.port} on {host} is {'held' if port_held(self.host, int(self.port)) else 'free'}"

    def remove_leftovers(self) -> None:
        """The recorded run folder (only one this wrapper makes: search-r1-run.*, ours) and the record itself."""
        folder = Path(self.run_dir) if self.run_dir else None
        if (
            folder is not None
            and folder.name.startswith("search-r1-run.")
            and folder.is_dir()
            and not folder.is_symlink()
            and folder.stat().st_uid == os.geteuid()
        ):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed its run folder {folder} (environment file included)")
        self.path.unlink(missing_ok=True)

    def stop_wrapper(self, wait_s: float = 200) -> None:
        """SIGTERM the recorded wrapper and wait for it: its own cleanup stops what it started."""
        log(f"stopping its wrapper (pid {self.wrapper.pid}); it stops what it started")
        try:
            os.kill(self.wrapper.pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + wait_s
        while self.wrapper.alive() and time.monotonic() < deadline:
            time.sleep(0.5)


def port_held(host: str, port: int) -> bool:
    """Something listens on ``host:port`` (a wildcard address is probed on loopback)."""
    probe = host.strip("[]")
    probe = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(probe, probe)
    try:
        with socket.create_connection((probe, port), timeout=5):
            return True
    except OSError:
        return False
