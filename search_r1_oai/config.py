"""Rollout and reward settings: one table, the fields of :class:`Settings`, each naming its variable and its help.

A setting is read from slime's ``args`` first (slime copies every key of ``--custom-config-path FILE.yaml`` onto
``args``, and ``args`` reaches every Ray worker), then from the environment, then the default. The README table, the
run script's ``--help`` and an example config are printed from the same fields (``--markdown``, ``--help-text``,
``--yaml``). Standard library only: the run script runs this file with whatever ``python3`` the node has.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import math
import os
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DEFAULT_RETRIEVAL_URL = "http://127.0.0.1:8000"
ENV_PREFIX = "SEARCH_R1_"
KEY_PREFIX = "search_r1_"
# The run script's variable naming a user config file; it is not a setting itself.
CONFIG_FILE_VARIABLE = "SEARCH_R1_CONFIG"
KNOBS_KEY = "search_r1_knobs"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it, where it came from and what is allowed."""


@dataclass(frozen=True)
class Knob:
    """One row of the table: a variable, its parser and help."""

    env: str
    kind: str  # int | float | bool | str | urls | modules
    help: str
    minimum: float | None = None
    below: float | None = None  # exclusive upper bound
    attr: str = ""
    default: Any = None
    secret: bool = False  # its value is never printed: tables, --help, errors and the run script's dry run mask it

    @property
    def key(self) -> str:
        """Its name in a slime config YAML (and on slime's ``args``)."""
        return self.env.lower()

    def allowed(self) -> str:
        return {
            "int": f"an integer >= {self.minimum}",
            "float": f"a finite number >= {self.minimum}" + (f" and < {self.below}" if self.below is not None else ""),
            "bool": "a boolean (true/false, 1/0, yes/no, on/off)",
            "str": "a non-empty string",
            "urls": "http:// or https:// URLs, as a YAML list or one comma-separated string",
            "modules": "Python module names (package.module), as a YAML list or one comma-separated string",
        }[self.kind]


def setting(
    default: Any,
    env: str,
    kind: str,
    help: str,
    minimum: float | None = None,
    below: float | None = None,
    secret: bool = False,
) -> Any:
    """One row of the table: a dataclass field whose metadata holds its :class:`Knob` (variable, kind, help,
    bounds). Public so a tool's own settings (``tool_settings.tool_setting``) are rows read the same way."""
    knob = Knob(env, kind, help, minimum, below=below, secret=secret)
    # A secret stays out of repr(settings), so a log line or traceback that prints the settings cannot show it.
    return field(default=default, repr=not secret, metadata={KNOBS_KEY: knob})


MASK = "***"


