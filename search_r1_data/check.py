"""``data_preprocess.py --check``'s checker: a slime-ready parquet file read exactly as slime reads it, and every
label as the reward reads it.

The checks themselves are :mod:`search_r1_oai.data_check`: the preflight runs them too, and the worker package
must not reach up into data preparation, so they live there and this module names them for the data-prep side.
"""

from __future__ import annotations

from search_r1_oai.columns import REQUIRED_COLUMNS
from search_r1_oai.data_check import DEFAULT_BATCH_SIZE, MESSAGE_ROLES, Problem, _null_paths, check_file, check_rows

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MESSAGE_ROLES",
    "REQUIRED_COLUMNS",
    "Problem",
    "_null_paths",
    "check_file",
    "check_rows",
]
