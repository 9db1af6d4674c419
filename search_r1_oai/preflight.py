"""Checks, before GPUs are spent, that a run's pieces fit together: the data, the tokenizer's chat template, the
retriever, the policy endpoint and the settings. Each check runs when its inputs are given.

    python -m search_r1_oai.preflight --data train.parquet --tokenizer /models/Qwen2.5-3B-Instruct \
        --retrieval-url http://127.0.0.1:8000 [--policy-url http://127.0.0.1:30000] [--max-response-len 1024]

Prints one line per check (``ok`` or ``FAIL``, what was found, what to do) and exits 0 when every check passed,
1 when one failed, 2 on bad usage. A check that cannot even run (this Python lacks pyarrow, transformers or httpx,
say) is a FAIL line that names what is missing and what to do, never a traceback. The training wrapper runs it once
the retriever is healthy.

Imports here are the standard library and the stdlib-only settings and prompts: whatever Python runs this file gets
as far as printing its lines; each check imports what it needs itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_r1_oai.columns import METADATA, PROMPT, TOOLS
from search_r1_oai.config import ConfigError, Settings, load_settings_with_urls
from search_r1_oai.prompts import SEARCH_TOOL, SEARCH_TOOL_NAME, build_messages

# Asked of the retriever and the policy when no data file gives a question.
DEFAULT_QUESTION = "Who wrote the novel Pride and Prejudice?"
_TOOL_MARK = "preflight tool result 7319"
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text}\n      -> {self.fix}"


def cannot_run(name: str, exc: BaseException) -> Check:
    """The FAIL line of a check that could not run: a missing module is named with what to do; anything else is
    the check's own failure, named by its type and message."""
    if isinstance(exc, ImportError):
        missing = (exc.name or str(exc)).split(".")[0]  # the package to install, not its submodule
        return Check(
            name,
            False,
            f"cannot run: {sys.executable} has no module {missing!r}",
            f"install the project into that Python (pip install -e {_REPO}), or set PREFLIGHT_PYTHON to one that "
            f"has it (e.g. {_REPO / '.venv' / 'bin' / 'python'})",
        )
    return Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}", "fix what it names and rerun")


def check_data(path: Path) -> tuple[Check, dict[str, Any] | None]:
    """The file reads as slime reads it (schema, every row); returns the first row for the other checks."""
    import pyarrow.parquet as pq

    from search_r1_oai.data_check import check_file

    problems = check_file(path)
    fix = f"rebuild it with data_preprocess.py (data_preprocess.py --check {path} lists every problem)"
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check("data", False, f"{path}: {shown}{more}", fix), None
    parquet = pq.ParquetFile(path)
    first = parquet.read_row_group(0).slice(0, 1).to_pylist()[0]
    rows = parquet.metadata.num_rows
    return Check("data", True, f"{path}: {rows} rows read as slime reads them"), first


def check_template(tokenizer: Any) -> Check:
    """The chat template renders the tool schema and tool messages, and extends turn by turn."""
    from search_r1_oai.chat_template import ToolTurnTemplate, render_chat

    fix = "use the checkpoint's own tokenizer (Qwen2.5-Instruct has a tool-calling template) or a template with tools"
    messages = build_messages("Which river?")
    try:
        prompt = render_chat(tokenizer, messages, [SEARCH_TOOL], add_generation_prompt=True)
        call = {"id": "call_0", "type": "function", "function": {"name": SEARCH_TOOL_NAME, "arguments": {"q": 1}}}
        turn = [{"role": "assistant", "content": "", "tool_calls": [call]}]
        tool = [{"role": "tool", "tool_call_id": "call_0", "name": SEARCH_TOOL_NAME, "content": _TOOL_MARK}]
        with_tool = render_chat(tokenizer, messages + turn + tool, [SEARCH_TOOL], add_generation_prompt=True)
        ToolTurnTemplate(tokenizer, [SEARCH_TOOL]).delta_text(tool, sampled_eos=True)
    except Exception as exc:  # TemplateError or whatever the template raises: this check's finding
        return Check("template", False, f"rendering failed: {type(exc).__name__}: {exc}", fix)
    if SEARCH_TOOL["function"]["description"] not in prompt:
        return Check("template", False, "the chat template drops the tools list (the policy would never see it)", fix)
    if _TOOL_MARK not in with_tool:
        return Check("template", False, "the chat template drops tool messages (search results would vanish)", fix)
    return Check("template", True, "renders the tools list and tool messages, extends turn by turn")


