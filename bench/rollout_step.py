"""One GRPO rollout step end to end: how much of it is spent waiting for search, batched vs per-request retriever.

64 prompts x 8 samples run through the real rollout core (``search_r1_oai.rollout.run_rollout``, HTTP clients,
token-exact bookkeeping) against real servers on 127.0.0.1, each in its own process:

* policy: a scripted SGLang 0.5.15 responder (the replies of tests/support/sglang_mock.py: token ids, logprobs,
  qwen25 tool calls; bench/_step_policy.py) answering each turn only after a continuous-batching latency model
  says the engine would have: prefill through one shared queue at --prefill-tps; decode shared by the running
  sequences, each at min(--decode-seq-tps, --decode-total-tps / running), at most --max-running at once.
  Trajectories search 1..--max-searches times (~--think-words words of reasoning per turn), read 3 passages of
  ~100 words per search, then answer.
* three retrievers (one per run below): local_dense_retriever's own app (create_app: batcher, cache, HTTP
  limits) served by uvicorn with its own connection guards, over a simulated engine: a search call of b queries
  holds the single worker for scan_ms + encode_ms + b x per_query_ms. The flat scan is memory-bound, so one
  scan serves a whole batch; the per-query part is the matmul and encoder.

Three runs, one after the other, same script and same policy model:
  generation alone   the same retriever app with searches that cost no device time (--batching off, nothing
                     to wait for): the lower bound of the step. The searches still go over HTTP, so this
                     machine's CPU work for them is in the baseline rather than charged to either design
  batched retriever  --batching on: queries from all trajectories share each scan
  per-request        --batching off: each request scanned alone, serialised on the device (the common design)
Then the lower bound's policy calls are replayed through the latency model alone (no client, HTTP or search), to
show how much of the lower bound is this machine's own work rather than the modelled node.

Default numbers (a reasoned estimate from public figures, not a measurement): the README's node, 4 GPUs with
one SGLang engine each, Qwen2.5-3B in bf16. Decode alone is memory-bound: 6.2 GB of weights per step at 3.35 TB/s
(H100) is ~1.9 ms, so ~300 tok/s per sequence after overheads. SGLang's published offline throughput for an 8B
model is ~5k output tok/s on one A100; twice that on an H100 and again for a 3B model gives ~20k tok/s per GPU,
80k for the node. Prefill: 6 GFLOP a token at ~300 TFLOPS is ~50k tok/s per GPU, 200k for the node; the system
prompt and tools every conversation starts with are served from the radix cache. Search (--device): wiki-18 is
21M x 768; a GPU scan reads the 32.3 GB fp16 copy once (H200 6.7 ms, H100 9.6 ms: one device's bandwidth, which
is conservative, as 4 shards scan in a quarter of that), plus ~3 ms of e5 encoding and 0.1-0.15 ms per query;
CPU Flat reads the 64.6 GB fp32 file (~1.6 s) plus ~30 ms per query: with --device cpu use fewer prompts, the
per-request run alone would take about half an hour of simulated time. The retriever keeps its own batching wait
(max_wait_ms) and timeouts, in simulated time.

Times are simulated device seconds: every modelled duration is multiplied by --time-scale on the wall clock and
the measured wall times are divided by it, so this 2-core machine's own CPU work (tokenizing, JSON, HTTP: ~1500
policy calls and ~1000 searches a run) weighs 1/time-scale as much. It still shows: the CPU s column is this
machine's CPU time during each run, and "search p50/p99" is measured by the rollout client, so it includes the
client's event-loop backlog; "device search s" is the retriever worker's simulated busy time alone.
Run from the project root: ``.venv/bin/python -m bench.rollout_step``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from bench._retriever_common import Server
from bench._step_policy import PolicyModel, Script, model_only_step, questions
from bench._step_policy import config_json as policy_config
from bench._step_retriever import DEVICES, ScanCost
from bench._step_retriever import config_json as retriever_config
from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.prompts import SEARCH_TOOL, build_messages
from search_r1_oai.rollout import run_rollout
from search_r1_oai.search_tool import SearchStats

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": 500}
TOPK = 3


@dataclass
class StepResult:
    """One run of the step, in simulated seconds."""

    name: str
    wall_s: float
    search_wait_share: float  # of all trajectory-seconds, the share spent inside /retrieve calls
    searches: int
    search_p50_s: float
    search_p99_s: float
    output_tokens: int
    cpu_s: float  # this machine's CPU seconds during the run: the rollout process and the servers
    calls: list  # the policy calls the step made: (conversation, new prompt tokens, sampled tokens)
    busy_s: float  # the retriever's worker searching (simulated device time)
    batches: int


def _start(module: str, config: str, work: Path, name: str, timeout_s: float) -> Server:
    """A child server; it binds a free port itself and writes its URL to a file when it answers."""
    port_file = work / f"{name}.url"
    server = Server(["-m", module, config, str(port_file)], 0, work / f"{name}.log")
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"{name} server did not start within {timeout_s:.0f} s; see {server.log_path}")
        time.sleep(0.05)
    server.url = port_file.read_text().strip()
    return server


@contextlib.contextmanager
def servers(args: argparse.Namespace, model: PolicyModel, script: Script, cost: ScanCost) -> Iterator[dict]:
    """The policy and the two retrievers (batching on / off), each in its own process; all stopped on exit."""
    from tests.support import offline_assets

    tokenizer_dir = args.tokenizer or str(offline_assets.qwen25_tokenizer_dir())
    started: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-step-") as tmp:
        work = Path(tmp)
        try:
            free = ScanCost(scan_ms=0.0, encode_ms=0.0, per_query_ms=0.0)
            for name, batching, device in (
                ("free", False, free),
                ("batched", True, cost),
                ("per-request", False, cost),
            ):
                config = retriever_config(device, batching, TOPK, model.time_scale)
                started[name] = _start("bench._step_retriever", config, work, name, 120)
            config = policy_config(tokenizer_dir, model, script)
            started["policy"] = _start("bench._step_policy", config, work, "policy", 180)
            for name in ("free", "batched", "per-request"):
                started[name].wait_health(120)
            yield {
                "tokenizer": tokenizer_dir,
                "pids": {name: server.pid for name, server in started.items()},
                **{name: server.url for name, server in started.items()},
            }
        finally:
            for server in started.values():
                server.stop()


def _cpu_s(children: Iterable[int]) -> float:
    """CPU seconds used so far by this process and the given child processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for pid in children:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _step(
    name: str, urls: dict, tokenizer: object, script: Script, retriever: str, args: argparse.Namespace
) -> StepResult:
    scale = args.time_scale
    async with httpx.AsyncClient(timeout=30) as admin:
        (await admin.post(f"{urls['policy']}/bench/reset")).raise_for_status()
    served: dict = {}
    settings = Settings(
        retrieval_urls=(urls[retriever],),
        topk=TOPK,
        max_turns=script.max_searches + 1,
        concurrency=script.prompts * script.samples,
        log_every=0,
        policy_timeout_s=args.deadline_s,
        retrieval_timeout_s=args.deadline_s,
    )
    context = RolloutContext(settings, tokenizer, urls["policy"])
    durations: list[float] = []

    async def one(question: str) -> object:
        began = time.monotonic()
        result = await run_rollout(context, build_messages(question), dict(SAMPLING), tools=[SEARCH_TOOL])
        durations.append(time.monotonic() - began)
        return result

    cpu_before = _cpu_s(urls["pids"].values())
    try:
        began = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(one(q) for q in questions(script))), timeout=args.deadline_s)
        wall = time.monotonic() - began
        cpu = _cpu_s(urls["pids"].values()) - cpu_before
        async with httpx.AsyncClient(timeout=30) as admin:
            stats = (await admin.get(f"{urls[retriever]}/health")).json()["stats"]
            served = (await admin.get(f"{urls['policy']}/bench/served")).json()
    finally:
        await context.aclose()
    bad = [r for r in results if r.outcome.name != "COMPLETED" or not r.stats.token_exact or r.stats.tool_errors]
    if bad:
        raise SystemExit(f"{name}: {len(bad)} trajectories did not complete cleanly, e.g. {bad[0].error}")
    searched = [r.stats.seen(SearchStats) for r in results]
    latencies = sorted(s for st in searched for s in st.search_latencies_s)
    waited = sum(st.retrieval_latency_s for st in searched)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return StepResult(
        name=name,
        wall_s=wall / scale,
        search_wait_share=waited / sum(durations),
        searches=sum(st.searches for st in searched),
        search_p50_s=quantiles[49] / scale,
        search_p99_s=quantiles[98] / scale,
        output_tokens=sum(sum(r.loss_mask) for r in results),
        cpu_s=cpu,
        calls=[tuple(call) for call in served["calls"]],
        busy_s=stats["busy_s"] / scale,
        batches=stats["batches"],
    )


