"""search_r1_oai.labels: the one label parser the reward scores with and the data checks validate with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from search_r1_data.check import check_rows
from search_r1_oai.labels import gold_answers, label_problems, raw_answers


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ({"ground_truth": {"target": ["Paris", "paris"]}, "style": "rule"}, ["Paris", "paris"]),
        ({"ground_truth": {"target": np.array(["a", "b"])}}, ["a", "b"]),  # parquet through pandas
        ({"ground_truth": ["x"]}, ["x"]),
        ({"target": ("y",)}, ["y"]),
        ("Darwin", ["Darwin"]),
        (["1969", 1969], ["1969", "1969"]),
        ({"ground_truth": {"target": []}}, []),
    ],
)
def test_gold_answers_reads_every_label_shape(label: Any, expected: list[str]) -> None:
    assert gold_answers(label) == expected


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ({"style": "rule"}, "neither 'ground_truth' nor 'target'"),
        ({"ground_truth": {"answer": "x"}}, "neither 'ground_truth' nor 'target'"),
        (None, "unsupported label type NoneType"),
        (3, "unsupported label type int"),
        ({"ground_truth": {"target": None}}, "unsupported label type NoneType"),
    ],
)
def test_unusable_labels_raise(label: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gold_answers(label)
    assert [message in problem for problem in label_problems(label)] == [True]


def test_raw_answers_keeps_what_gold_answers_would_stringify() -> None:
    label = {"ground_truth": {"target": ["ok", None, 7]}}
    assert raw_answers(label) == ["ok", None, 7]
    assert gold_answers(label) == ["ok", "None", "7"]  # what the reward would compare against


@pytest.mark.parametrize(
    ("label", "problems"),
    [
        ({"ground_truth": {"target": ["Charles Darwin"]}, "style": "rule"}, []),
        ({"ground_truth": {"target": []}}, ["has no gold answers: no prediction can ever match"]),
        ({"ground_truth": {"target": ["ok", None]}}, ["gold answer 1 is None, not a non-empty string"]),
        ({"ground_truth": {"target": [" "]}}, ["gold answer 0 is ' ', not a non-empty string"]),
        ({"ground_truth": {"target": ["the", "!"]}}, [
            "gold answer 0 'the' normalises to an empty answer",
            "gold answer 1 '!' normalises to an empty answer",
        ]),
    ],
)  # fmt: skip
def test_label_problems(label: Any, problems: list[str]) -> None:
    assert list(label_problems(label)) == problems


def test_the_data_check_reports_what_the_reward_cannot_score() -> None:
    """A row whose label the reward reads (no ValueError) but could only misjudge is still a data problem."""
    good = {"ground_truth": {"target": ["x"]}, "style": "rule"}
    rows = [{"reward_model": good}, {"reward_model": {"ground_truth": {"target": ["Paris", 3]}, "style": "rule"}}]
    assert gold_answers(rows[1]["reward_model"]) == ["Paris", "3"]
    assert [(p.row, p.column, p.message) for p in check_rows(rows)] == [
        (1, "reward_model", "gold answer 1 is 3, not a non-empty string")
    ]