async def check_retriever(settings: Settings, question: str) -> Check:
    from search_r1_oai.search_client import SearchClient, SearchError

    client = SearchClient(settings)
    fix = "start it (local_dense_retriever/start_server.sh) or fix RETRIEVAL_SERVER_URL / --retrieval-url"
    try:
        result = await client.retrieve([question])
    except SearchError as exc:
        return Check("retriever", False, f"{', '.join(settings.retrieval_urls)}: {exc.detail}", fix)
    found = result.passages[0]
    if not found:
        return Check("retriever", False, f"no passage for {question!r}", "check the index and corpus it serves")
    return Check("retriever", True, f"{len(found)} passages for {question!r} in {result.latency_s:.2f}s")


async def check_policy(settings: Settings, tokenizer: Any, policy_url: str, messages: list[dict]) -> Check:
    """One first turn and one ``input_ids`` turn through the path the rollout uses (router or workers)."""
    from search_r1_oai.chat_client import NEUTRAL_SAMPLING, PolicyError
    from search_r1_oai.context import RolloutContext

    context = RolloutContext(settings, tokenizer, policy_url)
    fix = "run SGLang >= 0.5.13 behind the URL (a router must reach its workers), or fix --policy-url"
    try:
        chat = context.chat()
        body = chat.build_request(messages, [SEARCH_TOOL], dict(NEUTRAL_SAMPLING), 1, return_prompt_ids=True)
        first = await chat.complete(body)
        if not first.has_token_ids or first.prompt_ids is None:
            return Check("policy", False, f"{policy_url} returns no token ids (prompt_token_ids / meta_info)", fix)
        ids = first.prompt_ids + (first.output_ids or [])
        second = await chat.complete(body, "[" + ",".join(map(str, ids)) + "]")
        if second.prompt_ids != ids:
            return Check("policy", False, f"{policy_url} does not condition on the input_ids sent", fix)
        route = context.route()
        return Check(
            "policy", True, f"token ids returned, input_ids honoured; route: {route.mode} ({route.describe()})"
        )
    except PolicyError as exc:
        return Check("policy", False, str(exc), fix)
    finally:
        await context.aclose()


def check_settings(settings: Settings, max_response_len: int | None, prompt_tokens: int | None) -> Check:
    if max_response_len is None:
        return Check("settings", True, f"context budget {settings.context_budget}, {settings.max_turns} turns")
    needed = (prompt_tokens or 0) + max_response_len
    if needed > settings.context_budget:
        return Check(
            "settings",
            False,
            f"context budget {settings.context_budget} < prompt ({prompt_tokens or 0}) + max response length "
            f"({max_response_len}): the first turn could never use its full length",
            "raise SEARCH_R1_CONTEXT_BUDGET (or slime's --rollout-max-context-len) or lower the max response length",
        )
    return Check("settings", True, f"context budget {settings.context_budget} >= prompt + {max_response_len}")


def offered_tool_names(row: dict[str, Any] | None) -> list[str]:
    """The tool names a data row offers (its ``tools`` column: a JSON list of schemas); search when it has none."""
    raw = (row or {}).get(TOOLS)
    schemas = json.loads(raw) if isinstance(raw, str) else raw
    names = [
        s["function"]["name"] for s in schemas or [] if isinstance(s, dict) and isinstance(s.get("function"), dict)
    ]
    return names or [SEARCH_TOOL_NAME]


def check_tools(settings: Settings, offered: list[str]) -> Check:
    """Every tool the data offers is registered in a rollout process: ``search``, plus those of the modules named by
    ``SEARCH_R1_TOOL_MODULES``, imported as the rollout imports them."""
    from search_r1_oai.tools import import_tool_modules, registered_tools

    try:
        import_tool_modules(settings.tool_modules)
    except ConfigError as exc:
        return Check("tools", False, str(exc), "fix the module (the error above is its own) or the setting")
    registered = sorted(registered_tools())
    missing = [name for name in offered if name not in registered]
    if missing:
        return Check(
            "tools",
            False,
            f"the data offers {', '.join(missing)}, which no registered tool answers (registered: "
            f"{', '.join(registered)}); every call to it would be an error message",
            "add the module that registers it to SEARCH_R1_TOOL_MODULES (README: To add a tool)",
        )
    return Check("tools", True, f"registered: {', '.join(registered)}; the data offers: {', '.join(offered)}")


