#!/usr/bin/env bash
# Stand-in for slime's model arguments: the launcher sources this file and passes MODEL_ARGS to train.py.
# shellcheck disable=SC2034  # read by the script that sources this file
MODEL_ARGS=(--standin-model-args qwen2.5-3B)
