"""A scripted stand-in for SGLang's scheduler + model: the only part of the real server that tests replace.

Runs inside an SGLang test environment (``.venv-sglang-<version>``), started by :mod:`serve` through SGLang's own
``launch_server(server_args, run_scheduler_process_func=run_scripted_scheduler)``. Everything in front of it is
SGLang's real code: the FastAPI app, the OpenAI chat handler (templates, sampling defaults, tool parser), the
TokenizerManager and the DetokenizerManager subprocess. This process speaks their ZMQ protocol: it receives
``TokenizedGenerateReqInput`` / ``AbortReq`` and sends ``BatchTokenIDOutput`` like ``Scheduler`` does.

Why a script instead of a model: the tests need to know which ids were sampled and with which logprob. Each
request's prompt (the ids the TokenizerManager sent) is decoded and matched against the scripted questions; the next
scripted reply (ids, tokenized by the test with the same tokenizer as the mock) is then "sampled" one token per
step, with the mock's deterministic logprob, and finished the way the real scheduler finishes a request:
``Req.update_finish_state`` order (an abort's ``to_finish``, then ``max_new_tokens``, stop strings, stop ids).
An abort request marks a running request like the real one does (``to_finish = FINISH_ABORT()``), so it ends
after one more decode step. Every request is recorded with the ids and the ``SamplingParams`` the engine received.

The test process talks to this process over a small JSON control server on 127.0.0.1 (``--control-port``):
``POST /script`` queues replies, ``GET /records`` returns what the engine received, ``GET /remaining``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import parse_qs, urlparse

from scripted_logprob import mock_logprob

logger = logging.getLogger("scripted_scheduler")

# SGLang's Req.init_incremental_detokenize keeps this many prompt ids before the output for the detokenizer.
_DEFAULT_SURROUNDING_IDS = 5
# A step of the scripted engine: how long the loop waits for new messages while requests are running.
_STEP_S = 0.001
_IDLE_POLL_MS = 20


@dataclass
class ScriptedReply:
    """One scripted turn (see ``sglang_mock.Reply``): ids to sample, or an error status, or an abort."""

    ids: list[int]
    status: int = 200
    finish_reason: str | None = None
    delay_s: float = 0.0
    message: str = ""


@dataclass
class RunningRequest:
    """A request the engine is 'decoding': its script, what it sampled so far and how it finished."""

    rid: str
    input_ids: list[int]
    sampling: Any
    return_logprob: bool
    top_logprobs_num: int
    http_worker_ipc: Any
    time_stats: Any
    record: dict[str, Any]
    reply: ScriptedReply
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    to_finish: Any = None
    finished_reason: Any = None
    hold_until: float = 0.0


class ScriptState:
    """Scripts and records, shared between the engine loop and the control server (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, deque[ScriptedReply]] = {}
        self.standing: dict[str, ScriptedReply] = {}
        self.records: list[dict[str, Any]] = []

    def add(self, question: str, replies: list[dict[str, Any]], *, replace: bool, standing: bool) -> None:
        parsed = [
            ScriptedReply(
                ids=[int(i) for i in r.get("ids", [])],
                status=int(r.get("status", 200)),
                finish_reason=r.get("finish_reason"),
                delay_s=float(r.get("delay_s", 0.0)),
                message=str(r.get("message", "")),
            )
            for r in replies
        ]
        with self.lock:
            if standing:
                self.standing[question] = parsed[0]
                return
            if replace:
                self.scripts.pop(question, None)
            self.scripts.setdefault(question, deque()).extend(parsed)

    def take(self, prompt_text: str) -> tuple[str, ScriptedReply | None, str]:
        """``(question, reply, error)`` for a prompt: the longest scripted question it contains wins."""
        with self.lock:
            candidates = [q for q in self.scripts if q in prompt_text]
            if candidates:
                question = max(candidates, key=len)
                queue = self.scripts[question]
                if not queue:
                    return question, None, f"scripted engine: the script for question {question!r} is exhausted."
                return question, queue.popleft(), ""
            for question, reply in self.standing.items():
                if question in prompt_text:
                    return question, reply, ""
        return "", None, f"scripted engine: no scripted question occurs in the prompt: {prompt_text[-300:]!r}"