def run_checks(args: argparse.Namespace, settings: Settings, emit: Callable[[Check], None]) -> bool:
    checks: list[Check] = []

    def attempt(name: str, run: Callable[[], tuple[Check, Any]]) -> Any:
        """Runs one check; one that cannot run is its FAIL line, never a traceback. Returns what the check found
        for the later ones (the data's first row, the tokenizer), ``None`` when it failed."""
        try:
            check, found = run()
        except Exception as exc:
            check, found = cannot_run(name, exc), None
        checks.append(check)
        emit(check)
        return found

    messages, question = build_messages(DEFAULT_QUESTION), DEFAULT_QUESTION
    first_row = None
    for path in args.data or []:
        first = attempt("data", functools.partial(check_data, path))
        if first is not None:
            first_row = first_row or first
            messages = [dict(m) for m in first[PROMPT]]
            question = str((first.get(METADATA) or {}).get("question") or first.get("question") or question)
    offered = offered_tool_names(first_row)
    if settings.tool_modules or offered != [SEARCH_TOOL_NAME]:
        attempt("tools", lambda: (check_tools(settings, offered), None))
    tokenizer = (
        attempt("template", functools.partial(_load_and_check_template, args.tokenizer)) if args.tokenizer else None
    )
    if args.retrieval_url:
        attempt("retriever", lambda: (asyncio.run(check_retriever(settings, question)), None))
    if args.policy_url:
        if tokenizer is None:
            why = "needs the tokenizer, which did not load (see the template line)" if args.tokenizer else None
            fix = "fix the template line first" if args.tokenizer else "pass the policy's tokenizer folder"
            attempt("policy", lambda: (Check("policy", False, why or "needs --tokenizer", fix), None))
        else:
            attempt("policy", lambda: (asyncio.run(check_policy(settings, tokenizer, args.policy_url, messages)), None))
    attempt(
        "settings",
        lambda: (check_settings(settings, args.max_response_len, _prompt_tokens(tokenizer, messages)), None),
    )
    return all(check.ok for check in checks)


def _load_and_check_template(folder: str) -> tuple[Check, Any]:
    """The tokenizer's check, and the tokenizer for the later checks (``None`` when it did not load)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # unreadable folder, missing files
        return Check("template", False, f"cannot load {folder}: {exc}", "pass the checkpoint's folder"), None
    return check_template(tokenizer), tokenizer


def _prompt_tokens(tokenizer: Any, messages: list[dict]) -> int | None:
    if tokenizer is None:
        return None
    from search_r1_oai.chat_template import render_prompt_ids

    return len(render_prompt_ids(tokenizer, messages, [SEARCH_TOOL]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", type=Path, help="slime-ready parquet file(s) the run trains/evaluates on")
    parser.add_argument("--tokenizer", help="the policy checkpoint's folder (its tokenizer and chat template)")
    parser.add_argument("--retrieval-url", help="retriever base URL(s), comma-separated (checked only when given)")
    parser.add_argument("--policy-url", help="SGLang server or slime router URL (checked only when given)")
    parser.add_argument("--max-response-len", type=int, help="slime's --rollout-max-response-len, to check the budget")
    args = parser.parse_args(argv)
    if args.max_response_len is not None and args.max_response_len < 1:
        parser.error("--max-response-len must be >= 1")
    try:
        settings = load_settings_with_urls(args.retrieval_url)
    except ConfigError as exc:
        print(f"FAIL  settings: {exc}", flush=True)
        return 1
    if not (args.data or args.tokenizer or args.retrieval_url or args.policy_url or args.max_response_len):
        # Without them every check is skipped, and "preflight passed" would vouch for nothing.
        print(
            "preflight: nothing to check; give what the run uses: --data PARQUET, --tokenizer CHECKPOINT_DIR, "
            "--retrieval-url URL, --policy-url URL, --max-response-len N (any of them; see --help)",
            file=sys.stderr,
        )
        return 2
    settings = dataclasses.replace(settings, policy_retries=1, retrieval_retries=1, log_every=0)
    ok = run_checks(args, settings, lambda check: print(check.line(), flush=True))
    print("preflight passed" if ok else "preflight FAILED: fix the lines marked FAIL before starting the run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
