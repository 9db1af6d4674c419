"""SGLang's real serving code, with a scripted engine in place of the model, for the rollout's tests.

Why: ``sglang_mock`` is our reading of SGLang; this runs SGLang's own FastAPI app, chat handler (chat template,
``generation_config.json`` sampling defaults, qwen25 tool parser), TokenizerManager and DetokenizerManager, in a
pinned per-version environment (``.venv-sglang-<version>``, built by ``scripts/setup_env.sh``). Only the scheduler
and model are replaced (``tests/support/sglang_engine/scripted_scheduler.py``): it samples scripted ids with
:func:`scripted_logprob.mock_logprob` and records what it received, so tests check the token-exact invariant and
the sampling parameters the engine was given, exactly as with the mock.

:class:`RealSGLang` has the mock's test-facing API (``url``, ``script``, ``replace_script``, ``requests_for``,
``remaining``) and returns :class:`sglang_mock.RecordedRequest` objects: the HTTP side (body, status, response)
comes from a transparent recording proxy in front of the server, the engine side (prompt ids, sampled ids,
logprobs, sampling parameters) from the engine's records, joined by request id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi
import httpx

from search_r1_oai.policy_route import PROBE_TEXT
from tests.support.live_server import free_port, serve_app
from tests.support.sglang_mock import RecordedRequest, Reply
from tests.support.sglang_releases import SGLANG_VERSIONS

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
ENGINE_DIR = Path(__file__).resolve().parent / "sglang_engine"
# Qwen2.5-3B-Instruct's generation_config.json: SGLang's chat endpoint fills omitted sampling fields from it.
QWEN25_3B_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}
# A Qwen2 config with the real vocabulary and context length (no weights are ever loaded).
TINY_QWEN2_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
    "sliding_window": 32768,
    "use_sliding_window": False,
    "max_window_layers": 36,
}
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


def sglang_venv(version: str) -> Path:
    """The test environment of one SGLang release (``SGLANG_VENV_DIR`` overrides the folder holding them)."""
    base = Path(os.environ.get("SGLANG_VENV_DIR") or ROOT)
    return base / f".venv-sglang-{version}"


def _http_port() -> int:
    """A free port SGLang accepts: 0.5.15.post1 derives a gRPC port ``port + 10000`` (even with gRPC off) and
    refuses to start when that exceeds 65535, which a free port from the ephemeral range often would."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 <= 65535:
            return port
    raise RuntimeError("no free TCP port below 55536 on 127.0.0.1")


def write_model_dir(tokenizer_dir: Path, out: Path) -> Path:
    """A model directory SGLang can serve without weights: the offline Qwen2.5 tokenizer, a tiny Qwen2
    ``config.json`` and Qwen2.5-3B-Instruct's ``generation_config.json`` (so its sampling defaults apply)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    (out / "config.json").write_text(json.dumps(TINY_QWEN2_CONFIG, indent=2))
    (out / "generation_config.json").write_text(json.dumps(QWEN25_3B_GENERATION_CONFIG, indent=2))
    return out


class ScriptedSGLangServer:
    """One running ``tests/support/sglang_engine/serve.py`` process group (SGLang's server + the scripted engine)."""

    def __init__(self, version: str, model_dir: Path, log_path: Path) -> None:
        self.version = version
        self.model_dir = model_dir
        self.log_path = log_path
        self.port = _http_port()
        self.control_port = free_port()
        while self.control_port == self.port:
            self.control_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.control_url = f"http://127.0.0.1:{self.control_port}"
        self._process: subprocess.Popen | None = None
        self._log: Any = None

    def start(self) -> None:
        """Start the server and wait (bounded) until it serves ``/v1/models`` and the engine's control port."""
        python = sglang_venv(self.version) / "bin" / "python"
        if not python.exists():
            raise RuntimeError(
                f"{python.parent.parent} is missing: run bash scripts/setup_env.sh (it builds one environment per "
                f"SGLang release the tests run: {', '.join(SGLANG_VERSIONS)})"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self._log = self.log_path.open("wb")
        command = [
            str(python),
            str(ENGINE_DIR / "serve.py"),
            "--model-dir",
            str(self.model_dir),
            "--port",
            str(self.port),
            "--control-port",
            str(self.control_port),
        ]
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"SGLang {self.version} exited during startup:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SGLang {self.version} not up after {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")
                try:
                    if (
                        client.get(f"{self.url}/v1/models").status_code == 200
                        and client.get(f"{self.control_url}/health").status_code == 200
                    ):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.25)

    def stop(self) -> None:
        """Stop the whole process group (server, engine, detokenizer): SIGTERM, then SIGKILL after a bound."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        # Children of the group that outlived the leader (the detokenizer, resource tracker).
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    # ---- the engine's control channel ----------------------------------------------------------------------------
    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.control_url}{path}", timeout=10.0, **kwargs)
        response.raise_for_status()
        return response.json()


@dataclass
class ProxyRecord:
    """One HTTP exchange seen by the recording proxy."""

    method: str
    path: str
    body: Any
    status: int
    response: Any
    joined: bool = field(default=False, repr=False)


class RecordingProxy:
    """A byte-transparent reverse proxy that remembers every request body and response (tests read bodies)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.records: list[ProxyRecord] = []
        self.lock = threading.Lock()
        self.app = self._build_app()

    def _build_app(self) -> fastapi.FastAPI:
        app = fastapi.FastAPI(title="recording-proxy")
        client = httpx.AsyncClient(base_url=self.target, timeout=120.0)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
        async def forward(path: str, request: fastapi.Request) -> fastapi.Response:
            raw = await request.body()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-smg-routing-key")}
            upstream = await client.request(request.method, f"/{path}", content=raw, headers=headers)
            record = ProxyRecord(request.method, f"/{path}", _json_or_text(raw), upstream.status_code, None)
            record.response = _json_or_text(upstream.content)
            with self.lock:
                self.records.append(record)
            media = upstream.headers.get("content-type")
            return fastapi.Response(upstream.content, status_code=upstream.status_code, media_type=media)

        return app


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