def _table(rows: list[StepResult], lower: StepResult) -> str:
    header = (
        f"{'design':<20}{'step s':>9}{'vs lower bound':>16}{'search wait':>13}{'search p50/p99 ms':>20}"
        f"{'device search s':>17}{'batches':>9}{'CPU s':>7}"
    )
    lines = [header]
    for row in rows:
        added = f"{(row.wall_s / lower.wall_s - 1) * 100:+.1f}%" if row is not lower else "(lower bound)"
        latency = f"{row.search_p50_s * 1000:.0f} / {row.search_p99_s * 1000:.0f}"
        share = f"{row.search_wait_share * 100:.1f}%"
        lines.append(
            f"{row.name:<20}{row.wall_s:>9.2f}{added:>16}{share:>13}{latency:>20}{row.busy_s:>17.2f}{row.batches:>9}"
            f"{row.cpu_s:>7.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rollout_step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults_m, defaults_s = PolicyModel(), Script()
    parser.add_argument("--prompts", type=int, default=defaults_s.prompts, help="prompts per step (default 64)")
    parser.add_argument("--samples", type=int, default=defaults_s.samples, help="samples per prompt (default 8)")
    parser.add_argument("--max-searches", type=int, default=defaults_s.max_searches,
                        help="each trajectory searches 1..N times, then answers (default 3)")  # fmt: skip
    parser.add_argument("--think-words", type=int, default=defaults_s.think_words,
                        help="words of reasoning before each search call, ~1.3 tokens each (default 80)")  # fmt: skip
    parser.add_argument("--prefill-tps", type=float, default=defaults_m.prefill_tps,
                        help="node prefill throughput, new prompt tokens/s (default %(default)g)")  # fmt: skip
    parser.add_argument("--decode-seq-tps", type=float, default=defaults_m.decode_seq_tps,
                        help="decode tokens/s of one sequence running alone (default 300)")  # fmt: skip
    parser.add_argument("--decode-total-tps", type=float, default=defaults_m.decode_total_tps,
                        help="node decode throughput over all running sequences, tokens/s (default %(default)g)")  # fmt: skip
    parser.add_argument("--max-running", type=int, default=defaults_m.max_running,
                        help="sequences decoding at once on the node (default 1024: 4 engines x 256)")  # fmt: skip
    parser.add_argument("--device", choices=sorted(DEVICES), default="h100",
                        help="retriever scan cost preset: " + "; ".join(
                            f"{k}: {c.scan_ms:g} ms scan + {c.encode_ms:g} ms encode + {c.per_query_ms:g} ms/query"
                            for k, c in DEVICES.items()) + " (default h100)")  # fmt: skip
    parser.add_argument("--scan-ms", type=float, help="override the preset's scan milliseconds per search call")
    parser.add_argument("--per-query-ms", type=float, help="override the preset's milliseconds per query")
    parser.add_argument("--time-scale", type=float, default=5.0,
                        help="wall seconds per simulated second; higher makes this machine's CPU work weigh less "
                             "(default %(default)g)")  # fmt: skip
    parser.add_argument("--deadline-s", type=float, default=240.0, help="wall-clock bound of each run (default 240)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the offline Qwen2.5 test tokenizer)")
    args = parser.parse_args(argv)
    for name in ("prompts", "samples", "max_searches", "think_words", "max_running"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("prefill_tps", "decode_seq_tps", "decode_total_tps", "time_scale", "deadline_s"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")

    cost = DEVICES[args.device]
    if args.scan_ms is not None:
        cost = replace(cost, scan_ms=args.scan_ms)
    if args.per_query_ms is not None:
        cost = replace(cost, per_query_ms=args.per_query_ms)
    model = PolicyModel(args.prefill_tps, args.decode_seq_tps, args.decode_total_tps, args.max_running, args.time_scale)
    script = Script(args.prompts, args.samples, args.max_searches, args.think_words)

    from transformers import AutoTokenizer

    began = time.monotonic()
    with servers(args, model, script, cost) as urls:
        tokenizer = AutoTokenizer.from_pretrained(urls["tokenizer"])
        lower = asyncio.run(_step("generation alone", urls, tokenizer, script, "free", args))
        batched = asyncio.run(_step("batched retriever", urls, tokenizer, script, "batched", args))
        alone = asyncio.run(_step("per-request", urls, tokenizer, script, "per-request", args))
    print(
        f"one GRPO step: {args.prompts} prompts x {args.samples} samples, {batched.searches} searches, "
        f"{lower.output_tokens} sampled tokens; retriever {args.device} ({cost.scan_ms:g} ms scan + "
        f"{cost.encode_ms:g} ms encode + {cost.per_query_ms:g} ms/query); simulated seconds (time scale "
        f"{args.time_scale:g}, {time.monotonic() - began:.0f} s wall in all)"
    )
    model_s = asyncio.run(model_only_step(lower.calls, model))
    print(_table([lower, batched, alone], lower))
    print(
        f"policy model alone, same calls, no client/HTTP/search: {model_s:.2f} s (this machine's own work adds "
        f"{lower.wall_s - model_s:.2f} s to the lower bound)"
    )
    extra_batched, extra_alone = batched.wall_s - lower.wall_s, alone.wall_s - lower.wall_s
    print(
        f"search adds {extra_batched / lower.wall_s * 100:+.1f}% to the step batched (target <= 5%) vs "
        f"{extra_alone / lower.wall_s * 100:+.1f}% per-request; per-request step / batched step: "
        f"{alone.wall_s / batched.wall_s:.2f}x"
    )


if __name__ == "__main__":
    main()
