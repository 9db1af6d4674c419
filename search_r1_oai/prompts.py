"""The prompt text and the ``search`` tool schema: one definition shared by data preprocessing and the rollout."""

from __future__ import annotations

import json
from typing import Any

SEARCH_TOOL_NAME = "search"

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": SEARCH_TOOL_NAME,
        "description": (
            "Search a Wikipedia index and return the most relevant passages for each query. "
            "Use it whenever you are missing a fact needed to answer."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "queries": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "One or more short, self-contained search queries.",
                }
            },
            "required": ["queries"],
        },
    },
}

SYSTEM_PROMPT = (
    "You are a careful research assistant that answers factual questions. "
    "Think step by step about what you know and what you still need. "
    f"Whenever you lack a fact, call the `{SEARCH_TOOL_NAME}` tool with one or more focused queries, "
    "read the returned passages, and search again if they are not enough. "
    "When you are confident, give the final answer inside <answer> and </answer> tags, "
    "for example <answer>Beijing</answer>. The answer should be a short entity or phrase, not a sentence."
)

USER_PROMPT_TEMPLATE = "Question: {question}"


def tools_json() -> str:
    """The tools list as the JSON string stored in the parquet ``tools`` column (slime ``json.loads`` it)."""
    return json.dumps([SEARCH_TOOL], ensure_ascii=False)


def build_messages(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The ``[system, user]`` prompt of one sample."""
    question = question.strip()
    if question and not question.endswith("?"):
        question += "?"
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": USER_PROMPT_TEMPLATE.format(question=question)},
    ]