def _serve_control(state: ScriptState, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the test log is the place for failures
            return

        def _reply(self, payload: Any, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/records":
                with state.lock:
                    self._reply(list(state.records))
            elif url.path == "/remaining":
                question = parse_qs(url.query).get("question", [""])[0]
                with state.lock:
                    self._reply({"remaining": len(state.scripts.get(question, ()))})
            elif url.path == "/health":
                self._reply({"ok": True})
            else:
                self._reply({"error": "not found"}, 404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            if urlparse(self.path).path != "/script":
                self._reply({"error": "not found"}, 404)
                return
            state.add(
                body["question"],
                body["replies"],
                replace=bool(body.get("replace")),
                standing=bool(body.get("standing")),
            )
            self._reply({"ok": True})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="scripted-engine-control", daemon=True).start()
    return server


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def sampling_params_dict(params: Any) -> dict[str, Any]:
    """Every field of the ``SamplingParams`` the engine received (a msgspec Struct in 0.5.15+), JSON-ready."""
    import msgspec

    if isinstance(params, msgspec.Struct):
        names = [f.name for f in msgspec.structs.fields(params)]
    else:
        names = [n for n in vars(params) if not n.startswith("_")]
    return {name: _jsonable(getattr(params, name, None)) for name in names}


class ScriptedEngine:
    """The scheduler loop: receive from the TokenizerManager, decode scripted tokens, send to the detokenizer."""

    def __init__(self, server_args: Any, port_args: Any, state: ScriptState) -> None:
        import zmq
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.utils.network import get_zmq_socket

        try:
            from sglang.srt.utils.hf_transformers.tokenizer import get_tokenizer
        except ImportError:  # older layout
            from sglang.srt.utils.hf_transformers_utils import get_tokenizer

        self.server_args = server_args
        self.state = state
        self.model_config = ModelConfig.from_server_args(server_args)
        self.tokenizer = get_tokenizer(server_args.tokenizer_path, trust_remote_code=server_args.trust_remote_code)
        self.context_len = int(self.model_config.context_len)
        self.vocab_size = int(self.model_config.vocab_size)
        stop_ids = set(self.model_config.hf_eos_token_id or ())
        if self.tokenizer.eos_token_id is not None:
            stop_ids.add(int(self.tokenizer.eos_token_id))
        stop_ids.update(getattr(self.tokenizer, "additional_stop_token_ids", None) or ())
        self.eos_ids = stop_ids
        context = zmq.Context(2)
        self.zmq = zmq
        self.recv_from_tokenizer = get_zmq_socket(context, zmq.PULL, port_args.scheduler_input_ipc_name, False)
        self.send_to_tokenizer = get_zmq_socket(context, zmq.PUSH, port_args.tokenizer_ipc_name, False)
        self.send_to_detokenizer = get_zmq_socket(context, zmq.PUSH, port_args.detokenizer_ipc_name, False)
        self.running: list[RunningRequest] = []

    # ---- handshake -----------------------------------------------------------------------------------------------
    def init_info(self) -> dict[str, Any]:
        """What ``Scheduler.get_init_info`` reports: a KV pool far larger than any test prompt."""
        max_total = 1 << 22
        max_req_len = min(self.context_len - 1, max_total - 1)
        return {
            "status": "ready",
            "max_total_num_tokens": max_total,
            "max_req_input_len": max_req_len - 5,
            # 0.5.23+: per-phase startup durations (no weights, no KV cache, no CUDA graphs here).
            "startup_time": {"load_weight": 0.0, "kv_cache_allocation": 0.0, "scheduler_e2e": 0.0},
        }

    # ---- the loop ------------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        from sglang.srt.managers.io_struct import sock_recv

        poller = self.zmq.Poller()
        poller.register(self.recv_from_tokenizer, self.zmq.POLLIN)
        while True:
            timeout = 1 if self.running else _IDLE_POLL_MS
            if poller.poll(timeout):
                while True:
                    try:
                        message = sock_recv(self.recv_from_tokenizer, flags=self.zmq.NOBLOCK)
                    except self.zmq.ZMQError:
                        break
                    self.dispatch(message)
            if self.running:
                self.step()
                time.sleep(_STEP_S)

    def dispatch(self, message: Any) -> None:
        from sglang.srt.managers import io_struct

        if isinstance(message, io_struct.TokenizedGenerateReqInput):
            self.add_request(message)
        elif type(message).__name__ == "BatchTokenizedGenerateReqInput":
            for request in message:
                self.add_request(request)
        elif isinstance(message, io_struct.AbortReq):
            self.abort(message)
        else:
            # Control requests (load, internal state, profiling...) are not part of the chat path under test.
            logger.warning("scripted engine: ignoring %s", type(message).__name__)

    def add_request(self, request: Any) -> None:
        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        input_ids = [int(i) for i in request.input_ids]
        prompt_text = self.tokenizer.decode(input_ids, skip_special_tokens=False)
        question, reply, error = self.state.take(prompt_text)
        sampling = request.sampling_params
        record: dict[str, Any] = {
            "rid": request.rid,
            "question": question,
            "input_ids": input_ids,
            "sampling_params": sampling_params_dict(sampling),
            "return_logprob": bool(request.return_logprob),
            "top_logprobs_num": int(request.top_logprobs_num or 0),
            "stream": bool(request.stream),
            "output_ids": [],
            "output_logprobs": [],
            "finish_reason": None,
        }
        with self.state.lock:
            self.state.records.append(record)
        running = RunningRequest(
            rid=request.rid,
            input_ids=input_ids,
            sampling=sampling,
            return_logprob=bool(request.return_logprob),
            top_logprobs_num=int(request.top_logprobs_num or 0),
            http_worker_ipc=getattr(request, "http_worker_ipc", None),
            time_stats=_scheduler_time_stats(getattr(request, "time_stats", None)),
            record=record,
            reply=reply or ScriptedReply(ids=[], status=400, message=error),
        )
        if running.reply.status != 200:
            # Like Req.set_finish_with_abort: the request ends with a status the TokenizerManager turns into an
            # HTTP error (400 -> the chat handler's error response, 5xx -> HTTPException).
            status = HTTPStatus(running.reply.status)
            err_type = "BadRequestError" if status == HTTPStatus.BAD_REQUEST else status.phrase.replace(" ", "")
            message = running.reply.message or f"scripted engine error {status.value}"
            running.finished_reason = FINISH_ABORT(message, status, err_type)
            self.finish(running)
            return
        self.running.append(running)

    def abort(self, message: Any) -> None:
        """``Scheduler.abort_request`` for running requests: set ``to_finish``; one more decode step follows."""
        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        for running in self.running:
            if running.finished_reason is None and (message.abort_all or running.rid.startswith(message.rid)):
                abort_message = getattr(message, "abort_message", None)
                if abort_message:
                    running.to_finish = FINISH_ABORT(abort_message, HTTPStatus.SERVICE_UNAVAILABLE)
                else:
                    running.to_finish = FINISH_ABORT()
                running.hold_until = 0.0

    def step(self) -> None:
        """One decode step for every running request that is not held."""
        now = time.monotonic()
        for running in list(self.running):
            if running.hold_until > now:
                continue
            self.decode_one(running)
            if running.finished_reason is not None:
                self.running.remove(running)
                self.finish(running)

    def decode_one(self, running: RunningRequest) -> None:
        from sglang.srt.managers.schedule_batch import FINISH_ABORT

        position = len(running.output_ids)
        if position >= len(running.reply.ids):
            if running.to_finish is None:
                # A model would go on sampling; a script cannot. Fail the request loudly instead of hanging it.
                message = "scripted engine: the scripted reply ended without a stop token, length limit or abort"
                running.finished_reason = FINISH_ABORT(message, HTTPStatus.BAD_REQUEST, "BadRequestError")
                return
            # Aborted after its script ran out: the extra decode step yields an end of turn.
            token = int(self.tokenizer.eos_token_id)
        else:
            token = running.reply.ids[position]
        running.output_ids.append(token)
        running.logprobs.append(mock_logprob(token, len(running.input_ids) + position))
        if running.reply.finish_reason == "abort" and len(running.output_ids) == len(running.reply.ids):
            # A scripted abort: the abort request arrived before this, the last decode step.
            running.to_finish = running.to_finish or FINISH_ABORT()
        if position == 0 and hasattr(running.time_stats, "prefill_finished_time"):
            running.time_stats.prefill_finished_time = time.perf_counter()
        if position == 0 and running.reply.delay_s > 0:
            running.hold_until = time.monotonic() + running.reply.delay_s
        self.update_finish_state(running)

    def update_finish_state(self, running: RunningRequest) -> None:
        """``Req.update_finish_state`` for one new token: to_finish, length, stop strings, stop ids (in order)."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH, FINISH_MATCHED_STR, FINISH_MATCHED_TOKEN

        params = running.sampling
        if running.to_finish is not None:
            running.finished_reason, running.to_finish = running.to_finish, None
            return
        if len(running.output_ids) >= params.max_new_tokens:
            running.finished_reason = FINISH_LENGTH(length=params.max_new_tokens)
            return
        token = running.output_ids[-1]
        if token >= self.vocab_size or token < 0:
            running.finished_reason = FINISH_MATCHED_STR(matched="NaN happened")
            return
        stop_strs = params.stop_strs or []
        if isinstance(stop_strs, str):
            stop_strs = [stop_strs]
        if stop_strs:
            text = self.tokenizer.decode(running.output_ids)
            for stop in stop_strs:
                if stop and stop in text:
                    running.finished_reason = FINISH_MATCHED_STR(matched=stop)
                    return
        if params.ignore_eos:
            return
        if token in (params.stop_token_ids or ()) or token in self.eos_ids:
            running.finished_reason = FINISH_MATCHED_TOKEN(matched=token)

    # ---- output --------------------------------------------------------------------------------------------------
    def finish(self, running: RunningRequest) -> None:
        """Send the finished request to the DetokenizerManager as one ``BatchTokenIDOutput`` (non-streaming)."""
        from sglang.srt.managers.io_struct import BatchTokenIDOutput, sock_send, wrap_as_pickle

        try:
            from sglang.srt.managers.schedule_batch import INIT_INCREMENTAL_DETOKENIZATION_OFFSET as surrounding
        except ImportError:
            surrounding = _DEFAULT_SURROUNDING_IDS
        finish_json = running.finished_reason.to_json()
        with self.state.lock:
            running.record.update(
                output_ids=list(running.output_ids),
                output_logprobs=list(running.logprobs),
                finish_reason=_jsonable(finish_json),
            )
        aborted_early = finish_json.get("type") == "abort" and finish_json.get("status_code") is not None
        prompt_ids = [0] if aborted_early else running.input_ids  # set_finish_with_abort shrinks the prompt
        surr_offset = max(len(prompt_ids) - surrounding, 0)
        decode_ids = prompt_ids[surr_offset:] + running.output_ids
        params = running.sampling
        want_logprobs = running.return_logprob and not aborted_early
        top_n = running.top_logprobs_num

        def per_token(values: list[Any]) -> list[list[Any]]:
            return [values] if want_logprobs else [[]]

        values: dict[str, Any] = {
            "rids": [running.rid],
            "http_worker_ipcs": [running.http_worker_ipc],
            "finished_reasons": [finish_json],
            "decoded_texts": [""],
            "decode_ids": [decode_ids],
            "read_offsets": [len(prompt_ids) - surr_offset],
            "output_ids": [list(running.output_ids)],
            "skip_special_tokens": [params.skip_special_tokens],
            "spaces_between_special_tokens": [params.spaces_between_special_tokens],
            "no_stop_trim": [params.no_stop_trim],
            "prompt_tokens": [len(prompt_ids)],
            "reasoning_tokens": [0],
            "completion_tokens": [len(running.output_ids)],
            "cached_tokens": [0],
            "cached_tokens_details": [None],
            "retraction_counts": [0],
            "time_stats": wrap_as_pickle([running.time_stats]),
            "dp_ranks": [0],
            "image_tokens": [0],
            "audio_tokens": [0],
            "video_tokens": [0],
            "weight_versions": [None],
            "beam_search_output": [None],
            "input_token_logprobs_val": [[]],
            "input_token_logprobs_idx": [[]],
            "input_top_logprobs_val": [[]],
            "input_top_logprobs_idx": [[]],
            "input_token_ids_logprobs_val": [[]],
            "input_token_ids_logprobs_idx": [[]],
            "output_token_logprobs_val": per_token(list(running.logprobs)),
            "output_token_logprobs_idx": per_token(list(running.output_ids)),
            "output_top_logprobs_val": per_token([[lp] for lp in running.logprobs] if top_n else []),
            "output_top_logprobs_idx": per_token([[t] for t in running.output_ids] if top_n else []),
            "output_token_ids_logprobs_val": per_token([]),
            "output_token_ids_logprobs_idx": per_token([]),
        }
        import msgspec

        names = {f.name: f for f in msgspec.structs.fields(BatchTokenIDOutput)}
        kwargs = {name: values[name] for name in names if name in values}
        for name, info in names.items():
            if name not in kwargs and info.required:
                kwargs[name] = None  # hidden states, routed experts, entropy, placeholders: not requested
        sock_send(self.send_to_detokenizer, BatchTokenIDOutput(**kwargs))


def _scheduler_time_stats(api_stats: Any) -> Any:
    """The scheduler-side timing object ``Req.__init__`` builds from the TokenizerManager's (the TokenizerManager
    reads scheduler fields such as ``prefill_finished_time`` back from it)."""
    try:
        from sglang.srt.observability.req_time_stats import SchedulerReqTimeStats
    except ImportError:
        return api_stats
    stats = SchedulerReqTimeStats.new_from_obj(api_stats)
    if hasattr(stats, "set_scheduler_recv_time"):
        stats.set_scheduler_recv_time()
    return stats


def run_scripted_scheduler(server_args: Any, port_args: Any, *rest: Any) -> None:
    """Drop-in for ``sglang.srt.managers.scheduler.run_scheduler_process`` (any release's argument list).

    The pipe to the launcher is the one ``multiprocessing.connection.Connection`` among the arguments; the engine
    reports ``get_init_info``'s handshake on it, then serves until the launcher's process group is stopped.
    """
    from sglang.srt.utils import kill_itself_when_parent_died

    kill_itself_when_parent_died()
    logging.basicConfig(level=logging.INFO, format="[scripted engine] %(message)s")
    pipe_writer = next(arg for arg in rest if isinstance(arg, Connection))
    state = ScriptState()
    _serve_control(state, int(os.environ["SCRIPTED_ENGINE_CONTROL_PORT"]))
    engine = ScriptedEngine(server_args, port_args, state)
    pipe_writer.send(engine.init_info())
    engine.run_forever()
