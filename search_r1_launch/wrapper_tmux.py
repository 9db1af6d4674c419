"""tmux as the wrapper drives it: a session of its own, one window per process, nothing secret in tmux.

tmux runs with a minimal environment (``KEPT``): a tmux server it starts must not hold the caller's secrets,
which ``tmux show-environment -g`` would print. The windows get the caller's environment from a private file
instead (see wrapper_env). Every target is written ``=NAME``: an exact session name, never a prefix match.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from search_r1_launch.wrapper_log import LaunchError

# What a tmux command is run with: enough to find the right server and start a shell, no settings or secrets.
KEPT = ("HOME", "PATH", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TMUX",
        "TMUX_PANE", "TMUX_TMPDIR")  # fmt: skip


def tmux_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a tmux command gets."""
    return {name: environ[name] for name in KEPT if environ.get(name)}


class Tmux:
    """The tmux server the caller's environment names (TMUX / TMUX_TMPDIR), or the one at ``socket``."""

    def __init__(self, environ: Mapping[str, str], socket: str = "") -> None:
        self.binary = shutil.which("tmux", path=environ.get("PATH")) or ""
        self.env = tmux_env(environ)
        self.socket = socket

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One tmux command, its output captured; never raises for tmux's own failure."""
        where = ["-S", self.socket] if self.socket else []
        return subprocess.run(
            [self.binary, *where, *args], env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )

    def out(self, *args: str) -> str:
        """A tmux command's output; its failure ends the run with tmux's own message."""
        result = self.run(*args)
        if result.returncode != 0:
            raise LaunchError(f"tmux {args[0]} failed: {result.stderr.strip() or f'exit code {result.returncode}'}")
        return result.stdout.strip()

    def query(self, target: str, fmt: str) -> str | None:
        """``display-message -p`` of ``target`` (e.g. ``=session:1``), or None when it does not exist."""
        result = self.run("display-message", "-p", "-t", target, fmt)
        return result.stdout.strip() if result.returncode == 0 else None

    def has_session(self, session: str) -> bool:
        return self.run("has-session", "-t", f"={session}").returncode == 0

    def kill_session(self, session: str) -> None:
        self.run("kill-session", "-t", f"={session}")

    def interactive(self, *args: str) -> int:
        """A tmux command on the caller's terminal (attach): it draws there until the user detaches."""
        return subprocess.run([self.binary, *args], env=self.env).returncode


class Session:
    """The session a run makes: window 0 first (it creates the session), then the next ones."""

    PLACEHOLDER = ("bash", "--noprofile", "--norc", "-c", "read -r _")

    def __init__(self, tmux: Tmux, name: str, cwd: str) -> None:
        self.tmux = tmux
        self.name = name
        self.cwd = cwd
        self.made = False
        self.created = ""
        self.socket = ""

    def open_window(self, index: int, title: str, runner: str) -> int:
        """Window ``index`` running ``bash RUNNER`` under ``env -i`` (it sees only what RUNNER sources, and TERM);
        returns the pane's PID. It starts on a placeholder until remain-on-exit is on, so that a runner that fails
        at once stays readable."""
        bash = shutil.which("bash", path=self.tmux.env.get("PATH")) or "/bin/bash"
        placeholder = [bash, *self.PLACEHOLDER[1:]]
        target = f"={self.name}:{index}"
        if index == 0:
            self.made = True
            self.tmux.out("new-session", "-d", "-s", self.name, "-n", title, "-x", "200", "-y", "50", "-c", self.cwd,
                          *placeholder)  # fmt: skip
            self.created = self.tmux.out("display-message", "-p", "-t", f"={self.name}:", "#{session_created}")
            self.socket = self.tmux.out("display-message", "-p", "-t", f"={self.name}:", "#{socket_path}")
        else:
            self.tmux.out("new-window", "-d", "-t", target, "-n", title, "-c", self.cwd, *placeholder)
        self.tmux.out("set-option", "-w", "-t", target, "remain-on-exit", "on")
        term = self.tmux.out("show-options", "-gv", "default-terminal")
        env_bin = shutil.which("env", path=self.tmux.env.get("PATH")) or "/usr/bin/env"
        self.tmux.out("respawn-pane", "-k", "-t", target, "-c", self.cwd, env_bin, "-i", f"TERM={term}", bash,
                      "--noprofile", "--norc", runner)  # fmt: skip
        pid = self.tmux.out("display-message", "-p", "-t", target, "#{pane_pid}")
        if not pid.isdigit():
            raise LaunchError(f"tmux gave no PID for window {index} of session '{self.name}' (got '{pid}')")
        return int(pid)

    def pane_gone(self, index: int) -> bool:
        """True when the window's process has ended (or the window or session is gone)."""
        return self.tmux.query(f"={self.name}:{index}", "#{pane_dead}") in (None, "1")

    def capture(self, index: int, lines: int = 40) -> str:
        result = self.tmux.run("capture-pane", "-p", "-t", f"={self.name}:{index}", "-S", f"-{lines}")
        return result.stdout if result.returncode == 0 else ""

    def close(self) -> None:
        """Kill the session if this run made it; somebody else's session of that name is never touched."""
        if self.made:
            self.tmux.kill_session(self.name)


def inside_tmux(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("TMUX"))


def on_a_terminal() -> bool:
    return os.isatty(0) and os.isatty(1)