@dataclass(frozen=True)
class Settings:
    """Every rollout/reward knob. Build it with :func:`load_settings` (or directly in tests); the defaults here are
    the only ones."""

    retrieval_urls: tuple[str, ...] = setting(
        (DEFAULT_RETRIEVAL_URL,),
        "RETRIEVAL_SERVER_URL",
        "urls",
        "Retriever base URL (POST /retrieve). Several (comma-separated, or a YAML list) are replicas: each search "
        "steps through them, and one that refused a connection or answered 503 is skipped by every rollout of the "
        "process for a few seconds (then one search probes it).",
    )
    topk: int = setting(
        3,
        "SEARCH_R1_TOPK",
        "int",
        "Passages per search query, sent in every request; the training wrapper starts its retriever with the same "
        "--topk.",
        1,
    )
    max_turns: int = setting(
        4,
        "SEARCH_R1_MAX_TURNS",
        "int",
        "Most assistant turns (policy calls) per trajectory; one still calling tools after the last is TRUNCATED.",
        1,
    )
    context_budget: int = setting(
        16384,
        "SEARCH_R1_CONTEXT_BUDGET",
        "int",
        "Most tokens in a whole trajectory (prompt, turns, tool results); each turn's max_tokens is slime's "
        "max_new_tokens capped by what is left. Unset, it is slime's --rollout-max-context-len when that is given.",
        16,
    )
    policy_model: str = setting(
        "default",
        "SEARCH_R1_POLICY_MODEL",
        "str",
        "The model field of /v1/chat/completions requests (SGLang serves its one model under any name).",
    )
    policy_timeout_s: float = setting(
        600.0,
        "SEARCH_R1_POLICY_TIMEOUT_S",
        "float",
        "Timeout of one attempt of a policy call (a whole turn), seconds: from connecting to the last byte of the "
        "reply, so a server that trickles bytes or stalls after its headers trips it too.",
        0.001,
    )
    policy_deadline_s: float = setting(
        1200.0,
        "SEARCH_R1_POLICY_DEADLINE_S",
        "float",
        "Longest one policy call may take, all attempts and backoff waits together, seconds; no attempt runs past "
        "it and no retry starts after it. Then the sample is FAILED (stop_reason policy_error).",
        0.001,
    )
    retrieval_timeout_s: float = setting(
        30.0,
        "SEARCH_R1_RETRIEVAL_TIMEOUT_S",
        "float",
        "Timeout of one attempt of a /retrieve call, seconds, from connecting to the last byte of the reply.",
        0.001,
    )
    retrieval_deadline_s: float = setting(
        120.0,
        "SEARCH_R1_RETRIEVAL_DEADLINE_S",
        "float",
        "Longest one search may take, all attempts, replicas and backoff waits together, seconds; then the tool "
        "message says the search failed and the trajectory carries on.",
        0.001,
    )
    retrieval_max_reply_mb: float = setting(
        4.0,
        "SEARCH_R1_RETRIEVAL_MAX_REPLY_MB",
        "float",
        "Largest /retrieve reply read, MiB (a search of 100 queries x 10 passages is about 1 MiB); reading stops "
        "there and the search fails with a tool message, so a broken retriever cannot make every rollout of the "
        "process wait while megabytes of JSON are parsed (~5 ms per MiB).",
        0.001,
    )
    trajectory_timeout_s: float = setting(
        1800.0,
        "SEARCH_R1_TRAJECTORY_TIMEOUT_S",
        "float",
        "Wall-clock bound of one trajectory (every turn, search and wait of one generate call), seconds. slime waits "
        "for every sample of a rollout step, so this bounds the step: a Search-R1 step (a few hundred prompts x 5 "
        "samples, <= 4 turns of <= 500 new tokens on a 3B policy) takes minutes, so 30 min never cuts a healthy "
        "trajectory and a stuck one holds the step at most that long. Past it the sample ends TRUNCATED with "
        "stop_reason deadline and is not trained on (the cut is the servers' doing, not the policy's).",
        0.001,
    )
    connect_timeout_s: float = setting(
        10.0, "SEARCH_R1_CONNECT_TIMEOUT_S", "float", "TCP connect timeout for both servers, seconds.", 0.001
    )
    concurrency: int = setting(
        256,
        "SEARCH_R1_CONCURRENCY",
        "int",
        "Most concurrent requests per server (policy, retriever) from one rollout process; match slime's rollout "
        "concurrency. Requests are spread over ceil(N/8) pooled HTTP clients (one big httpx pool burns a core at "
        "~50 req/s).",
        1,
    )
    policy_retries: int = setting(
        3,
        "SEARCH_R1_POLICY_RETRIES",
        "int",
        "Extra attempts after a policy call fails with a connection error, timeout, 5xx or 429; other 4xx fail the "
        "sample at once with the server's message.",
        0,
    )
    retrieval_retries: int = setting(
        3,
        "SEARCH_R1_RETRIEVAL_RETRIES",
        "int",
        "The same for the retriever; after the last attempt the tool message says what failed.",
        0,
    )
    retriever_api_key: str | None = setting(
        None,
        "RETRIEVER_API_KEY",
        "str",
        "Bearer token sent as `Authorization: Bearer ...` with every /retrieve request, for a retriever started "
        "with RETRIEVER_API_KEY in its environment (unset: no header). A secret: never printed; the run script "
        "hands it to the job in its private slime config, never in Ray's runtime env.",
        secret=True,
    )
    retry_initial_wait_s: float = setting(
        0.5, "SEARCH_R1_RETRY_INITIAL_WAIT_S", "float", "First wait of the exponential backoff (with jitter).", 0.0
    )
    retry_max_wait_s: float = setting(
        8.0, "SEARCH_R1_RETRY_MAX_WAIT_S", "float", "Longest single wait of the exponential backoff.", 0.0
    )
    tool_result_max_chars: int = setting(
        32768,
        "SEARCH_R1_TOOL_RESULT_MAX_CHARS",
        "int",
        "Most characters of one tool result; longer ones are cut (with a note saying so) before anything tokenizes "
        "them, so a retriever answering megabytes costs no time or memory.",
        1,
    )
    tool_result_max_tokens: int = setting(
        4096,
        "SEARCH_R1_TOOL_RESULT_MAX_TOKENS",
        "int",
        "Most tokens of one tool result after the character cut (Search-R1's 3 passages are ~500); longer ones are "
        "cut at a token boundary, with a note.",
        1,
    )
    log_every: int = setting(
        100,
        "SEARCH_R1_LOG_EVERY",
        "int",
        "Log one trajectory turn by turn (logger search_r1_oai.rollout) every N samples; 0 turns it off.",
        0,
    )
    allow_reencode_fallback: bool = setting(
        False,
        "SEARCH_R1_ALLOW_REENCODE_FALLBACK",
        "bool",
        "true runs against an SGLang older than 0.5.13 (no token ids) by re-encoding text: NOT token-exact, the "
        "drift is counted in sample.metadata['drift_tokens']. false fails every sample naming the version needed.",
    )
    verify_prompt_ids: bool = setting(
        False,
        "SEARCH_R1_VERIFY_PROMPT_IDS",
        "bool",
        "true compares the server's prompt ids with ours id for id on every turn (JSON proportional to the "
        "conversation); false takes them from the server on turn 1 and checks later turns by count.",
    )
    format_score: float = setting(
        0.2,
        "SEARCH_R1_FORMAT_SCORE",
        "float",
        "Reward of a well-formed trajectory whose answer is wrong (Search-R1's format reward); 0 disables it. "
        "Below 1, a correct answer's reward.",
        0.0,
        1.0,
    )
    tool_call_start: str = setting(
        "<tool_call>",
        "SEARCH_R1_TOOL_CALL_START",
        "str",
        "Start marker of a tool call in the model's raw output: calls the server's parser rejected (bad JSON, "
        "unknown tool) become an error message instead of a silent final answer.",
    )
    tool_call_end: str = setting(
        "</tool_call>", "SEARCH_R1_TOOL_CALL_END", "str", "End marker of a tool call in the model's raw output."
    )
    tool_modules: tuple[str, ...] = setting(
        (),
        "SEARCH_R1_TOOL_MODULES",
        "modules",
        "Your own tools: Python modules (importable from the project root, e.g. my_tools for my_tools.py) that "
        "every rollout process imports before its first sample; each registers its tools with "
        "search_r1_oai.tools.register_tool (README: To add a tool). search is always there; a sample offers the "
        "tools whose schemas are in its tools column.",
    )
    # ---- run script (run_qwen2.5-3B-it.sh): read by its launcher, which turns it into slime's flags ----
    dynamic_sampling: bool = setting(
        False,
        "DYNAMIC_SAMPLING",
        "bool",
        "true turns on slime's dynamic sampling: slime's filter check_reward_nonzero_std drops each group whose "
        "rewards are all equal (no GRPO signal; counted in rollout/dynamic_filter/drop_zero_std_<reward>) and "
        "--over-sampling-batch-size is 2 x the rollout batch size: one wave of prompts then fills the batch while up "
        "to half the groups are dropped (early on many questions are all-wrong, later many all-right), instead of a "
        "new wave for every drop (slime's default, the batch size itself); groups still running when the batch is "
        "full are aborted, which costs their generation, not another wave.",
    )

    # ---- training-health monitor (search_r1_oai/health.py): rollout/health/*, eval/<set>/health/*, WARN lines ----
    health: bool = setting(
        True,
        "SEARCH_R1_HEALTH",
        "bool",
        "Training-health monitor: after each rollout and evaluation, flag the failure modes of GRPO search training "
        "(search or length collapse, format failures, no-signal groups, ...) as rollout/health/* and eval/<set>/health/* "
        "metrics and one WARN line each (what it means, the numbers, one thing to try). false turns it off.",
    )
    health_window: int = setting(
        5,
        "SEARCH_R1_HEALTH_WINDOW",
        "int",
        "Previous rollouts (evaluations: of the same set) a batch is compared with; the trend checks (search "
        "collapse, length, rising rates) wait for 2 of them (1 with a window of 1).",
        1,
    )
    health_min_searches: float = setting(
        0.05,
        "SEARCH_R1_HEALTH_MIN_SEARCHES",
        "float",
        "Searches per sample at or below which search counts as collapsed (search_collapse, when the reward is flat).",
        0.0,
    )
    health_flat_reward: float = setting(
        0.05,
        "SEARCH_R1_HEALTH_FLAT_REWARD",
        "float",
        "Largest change of the mean reward against the window's mean that still counts as flat (a change within 3 "
        "standard errors of the batch's mean counts as flat too).",
        0.0,
    )
    health_length_low: float = setting(
        0.5,
        "SEARCH_R1_HEALTH_LENGTH_LOW",
        "float",
        "response_length_collapse: the mean response length fell below this fraction of the window's mean.",
        0.0,
        1.0,
    )
    health_length_high: float = setting(
        2.0,
        "SEARCH_R1_HEALTH_LENGTH_HIGH",
        "float",
        "response_length_blowup: the mean response length rose above this multiple of the window's mean.",
        1.0,
    )
    health_rate_rise: float = setting(
        0.15,
        "SEARCH_R1_HEALTH_RATE_RISE",
        "float",
        "Format failures, answer-less samples and truncations are rising when their share exceeds the window's mean "
        "by this much (and by 3 binomial standard deviations, so a small batch's noise does not count).",
        0.0,
        1.0,
    )
    health_max_zero_std_share: float = setting(
        0.5,
        "SEARCH_R1_HEALTH_MAX_ZERO_STD_SHARE",
        "float",
        "no_signal_groups: the share of GRPO groups (samples of one prompt) whose rewards are all equal, so GRPO "
        "learns nothing from them, above which the monitor warns.",
        0.0,
    )
    health_min_token_exact: float = setting(
        1.0,
        "SEARCH_R1_HEALTH_MIN_TOKEN_EXACT",
        "float",
        "token_exact_below_1: the share of token-exact samples below which the monitor warns (0 never warns).",
        0.0,
    )
    health_max_tool_error_rate: float = setting(
        0.1,
        "SEARCH_R1_HEALTH_MAX_TOOL_ERROR_RATE",
        "float",
        "tool_errors_high: the share of tool calls that failed (retriever errors and malformed calls) above which "
        "the monitor warns.",
        0.0,
    )
    health_max_retrieval_p99_s: float = setting(
        5.0,
        "SEARCH_R1_HEALTH_MAX_RETRIEVAL_P99_S",
        "float",
        "retrieval_p99_high: the p99 latency of one /retrieve call, seconds, above which the monitor warns.",
        0.0,
    )

    @property
    def tool_call_markers(self) -> tuple[str, str]:
        """The start and end marker of a tool call in raw output text, as the parser takes them."""
        return self.tool_call_start, self.tool_call_end

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of the environment alone (``os.environ`` by default); kept for callers without ``args``."""
        return load_settings(None, env)


def rows(cls: type[Any]) -> tuple[Knob, ...]:
    """The rows of a settings dataclass made of :func:`setting` fields, in order, each knowing its field and
    default."""
    return tuple(
        dataclasses.replace(f.metadata[KNOBS_KEY], attr=f.name, default=f.default) for f in dataclasses.fields(cls)
    )


SETTINGS: tuple[Knob, ...] = rows(Settings)
"""Every setting, in table order: the single source of the README table, ``--help`` and the example config."""
KEYS = frozenset(knob.key for knob in SETTINGS)
ENV_NAMES = frozenset(knob.env for knob in SETTINGS)


@dataclass(frozen=True)
class _Source:
    values: Mapping[str, Any]
    by_key: bool  # looked up by config key (args, YAML) rather than by variable name
    label: str

    def name(self, knob: Knob) -> str:
        return knob.key if self.by_key else knob.env


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_value(knob: Knob, value: Any, name: str, label: str) -> Any:
    """``value`` (a string from the environment, or a YAML native) as ``knob``'s type, or a :class:`ConfigError`."""

    def bad(detail: str = "") -> ConfigError:
        shown = MASK if knob.secret else repr(value)
        return ConfigError(f"{name}={shown} in {label}: expected {knob.allowed()}{detail}")

    if knob.kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad()
        try:
            number = (int if knob.kind == "int" else float)(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise bad() from None
        if knob.kind == "int" and isinstance(value, float) and number != value:
            raise bad()
        if not math.isfinite(number) or (knob.minimum is not None and number < knob.minimum):
            raise bad()
        if knob.below is not None and number >= knob.below:
            raise bad()
        return number
    if knob.kind == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower() if isinstance(value, str | int) else None
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise bad()
    if knob.kind == "str":
        if not isinstance(value, str):
            raise bad()
        return value
    return _listed(knob, value, bad)


def _listed(knob: Knob, value: Any, bad: Callable[[str], ConfigError]) -> tuple[str, ...]:
    """A list setting (``urls``, ``modules``): a YAML list or one comma-separated string, each entry checked. An
    empty YAML list of modules is none (the default); every other list must name something."""
    if knob.kind == "modules" and isinstance(value, list | tuple) and not value:
        return ()
    parts: list[Any] = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
    if not parts or not all(isinstance(part, str) for part in parts):
        raise bad("")
    names = tuple(piece.strip() for part in parts for piece in part.split(",") if piece.strip())
    if not names:
        raise bad(" (it names no URL)" if knob.kind == "urls" else " (it names no module)")
    if knob.kind == "modules":
        for module in names:
            if not all(word.isidentifier() for word in module.split(".")):
                raise bad(f" ({module!r} is not a module name)")
        return names
    urls = tuple(name.rstrip("/") for name in names)
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise bad(f" ({url!r} must start with http:// or https://)")
    return urls


def _resolve(sources: Sequence[_Source]) -> dict[Knob, tuple[Any, _Source | None]]:
    """For each knob: its value from the first source that sets it (blank counts as unset), else its default."""
    chosen: dict[Knob, tuple[Any, _Source | None]] = {}
    for knob in SETTINGS:
        chosen[knob] = (knob.default, None)
        for source in sources:
            raw = source.values.get(source.name(knob))
            if not is_blank(raw):
                chosen[knob] = (parse_value(knob, raw, source.name(knob), source.label), source)
                break
    return chosen


def _unknown(names: Sequence[str], known: frozenset[str], prefix: str, label: str) -> None:
    """A misspelt setting would otherwise do nothing, silently: refuse it, with the closest real name."""
    for name in names:
        if name.startswith(prefix) and name not in known and name != CONFIG_FILE_VARIABLE:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{name} in {label} is not a setting{hint} (python search_r1_oai/config.py --help-text)")


def load_settings(args: Any | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings a rollout uses: slime's ``args`` (keys of the config YAML) first, then ``env``
    (``os.environ`` by default), then the defaults. ``context_budget`` set in neither is slime's
    ``--rollout-max-context-len`` when that is given. A bad value raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    sources = []
    if args is not None:
        label = "the slime config (--custom-config-path, on args)"
        _unknown(list(getattr(args, "__dict__", {})), KEYS, KEY_PREFIX, label)
        sources.append(_Source({knob.key: getattr(args, knob.key, None) for knob in SETTINGS}, True, label))
    sources.append(_Source(env, False, "the environment"))
    chosen = _resolve(sources)
    budget = next(knob for knob in SETTINGS if knob.attr == "context_budget")
    max_context = getattr(args, "rollout_max_context_len", None)
    if chosen[budget][1] is None and isinstance(max_context, int) and not isinstance(max_context, bool):
        value = parse_value(budget, max_context, "rollout_max_context_len", "slime's args (--rollout-max-context-len)")
        chosen[budget] = (value, None)
    return _build(chosen)


def load_settings_with_urls(retrieval_urls: str | None, env: Mapping[str, str] | None = None) -> Settings:
    """The environment's settings with ``RETRIEVAL_SERVER_URL`` replaced by a command line's ``--retrieval-url``
    (comma-separated), for the tools that run outside slime: evaluate.py, show_trajectory, the preflight."""
    settings = load_settings(env=env)
    if not retrieval_urls:
        return settings
    urls = load_settings(env={"RETRIEVAL_SERVER_URL": retrieval_urls}).retrieval_urls
    return dataclasses.replace(settings, retrieval_urls=urls)


def _build(chosen: Mapping[Knob, tuple[Any, _Source | None]]) -> Settings:
    return Settings(**{knob.attr: value for knob, (value, _) in chosen.items()})


# ---- rendering: the README table, the run script's --help, the example config ---------------------------------


def _shown(knob: Knob) -> str:
    """A default as it is written in a config (and, for the URL list, in the variable)."""
    if knob.secret or knob.default is None or knob.default == ():
        return "unset"
    if isinstance(knob.default, tuple):
        return ",".join(knob.default)
    if isinstance(knob.default, bool):
        return "true" if knob.default else "false"
    return f"{knob.default:g}" if isinstance(knob.default, float) else str(knob.default)


def render_markdown() -> str:
    """The README's settings table."""
    rows = ["| Variable / config key | Default | Meaning |", "| --- | --- | --- |"]
    for knob in SETTINGS:
        text = knob.help.replace("|", "\\|")
        rows.append(f"| `{knob.env}` / `{knob.key}` | `{_shown(knob)}` | {text} |")
    return "\n".join(rows) + "\n"


def render_help_text(width: int = 116) -> str:
    """The settings part of the run script's ``--help``."""
    lines = []
    for knob in SETTINGS:
        lines.append(f"  {knob.env} / {knob.key} [{_shown(knob)}]")
        lines.extend(textwrap.wrap(knob.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    """``value`` in YAML that PyYAML reads back as the same type (JSON, except floats like ``1e-05``, which
    PyYAML's YAML 1.1 resolver would read as a string)."""
    if isinstance(value, float) and not isinstance(value, bool):
        text = repr(value)
        if "e" in text and "." not in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_scalar(item) for item in value) + "]"
    return json.dumps(value)


def render_yaml() -> str:
    """An example slime config with every setting at its default (pass it with ``--custom-config-path``)."""
    lines = [
        "# search-r1-oai rollout settings (python search_r1_oai/config.py --yaml). A key here wins over its variable."
    ]
    for knob in SETTINGS:
        lines.extend("# " + line for line in textwrap.wrap(f"{knob.help} [{knob.env}]", 114))
        value = list(knob.default) if isinstance(knob.default, tuple) else knob.default
        entry = f"{knob.key}: {_yaml_scalar(value)}"
        if knob.attr == "context_budget":  # set, it would hide slime's --rollout-max-context-len
            entry = "# " + entry
        if knob.secret or value is None:  # no value to show; a secret's belongs in a private file only
            entry = f"# {knob.key}: ..."
        lines.append(entry)
    return "\n".join(lines) + "\n"


# ---- the run script's config file ------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A user's slime config YAML (PyYAML is imported only here: slime's image has it)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path} needs PyYAML, which this python3 lacks") from None
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path} is not valid YAML: {' '.join(str(error).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path} must hold a mapping of keys to values")
    return data


_FLAG = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)")
# slime's parser takes SGLang's server and router flags under these prefixes (slime/backends/sglang_utils).
SLIME_FLAG_PREFIXES = ("sglang_", "router_")


def _flag_key(flag: str) -> str | None:
    """``--rollout-temperature`` (or ``--rollout-temperature=1``) as the ``args`` attribute it sets; else None."""
    match = _FLAG.fullmatch(flag.split("=", 1)[0])
    return match.group(1).replace("-", "_") if match else None


def flags_defined_in(package: Path) -> frozenset[str]:
    """The flags (as ``args`` attributes) that the ``*arguments*.py`` files under ``package`` (slime's own package)
    define: the string ``--name`` arguments (and ``dest=``) of every call there (slime's ``add_argument`` and
    ``reset_arg``). Read, not imported: the launcher's python3 has no torch, and a login node may have no GPU."""
    names: set[str] = set()
    for path in sorted(package.rglob("*arguments*.py")):
        try:
            tree = ast.parse(path.read_bytes(), str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            flags = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            keys = [key for flag in flags if flag.startswith("--") and (key := _flag_key(flag))]
            if keys:
                names.update(keys)
                dest = next((kw.value for kw in node.keywords if kw.arg == "dest"), None)
                if isinstance(dest, ast.Constant) and isinstance(dest.value, str):
                    names.add(dest.value)
    return frozenset(names)


def flags_of_command(argv: Sequence[str]) -> frozenset[str]:
    """The flags a command line passes, as ``args`` attributes."""
    return frozenset(key for arg in argv if (key := _flag_key(arg)))


def _as_flag(key: str, value: Any) -> str:
    """What to put on slime's command line instead of ``key: value`` in its config file."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return f"pass {flag}"
    if value is False or value is None:
        return f"leave {flag} out"
    items = value if isinstance(value, list) else [value]
    words = [json.dumps(item) if isinstance(item, dict | list | bool) else str(item) for item in items]
    return "pass " + " ".join([flag, *(shlex.quote(word) for word in words)])


def refuse_slime_flags(base: Mapping[str, Any], slime_flags: frozenset[str], label: str) -> None:
    """slime applies ``--custom-config-path`` at the end of its argument validation, after it resolved the eval
    datasets from the flags (slime/utils/arguments.py, slime_validate_args): a flag of slime's set there is never
    checked (``rollout_temperature: 0``) or never reaches the eval datasets (``eval_temperature``). Such a key is
    refused, naming the flag to pass instead."""
    for key, value in base.items():
        name = str(key)
        if name not in KEYS and (name in slime_flags or name.startswith(SLIME_FLAG_PREFIXES)):
            raise ConfigError(
                f"{name} in {label} is slime's own flag: {_as_flag(name, value)} on the command line (slime validates"
                " its flags and builds the eval datasets from them, then applies this file unchecked)"
            )


def slime_config(
    env: Mapping[str, str],
    base: Mapping[str, Any] | None = None,
    base_label: str = "",
    check_env: bool = True,
    slime_flags: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The slime config the run script passes with ``--custom-config-path``: ``base`` (a user's file: the settings
    and keys of the user's own, none of ``slime_flags``) with each setting given in ``env`` on top: the variable is
    the more specific act. Only settings that are set appear, so unset ones keep their defaults (and the context
    budget its slime fallback)."""
    base = dict(base or {})
    label = base_label or "the config file"
    if check_env:
        _unknown(sorted(env), ENV_NAMES, ENV_PREFIX, "the environment")
    _unknown([str(key) for key in base], KEYS, KEY_PREFIX, label)
    refuse_slime_flags(base, slime_flags, label)
    chosen = _resolve([_Source(env, False, "the environment"), _Source(base, True, label)])
    merged = dict(base)
    for knob, (value, source) in chosen.items():
        if source is not None:
            merged[knob.key] = list(value) if isinstance(value, tuple) else value
    load_settings(
        SimpleNamespace(**{str(k): v for k, v in merged.items()}), {}
    )  # what a worker will do with it: must not fail there
    return merged


# slime's own key for the W&B key: slime logs in with args.wandb_key on the driver and on every actor that tracks
# (slime/observability/wandb_utils.py), and args reach the actors pickled, never through Ray's runtime env.
WANDB_KEY = "wandb_key"
WANDB_KEY_VARIABLE = "WANDB_API_KEY"
SECRET_KEYS = frozenset({WANDB_KEY} | {knob.key for knob in SETTINGS if knob.secret})


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every secret's value replaced by ``***``: what may be printed."""
    return {key: MASK if str(key) in SECRET_KEYS and not is_blank(value) else value for key, value in config.items()}


def write_private(path: str | Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only (0600 from the first byte), complete before it has its
    name: a temp file beside it, renamed into place."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def dump_slime_config(config: Mapping[str, Any], use_yaml: bool) -> str:
    """One line of YAML: PyYAML's flow style when a user's file brought arbitrary values, else our own emitter."""
    if use_yaml:
        import yaml

        return yaml.safe_dump(dict(config), default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_scalar(v)}" for k, v in config.items()) + "}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Print the settings table, or build the run script's config.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--markdown", action="store_true", help="the README table")
    mode.add_argument("--help-text", action="store_true", help="the run script's --help block")
    mode.add_argument("--yaml", action="store_true", help="an example slime config with every default")
    mode.add_argument(
        "--slime-config", action="store_true", help="one-line YAML: --base FILE with the environment's settings on top"
    )
    mode.add_argument(
        "--value", metavar="VARIABLE", help="one setting as the run scripts see it (env > --base > default)"
    )
    parser.add_argument(
        "--base", metavar="FILE", help=f"a user's slime config YAML (the run script's {CONFIG_FILE_VARIABLE})"
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help=f"with --slime-config: write the config (with {WANDB_KEY} from {WANDB_KEY_VARIABLE}, and every secret) "
        "to FILE, mode 0600; stdout always shows secrets as ***",
    )
    parser.add_argument(
        "--slime-dir", metavar="DIR", help="a slime checkout: keys of --base that are flags of its slime/ are refused"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: slime's command line; keys of --base among its flags are refused",
    )
    return parser


def _merged_config(options: argparse.Namespace) -> dict[str, Any]:
    """``--base`` with the environment's settings on top, checked against slime's flags where slime is at hand."""
    base = read_config_file(options.base) if options.base else {}
    label = f"{CONFIG_FILE_VARIABLE}={options.base}"
    flags = flags_of_command(options.command)
    package = Path(options.slime_dir) / "slime" if options.slime_dir is not None else None
    if package is not None and package.is_dir():
        flags |= flags_defined_in(package)
    config = slime_config(os.environ, base, label, check_env=options.slime_config, slime_flags=flags)
    unchecked = [str(key) for key in base if str(key) not in KEYS and str(key) not in flags]
    if package is not None and not package.is_dir() and unchecked:
        print(
            f"warning: {', '.join(unchecked)} in {label}: not checked against slime's flags (no {package});"
            " slime's own flags belong on the command line",
            file=sys.stderr,
        )
    return config


def _print_config(options: argparse.Namespace, config: dict[str, Any]) -> None:
    """``--slime-config``: the config with the W&B key added, to ``--output`` (0600) and, masked, to stdout."""
    wandb_key = os.environ.get(WANDB_KEY_VARIABLE, "").strip()
    if wandb_key:
        config[WANDB_KEY] = wandb_key
    if options.output:
        write_private(options.output, dump_slime_config(config, use_yaml=bool(options.base)) + "\n")
    print(dump_slime_config(masked(config), use_yaml=bool(options.base)))


def _print_value(name: str, config: dict[str, Any]) -> None:
    """``--value``: one setting as the run scripts see it; never a secret."""
    knob = next((knob for knob in SETTINGS if knob.env == name), None)
    if knob is None:
        raise ConfigError(f"{name} is not a setting")
    if knob.secret:
        raise ConfigError(f"{name} is a secret: it is never printed")
    value = getattr(load_settings(SimpleNamespace(**{str(k): v for k, v in config.items()}), {}), knob.attr)
    print(",".join(value) if isinstance(value, tuple) else value)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    renderers = {"markdown": render_markdown, "help_text": render_help_text, "yaml": render_yaml}
    chosen = next((render for name, render in renderers.items() if getattr(options, name)), None)
    if chosen is not None:
        sys.stdout.write(chosen())
        return 0
    try:
        config = _merged_config(options)
        if options.slime_config:
            _print_config(options, config)
        else:
            _print_value(options.value, config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
