"""The retriever side of ``bench.rollout_step``: the real retriever app over an engine that costs what wiki-18 costs.

The HTTP surface, batcher (cross-request batching, or ``--batching off``: each request searched alone on the one
worker) and cache are local_dense_retriever's own (``create_app``); only the engine is simulated, because this
machine has neither the 64.6 GB index nor a GPU. A search of ``b`` queries holds the worker thread for
``scan_ms + encode_ms + b * per_query_ms`` (times the time scale) and returns wiki-18-sized passages.
Run as a child process (``python -m bench._step_retriever CONFIG_JSON PORT_FILE``), served by uvicorn on 127.0.0.1
with the server's own connection guards (:func:`serve_forever`, which the policy child uses too).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn

from search_r1_data.files import atomic_path


@dataclass(frozen=True)
class ScanCost:
    """Cost of one search call on the device, milliseconds (see ``bench.rollout_step --help`` for the numbers)."""

    scan_ms: float
    encode_ms: float
    per_query_ms: float

    def batch_ms(self, queries: int) -> float:
        return self.scan_ms + self.encode_ms + queries * self.per_query_ms


# wiki-18: 21,015,324 x 768. GPU rows: the fp16 copy (32.3 GB) read once per scan at HBM bandwidth (H200 4.8 TB/s,
# H100 3.35 TB/s); per query 2*N*d = 32 GFLOP of matmul plus e5-base encoding, small next to the scan below ~200
# queries. CPU row: FAISS Flat over the fp32 file (64.6 GB) at ~40 GB/s socket bandwidth, ~32 GFLOP a query at
# ~1.5 TFLOPS sgemm, e5-base on CPU cores.
DEVICES: dict[str, ScanCost] = {
    "h200": ScanCost(scan_ms=6.7, encode_ms=3.0, per_query_ms=0.1),
    "h100": ScanCost(scan_ms=9.6, encode_ms=3.0, per_query_ms=0.15),
    "cpu": ScanCost(scan_ms=1600.0, encode_ms=5.0, per_query_ms=30.0),
}

_BODY = (
    "The town grew around a small harbour on the northern coast and was known for its cathedral, its annual "
    "festival and the painters who worked there. Local historians describe the first settlers, the railway that "
    "reached the town in the last century and the bridge that still crosses the river near the old market square. "
    "The regional museum keeps letters, maps and paintings from that period, and visitors often mention the view "
    "from the lighthouse in their travel diaries."
)  # ~100 words, as a wiki-18 chunk


class SimulatedScanEngine:
    """``EngineLike`` for ``create_app``: sleeps for the device's scan cost, returns ``k`` passages per query."""

    size = 21_015_324
    model_name = "simulated-e5-base-v2"

    def __init__(self, cost: ScanCost, time_scale: float) -> None:
        self.cost = cost
        self.time_scale = time_scale
        self.calls = 0
        self.queries = 0

    def search(self, queries: list[str], k: int) -> list[list[tuple[dict[str, Any], float]]]:
        time.sleep(self.cost.batch_ms(len(queries)) / 1000.0 * self.time_scale)
        self.calls += 1
        self.queries += len(queries)
        return [[(_passage(q, rank), 1.0 - rank / 100) for rank in range(k)] for q in queries]


def _passage(query: str, rank: int) -> dict[str, str]:
    title = f"{query.split()[1] if len(query.split()) > 1 else query} {rank}"
    return {"id": str(rank), "contents": f'"{title}"\n{_BODY}', "title": title, "text": _BODY}


def _serve(config: dict[str, Any], port_file: Path) -> None:
    from local_dense_retriever.retriever.api import create_app
    from local_dense_retriever.retriever.connections import server_config
    from local_dense_retriever.retriever.settings import Settings

    scale = config["time_scale"]
    engine = SimulatedScanEngine(ScanCost(**config["cost"]), scale)
    defaults = Settings(index_path="simulated", corpus_path="simulated")
    settings = replace(
        defaults,
        batching=config["batching"],
        topk=config["topk"],
        log_level="warning",
        max_wait_ms=defaults.max_wait_ms * scale,
        # The server's timeouts, in simulated time like every other duration here.
        keep_alive_timeout_s=defaults.keep_alive_timeout_s * scale,
        header_timeout_s=defaults.header_timeout_s * scale,
        body_timeout_s=defaults.body_timeout_s * scale,
    )
    app = create_app(settings, load_engine=lambda: engine)
    serve_forever(server_config(app, settings), port_file)


def serve_forever(config: uvicorn.Config, port_file: Path, startup_timeout_s: float = 120.0) -> None:
    """Run ``config``'s app on a free port until the process is terminated; its URL goes to ``port_file``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bench-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit(f"server did not start within {startup_timeout_s:.0f} s")
        time.sleep(0.01)
    with atomic_path(port_file) as tmp:
        tmp.write_text(f"http://127.0.0.1:{sock.getsockname()[1]}")
    thread.join()


def config_json(cost: ScanCost, batching: bool, topk: int, time_scale: float) -> str:
    return json.dumps({"cost": asdict(cost), "batching": batching, "topk": topk, "time_scale": time_scale})


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]), Path(sys.argv[2]))
