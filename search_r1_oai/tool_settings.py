"""A tool's own settings: rows of the same kind as the settings table's (:class:`search_r1_oai.config.Knob`), read
by the same rules: slime's ``args`` (keys of the config YAML) first, then the environment, then the default; a bad
value is a :class:`~search_r1_oai.config.ConfigError` naming the variable, where it came from and what is allowed.

A tool declares them as a frozen dataclass whose fields are :func:`tool_setting` rows, in its own file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from search_r1_oai import config

T = TypeVar("T")


def tool_setting(
    default: Any, env: str, kind: str, help: str, minimum: float | None = None, below: float | None = None
) -> Any:
    """One row: ``env`` is its variable (its lower-case form the config key), ``kind`` one of the table's kinds."""
    if env.startswith(config.ENV_PREFIX):
        # The table refuses unknown SEARCH_R1_* keys in slime's config; a tool's own rows take their own prefix.
        raise ValueError(f"{env}: a tool's setting must not start with {config.ENV_PREFIX} (the table's own prefix)")
    return config.setting(default, env, kind, help, minimum, below)


def load_tool_settings(cls: type[T], args: Any = None, env: Mapping[str, str] | None = None) -> T:
    """``cls`` with each row from ``args`` (by key), else ``env`` (by variable; ``os.environ`` by default), else its
    default."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for knob in config.rows(cls):
        sources = [(getattr(args, knob.key, None), knob.key, "the slime config (--custom-config-path, on args)")]
        sources.append((env.get(knob.env), knob.env, "the environment"))
        for raw, name, label in sources:
            if not config.is_blank(raw):
                values[knob.attr] = config.parse_value(knob, raw, name, label)
                break
    return cls(**values)