class RealSGLang:
    """The mock's test API over a real SGLang server: script replies, read back what client and engine saw."""

    def __init__(self, server: ScriptedSGLangServer, tokenizer: Any) -> None:
        self.server = server
        self.version = server.version
        self.tokenizer = tokenizer
        self.direct_url = server.url
        self.url = ""  # the recording proxy's URL, set by serve()
        self.proxy = RecordingProxy(server.url)
        self._questions: set[str] = set()
        # The rollout's routing probe is answered like any model would, never consumed (as the mock does).
        probe = {"question": PROBE_TEXT, "replies": [self._reply("OK<|im_end|>")], "standing": True}
        self.server.control("POST", "/script", json=probe)

    @contextlib.contextmanager
    def serve(self) -> Iterator[RealSGLang]:
        """Run the recording proxy; ``url`` points at it while the context is open."""
        with serve_app(self.proxy.app, name=f"sglang-{self.version}-proxy") as url:
            self.url = url
            yield self

    def _reply(self, reply: Reply | str) -> dict[str, Any]:
        reply = Reply(text=reply) if isinstance(reply, str) else reply
        ids = list(self.tokenizer.encode(reply.text, add_special_tokens=False)) if reply.status == 200 else []
        return {
            "ids": ids,
            "status": reply.status,
            "finish_reason": reply.finish_reason,
            "delay_s": reply.delay_s,
            "message": reply.text if reply.status != 200 else "",
        }

    # ---- the mock's API ------------------------------------------------------------------------------------------
    def script(self, question: str, replies: list[Reply | str]) -> None:
        """Queue the assistant turns of the conversation whose prompt contains ``question`` (appends)."""
        self._questions.add(question)
        payload = {"question": question, "replies": [self._reply(r) for r in replies]}
        self.server.control("POST", "/script", json=payload)

    def replace_script(self, question: str, replies: list[Reply | str]) -> None:
        """Drop the unused replies of ``question`` and queue ``replies`` instead."""
        self._questions.add(question)
        payload = {"question": question, "replies": [self._reply(r) for r in replies], "replace": True}
        self.server.control("POST", "/script", json=payload)

    def remaining(self, question: str) -> int:
        return int(self.server.control("GET", "/remaining", params={"question": question})["remaining"])

    def engine_records(self) -> list[dict[str, Any]]:
        """Everything the engine received, in arrival order (ids, ``SamplingParams`` fields, what it sampled)."""
        return list(self.server.control("GET", "/records"))

    def requests_for(self, question: str) -> list[RecordedRequest]:
        """The chat requests of ``question`` in arrival order, as the mock records them."""
        engine = [r for r in self.engine_records() if r["question"] == question]
        by_rid = {r["rid"]: r for r in engine}
        unjoined_errors = [r for r in engine if (r.get("finish_reason") or {}).get("status_code")]
        with self.proxy.lock:
            exchanges = [p for p in self.proxy.records if p.path == "/v1/chat/completions"]
        recorded: list[RecordedRequest] = []
        joined: set[str] = set()
        for exchange in exchanges:
            body = exchange.body if isinstance(exchange.body, dict) else {"_raw": exchange.body}
            response = exchange.response if isinstance(exchange.response, dict) else None
            engine_record = by_rid.get((response or {}).get("id")) if exchange.status == 200 else None
            if engine_record is None and exchange.status != 200 and self._question_of(body) == question:
                # An error answer carries no request id: it is the engine's next scripted error of this question,
                # or (none left) a rejection before the engine (validation, context length).
                engine_record = unjoined_errors.pop(0) if unjoined_errors else {}
            elif engine_record is None:
                continue
            joined.add(engine_record.get("rid", ""))
            choice = (response or {}).get("choices", [{}])[0] if exchange.status == 200 else {}
            recorded.append(
                RecordedRequest(
                    question=question,
                    body=body,
                    prompt_ids=list(engine_record.get("input_ids", [])),
                    output_ids=list(engine_record.get("output_ids", [])) if exchange.status == 200 else [],
                    output_logprobs=list(engine_record.get("output_logprobs", [])) if exchange.status == 200 else [],
                    finish_reason=choice.get("finish_reason"),
                    status=exchange.status,
                    response=response if exchange.status == 200 else None,
                    sampling_params=engine_record.get("sampling_params"),
                )
            )
        # Requests still in flight (the engine has them, the client has no answer yet): counted, status 0.
        for engine_record in engine:
            if engine_record["rid"] not in joined and not (engine_record.get("finish_reason") or {}).get("status_code"):
                recorded.append(
                    RecordedRequest(
                        question=question,
                        body={},
                        prompt_ids=list(engine_record["input_ids"]),
                        output_ids=[],
                        output_logprobs=[],
                        finish_reason=None,
                        status=0,
                        sampling_params=engine_record.get("sampling_params"),
                    )
                )
        return recorded

    def _question_of(self, body: dict[str, Any]) -> str:
        """Which scripted question a request belongs to (for requests the engine never saw, or answered with an
        error): its input ids decoded, else its first user message; the longest scripted question found wins."""
        if isinstance(body.get("input_ids"), list):
            haystack = self.tokenizer.decode(body["input_ids"], skip_special_tokens=False)
        else:
            users = [
                m.get("content") for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"
            ]
            haystack = str(users[0]) if users else ""
        found = [q for q in self._questions if q in haystack]
        return max(found, key=len) if found else ""


