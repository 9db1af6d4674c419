"""The columns of slime-ready data, defined once: what ``data_preprocess.py`` writes, what ``--check``, the
preflight, the evaluator and the launch script's eval-set check require, and which slime flag reads which.

Standard library only: the launch script's checks import it under the ``python3`` of slime's image.
"""

from __future__ import annotations

PROMPT = "prompt"
TOOLS = "tools"
LABEL = "reward_model"
METADATA = "metadata"
DATA_SOURCE = "data_source"

# slime's key flags (training; the eval set flags are the same with --eval-) and the column each one names.
SLIME_KEY_FLAGS: dict[str, str] = {
    "--input-key": PROMPT,
    "--label-key": LABEL,
    "--tool-key": TOOLS,
    "--metadata-key": METADATA,
}

# What a slime-ready parquet must have: slime's keyed columns plus the data source the metrics group by.
REQUIRED_COLUMNS: tuple[str, ...] = (PROMPT, TOOLS, LABEL, DATA_SOURCE, METADATA)
