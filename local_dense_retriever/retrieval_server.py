"""Serve a FAISS passage index over HTTP: POST /retrieve, GET /health, /docs.

The port opens at once and the index, corpus and encoder load in the background; poll /health until it
answers 200. With RETRIEVER_API_KEY set in its environment, /retrieve answers only requests that carry
``Authorization: Bearer <that key>`` (401 otherwise). Example:

    python local_dense_retriever/retrieval_server.py --index_path e5_Flat.index \\
        --corpus_path wiki-18.jsonl --topk 3 --retriever_name e5 --retriever_model intfloat/e5-base-v2
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

import uvicorn

from retriever.api import create_app
from retriever.connections import server_config
from retriever.settings import Settings, add_arguments, settings_from_args
from retriever.startup_check import check_encoder, check_packages, check_port

logger = logging.getLogger("retrieval_server")
API_KEY_ENV = "RETRIEVER_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    """The server's flags: one per field of :class:`Settings`, with the help, type and bounds written there."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    add_arguments(parser)
    return parser


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server that anyone on the network may query: bound beyond loopback without a key."""
    if api_key or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to any interface
    return (
        f"--host {host} without {API_KEY_ENV}: anyone who can reach this port can query the retriever; set "
        f"{API_KEY_ENV} in the server's environment to require a bearer token on /retrieve"
    )


def fail(line: str) -> int:
    """Print the one line that says why the server stops (the last thing it prints) and return the exit code."""
    print(f"error: {line}", file=sys.stderr, flush=True)
    return 1


def startup_problem(settings: Settings) -> str | None:
    """What stops the server from starting, found in seconds before anything loads: a missing package, a busy
    port, no encoder.

    A Hub id that is cached while the Hub does not answer is swapped for its cached folder, so transformers
    loads it at once instead of spending ~50 s on retries.
    """
    packages_ok, packages_line = check_packages()
    if not packages_ok:
        return packages_line
    port_ok, port_line = check_port(settings.host, settings.port)
    if not port_ok:
        return port_line
    status = check_encoder(settings.retriever_model)
    if not status.ok:
        return status.message
    logger.info("%s", status.message)
    if status.local_dir is not None and status.local_dir != settings.retriever_model:
        settings.retriever_model = status.local_dir
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(argv))
    if settings.faiss_gpu and settings.backend == "torch":
        parser.error("--faiss_gpu is for --backend faiss; --backend torch already uses every visible GPU")
    # torch and FAISS each bring their own OpenMP runtime; with the default busy-wait policy the idle pool
    # spins on the cores the other one needs (a 1-query encode measured 485 ms instead of 24 ms on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if (problem := startup_problem(settings)) is not None:
        return fail(problem)

    server: uvicorn.Server | None = None
    failed: list[BaseException] = []

    def stop_on_load_error(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    # The bearer token comes from the environment, never from a flag: argv is readable by every user of the host.
    api_key = os.environ.get(API_KEY_ENV) or None
    app = create_app(settings, on_load_error=stop_on_load_error, api_key=api_key)
    if api_key is not None:
        logger.info("/retrieve needs Authorization: Bearer <$%s>", API_KEY_ENV)
    if (warning := exposure_warning(settings.host, api_key)) is not None:
        logger.warning(warning)
    server = uvicorn.Server(server_config(app, settings))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind: someone took the port since the check
        port_ok, port_line = check_port(settings.host, settings.port)
        return fail(port_line if not port_ok else f"the server stopped at start (exit {exc.code}); see above")
    if failed:
        return fail(f"the retriever could not be loaded: {failed[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
