"""Reward table tests: Search-R1 normalisation, EM/F1, format score, label shapes, list input."""

from __future__ import annotations

import numpy as np
import pytest

from generate_with_search_oai import reward_func, score_sample
from search_r1_oai.config import Settings
from search_r1_oai.reward import cover_exact_match, extract_answer, f1, gold_answers, normalize_answer, score
from tests.support.slime_stub import Sample

LABEL = {"ground_truth": {"target": ["The Beatles", "Beatles"]}, "style": "rule"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  an   Apple, a day!  ", "apple day"),
        ("Théâtre-Français", "théâtrefrançais"),
        ("U.S.A.", "usa"),
        ("the", ""),
        ("Anthem of the Seas", "anthem of seas"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>Paris</answer>", "Paris"),
        ("<answer>Lyon</answer> then <answer> Paris </answer>", "Paris"),
        ("<answer>multi\nline</answer>", "multi\nline"),
        ("no answer here", None),
        ("<answer>unclosed", None),
    ],
)
def test_extract_answer_takes_the_last(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (LABEL, ["The Beatles", "Beatles"]),
        ({"ground_truth": {"target": np.array(["x", "y"], dtype=object)}}, ["x", "y"]),
        ({"ground_truth": "solo"}, ["solo"]),
        ({"target": ["t"]}, ["t"]),
        ("plain", ["plain"]),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_gold_answer_shapes(label, expected: list[str]) -> None:
    assert gold_answers(label) == expected


def test_f1_partial_overlap() -> None:
    assert f1("the Beatles band", ["Beatles"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1("Rolling Stones", ["Beatles"]) == 0.0
    assert f1("Beatles", ["Stones", "beatles"]) == 1.0


def _sample(final: str, status: str = "COMPLETED", label=LABEL, **metadata) -> Sample:
    meta = {"final_content": final, "stop_reason": "answer", "tool_errors": 0, "bad_tool_calls": 0, **metadata}
    return Sample(label=label, status=Sample.Status[status], metadata=meta, response="ignored")


FORMAT = 0.2


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (_sample("I think <answer>the beatles</answer>"), 1.0),
        (_sample("<answer>Beatles.</answer>"), 1.0),
        (_sample("<answer>Rolling Stones</answer>"), FORMAT),
        (_sample("no tags, Beatles"), 0.0),
        (_sample("<answer>Stones</answer> or <answer>Beatles</answer>"), 1.0),
        (_sample("<answer>Stones</answer> or <answer>Kinks</answer>"), 0.0),
        (_sample("<answer>Stones</answer>", tool_errors=1, bad_tool_calls=1), 0.0),
        # The retriever failing is not the policy's fault: a well-formed call keeps the format score.
        (_sample("<answer>Stones</answer>", tool_errors=1, bad_tool_calls=0), FORMAT),
        (_sample("<answer>Stones</answer>", status="TRUNCATED", stop_reason="length"), 0.0),
        (_sample("<answer>Stones</answer>", status="TRUNCATED", stop_reason="max_turns"), 0.0),
        (_sample("<answer>Stones</answer>", status="FAILED", stop_reason="policy_error"), 0.0),
        (_sample("<answer>Beatles</answer>", status="TRUNCATED", stop_reason="length"), 1.0),
    ],
)
async def test_reward_table(sample: Sample, expected: float) -> None:
    assert await reward_func(None, sample, settings=Settings(format_score=FORMAT)) == expected


async def test_format_score_is_configurable_and_metrics_recorded() -> None:
    wrong = _sample("<answer>the Beatles band</answer>")
    assert await reward_func(None, wrong, settings=Settings(format_score=0.0)) == 0.0
    assert wrong.metadata["em"] == 0.0
    assert wrong.metadata["f1"] == pytest.approx(2 / 3)  # "beatles band" vs "beatles": P=1/2, R=1
    assert wrong.metadata["pred_answer"] == "the Beatles band"


async def test_list_of_samples_gives_list_in_order() -> None:
    samples = [_sample("<answer>Beatles</answer>"), _sample("<answer>x</answer>"), _sample("none")]
    assert await reward_func(None, samples, settings=Settings(format_score=FORMAT)) == [1.0, FORMAT, 0.0]


async def test_response_text_is_used_without_rollout_metadata() -> None:
    sample = Sample(label="Paris", status=Sample.Status.COMPLETED, response="<answer>paris</answer>")
    assert await reward_func(None, sample, settings=Settings()) == 1.0


def test_unusable_label_scores_zero_with_reason() -> None:
    sample = _sample("<answer>x</answer>", label={"weird": 1})
    assert score_sample(sample, FORMAT) == 0.0
    assert "ground_truth" in sample.metadata["reward_error"]


@pytest.mark.parametrize(
    ("prediction", "golds", "covered"),
    [
        ("the Beatles band", ["Beatles"], True),
        ("Beatles", ["The Beatles"], True),
        ("Paul McCartney", ["Beatles", "Paul"], True),
        ("Bea", ["Beatles"], False),
        ("anything", ["the"], False),  # a gold answer that normalises to nothing covers nothing
    ],
)
def test_cover_exact_match(prediction: str, golds: list[str], covered: bool) -> None:
    assert cover_exact_match(prediction, golds) is covered


def test_score_reports_cover_em_beside_em() -> None:
    result = score("<answer>the Beatles, of course</answer>", LABEL, well_formed=True, format_score=0.2)
    assert result.em == 0.0 and result.cover_em == 1.0 and result.reward == 0.2
    assert score("no answer", LABEL, well_formed=False, format_score=0.2).cover_em == 0.0