class RealSGLangPool:
    """Real SGLang servers started on first use, one per release, shared by the whole test session."""

    def __init__(self, workdir: Path, tokenizer_dir: Path, tokenizer: Any) -> None:
        self.workdir = workdir
        self.model_dir = write_model_dir(tokenizer_dir, workdir / "model")
        self.tokenizer = tokenizer
        self._servers: dict[str, RealSGLang] = {}
        self._stack = contextlib.ExitStack()
        self._failures: dict[str, str] = {}

    def get(self, version: str) -> RealSGLang:
        """The running server of ``version`` (started now if needed); raises with the server log if it cannot."""
        if version in self._failures:
            raise RuntimeError(self._failures[version])
        if version not in self._servers:
            if not (sglang_venv(version) / "bin" / "python").exists():
                self._failures[version] = (
                    f"{sglang_venv(version)} is missing: run bash scripts/setup_env.sh (it builds one environment "
                    f"per SGLang release the tests run: {', '.join(SGLANG_VERSIONS)}; SGLANG_VENV_DIR moves them)"
                )
                raise RuntimeError(self._failures[version])
            errors: list[str] = []
            # Two tries: the ports are picked free but bound later by another process, so a rare race is retried
            # once with fresh ports (the first failure is kept in the message if the second fails too).
            for attempt in (1, 2):
                log = self.workdir / f"sglang-{version}-try{attempt}.log"
                server = ScriptedSGLangServer(version, self.model_dir, log)
                self._stack.callback(server.stop)
                try:
                    server.start()
                    real = RealSGLang(server, self.tokenizer)
                    self._stack.enter_context(real.serve())
                except Exception as exc:
                    server.stop()
                    errors.append(f"try {attempt} ({log}): {exc}")
                    logger.warning("real SGLang %s did not start (try %d): %s", version, attempt, exc)
                    continue
                self._servers[version] = real
                break
            else:
                self._failures[version] = f"real SGLang {version} did not start:\n" + "\n".join(errors)
                raise RuntimeError(self._failures[version])
        return self._servers[version]

    def close(self) -> None:
        self._stack.close()


# ---- a server started by the code under test (evaluate.py --model) -------------------------------------------------
def scripted_launch_command(version: str) -> list[str]:
    """The command that stands in for ``python -m sglang.launch_server`` (same flags), in ``version``'s venv."""
    return [str(sglang_venv(version) / "bin" / "python"), str(ENGINE_DIR / "launch_scripted.py")]


def write_script_file(path: Path, tokenizer: Any, scripts: dict[str, list[Reply | str]]) -> Path:
    """The ``SCRIPTED_ENGINE_SCRIPT`` file of ``launch_scripted.py``: each question's replies as ids (as
    :meth:`RealSGLang.script` sends them), plus the standing answer to the rollout's routing probe."""

    def as_dict(reply: Reply | str) -> dict[str, Any]:
        reply = Reply(text=reply) if isinstance(reply, str) else reply
        ids = list(tokenizer.encode(reply.text, add_special_tokens=False)) if reply.status == 200 else []
        message = reply.text if reply.status != 200 else ""
        return {"ids": ids, "status": reply.status, "finish_reason": reply.finish_reason, "delay_s": reply.delay_s,
                "message": message}  # fmt: skip

    entries = [{"question": PROBE_TEXT, "replies": [as_dict("OK<|im_end|>")], "standing": True}]
    entries += [{"question": q, "replies": [as_dict(r) for r in replies]} for q, replies in scripts.items()]
    path.write_text(json.dumps(entries))
    return path
