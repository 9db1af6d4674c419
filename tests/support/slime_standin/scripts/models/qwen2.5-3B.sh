# Stand-in for slime's model arguments: the launcher sources this file and passes MODEL_ARGS to train.py.
MODEL_ARGS=(--standin-model-args qwen2.5-3B)
