"""Stand-ins for the tmux wrapper's tests: a retriever process that records how it was started, and a proxy.

``python wrapper_fakes.py retriever --record DIR [--fail] -- retrieval_server.py ARGS...`` is what
start_server.sh runs when RETRIEVER_PYTHON is a shim exec'ing it: it writes ``DIR/retriever.json`` (pid, argv,
environment), then either fails at once (``--fail``, like a retriever that cannot load) or answers
``GET /health`` and ``POST /retrieve`` on the ``--host``/``--port`` it was given until it is killed (with
RETRIEVER_API_KEY in its environment, ``/retrieve`` wants ``Authorization: Bearer <key>``, as the real server).

``python wrapper_fakes.py preflight --record DIR [--fail] -- -m search_r1_oai.preflight ARGS...`` stands in for
the preflight (PREFLIGHT_PYTHON is a shim exec'ing it): it writes ``DIR/preflight.json`` (argv, cwd, PYTHONPATH,
whether every ``--retrieval-url`` answered ``GET /health`` and whether the fake training had started by then),
prints a report in the preflight's format and exits 0, or 1 after a FAIL line (``--fail``). Any other script it
is given (the wrapper's import probe, ``search_r1_launch/wrapper_probe.py``) runs for real in this Python, except
that the modules named by ``--lacking`` cannot be found or imported, as in a Python without them.

``forward_proxy()`` serves an HTTP forward proxy on 127.0.0.1 that answers for whatever host is asked: with
``http_proxy`` pointing at it, a URL on a host that is not this machine (``retriever.remote.invalid``) is a
reachable remote retriever, which is how the tests give the wrapper a real remote replica without a network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import shlex
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve()


def retriever_python(path: Path, record: Path, *, fail: bool = False) -> Path:
    """Write an executable at ``path`` to use as RETRIEVER_PYTHON; it execs the fake (same PID)."""
    flags = ["--record", str(record)] + (["--fail"] if fail else [])
    command = shlex.join([sys.executable, str(HERE), "retriever", *flags, "--"])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)
    return path


def preflight_python(path: Path, record: Path, *, fail: bool = False, lacking: tuple[str, ...] = ()) -> Path:
    """Write an executable at ``path`` to use as PREFLIGHT_PYTHON; it execs the fake preflight."""
    flags = ["--record", str(record)] + (["--fail"] if fail else []) + [f"--lacking={name}" for name in lacking]
    command = shlex.join([sys.executable, str(HERE), "preflight", *flags, "--"])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)
    return path


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local replicas, as the wrapper asks them
    try:
        with opener.open(f"{url.rstrip('/')}/health", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def run_preflight(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="wrapper_fakes.py preflight")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--lacking", action="append", default=[])
    args = parser.parse_args(argv[:split])
    python_argv = argv[split + 1 :]
    if python_argv[:1] != ["-m"]:  # a script, e.g. the wrapper's import probe: run it, without the lacking modules
        for name in args.lacking:
            sys.modules[name] = None  # type: ignore[assignment]  # what `import name` then fails on, as if absent
        sys.argv = python_argv
        runpy.run_path(python_argv[0], run_name="__main__")
        return 0
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("-m", dest="module", required=True)
    known.add_argument("--data", nargs="+", default=[])
    known.add_argument("--tokenizer")
    known.add_argument("--retrieval-url")
    known.add_argument("--policy-url")
    flags = known.parse_args(python_argv)
    urls = [url for url in (flags.retrieval_url or "").split(",") if url]
    args.record.mkdir(parents=True, exist_ok=True)
    seen = {
        "argv": python_argv,
        "cwd": os.getcwd(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "retriever_healthy": bool(urls) and all(_healthy(url) for url in urls),
        "training_started": (args.record / "training.pid").exists(),
    }
    tmp = args.record / "preflight.json.tmp"
    tmp.write_text(json.dumps(seen))
    tmp.replace(args.record / "preflight.json")
    print(f"ok    data: {' '.join(flags.data)}: 2 rows read as slime reads them")
    print(f"ok    template: {flags.tokenizer} renders the tools list and tool messages")
    if args.fail:
        print(f"FAIL  retriever: {flags.retrieval_url}: no passage (scripted failure)")
        print("      -> check the index and corpus it serves")
        print("preflight FAILED: fix the lines marked FAIL before starting the run")
        return 1
    print(f"ok    retriever: 3 passages from {flags.retrieval_url}")
    print("preflight passed")
    return 0


def _answer(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _RetrieverHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        _answer(self, 200 if self.path == "/health" else 404, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        key = os.environ.get("RETRIEVER_API_KEY")
        if key and self.headers.get("authorization") != f"Bearer {key}":  # as the real server with a key
            _answer(self, 401, {"detail": "missing or wrong bearer token"})
            return
        _answer(self, 200, {"result": [[]]})

    def log_message(self, format: str, *args: object) -> None:
        pass


def run_retriever(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="wrapper_fakes.py retriever")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args(argv[:split])
    server_argv = argv[split + 1 :]
    if server_argv[:2] == ["-m", "retriever.startup_check"]:
        return 0  # start_server.sh --check's encoder and row check: the fake loads nothing, so it refuses nothing
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--host", default="127.0.0.1")
    known.add_argument("--port", type=int, required=True)
    server_flags, _ = known.parse_known_args(server_argv)

    args.record.mkdir(parents=True, exist_ok=True)
    tmp = args.record / "retriever.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "argv": server_argv, "env": dict(os.environ)}))
    tmp.replace(args.record / "retriever.json")
    if args.fail:
        print("fake retriever: cannot load the index (scripted failure)", file=sys.stderr, flush=True)
        return 1
    server = HTTPServer((server_flags.host, server_flags.port), _RetrieverHandler)
    print(f"fake retriever: serving on {server_flags.host}:{server_flags.port}", flush=True)
    server.serve_forever()
    return 0


@contextlib.contextmanager
def forward_proxy(health_status: int = 200) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(proxy URL, requests seen as "METHOD absolute-URL")``; /health answers ``health_status``."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            _answer(self, health_status if self.path.endswith("/health") else 404, {"status": "proxied"})

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.rfile.read(int(self.headers.get("content-length") or 0))
            _answer(self, 200, {"result": [[]]})

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="wrapper-test-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["retriever"]:
        sys.exit(run_retriever(sys.argv[2:]))
    if sys.argv[1:2] == ["preflight"]:
        sys.exit(run_preflight(sys.argv[2:]))
    sys.exit(
        "usage: wrapper_fakes.py retriever --record DIR [--fail] -- SERVER ARGS...\n"
        "       wrapper_fakes.py preflight --record DIR [--fail] -- -m search_r1_oai.preflight ARGS..."
    )
