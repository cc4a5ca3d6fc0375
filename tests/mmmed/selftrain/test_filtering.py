"""The self-training filter: right answers kept, wrong and unparsed ones dropped, checkers drop wrong readings."""

from __future__ import annotations

import pytest

from mmmed.eval.scoring import AnswerScorer
from mmmed.selftrain.filtering import ComparisonChecker, StatedValueChecker, judge
from mmmed.eval.rationale import Rationale

YES_NO = AnswerScorer({"YES": r"^\W*yes\b", "NO": r"^\W*no\b"})
HEART_RATE = StatedValueChecker("heart_rate", "heart_rate", r"(\d+(?:\.\d+)?)\s*bpm", tolerance=10)


def test_a_right_answer_is_kept_and_a_wrong_or_unparsed_one_dropped():
    right = judge("Reasoning: The rate is 82 bpm, above 75.\nAnswer: Yes.", "Yes.", "YES", {"heart_rate": 82.4},
                  YES_NO, [HEART_RATE])
    assert (right.kept, right.reason) == (True, "kept")
    assert right.rationale == Rationale("The rate is 82 bpm, above 75.", "Yes.")
    assert right.verdicts_json() == [{"checker": "heart_rate", "keep": True,
                                      "detail": "states 82, measured 82.4 (tolerance 10)"}]
    wrong = judge("Reasoning: The rate is 82 bpm, above 75.\nAnswer: No.", "Yes.", "YES", {}, YES_NO, [HEART_RATE])
    assert (wrong.kept, wrong.reason, wrong.verdicts) == (False, "wrong_answer", [])
    unparsed = judge("Yes, the rate is above 75.", "Yes.", "YES", {}, YES_NO, [HEART_RATE])
    assert (unparsed.kept, unparsed.reason, unparsed.rationale) == (False, "unparsed", None)


def test_the_checker_drops_a_right_answer_reached_through_a_wrong_reading():
    judged = judge("Reasoning: The rate is 60 bpm, below 100.\nAnswer: No.", "No.", "NO", {"heart_rate": 95.0},
                   YES_NO, [HEART_RATE])
    assert (judged.kept, judged.reason) == (False, "checker:heart_rate")
    assert judged.verdicts[0].detail == "states 60, measured 95 (tolerance 10)"


@pytest.mark.parametrize("reasoning, facts, keep, detail", [
    ("The rate is 104.5 bpm.", {"heart_rate": 95.0}, True, "states 104.5, measured 95 (tolerance 10)"),  # 9.5: inside
    ("The rate is 105.5 bpm.", {"heart_rate": 95.0}, False, "states 105.5, measured 95 (tolerance 10)"),
    ("About 90 bpm here, 130 bpm there.", {"heart_rate": 95.0}, False, "states 130, measured 95 (tolerance 10)"),
    ("The rhythm is regular.", {"heart_rate": 95.0}, True, "states no heart_rate"),
    ("The rate is 200 bpm.", {}, True, "no measured heart_rate"),
])
def test_stated_values_are_compared_with_the_measured_fact(reasoning, facts, keep, detail):
    verdict = HEART_RATE(Rationale(reasoning, "Yes."), facts)
    assert (verdict.keep, verdict.detail) == (keep, detail)


def test_a_checker_pattern_needs_a_group_for_the_number():
    with pytest.raises(ValueError, match="needs a group"):
        StatedValueChecker("hr", "heart_rate", r"\d+ bpm", 10)


AGREES = ComparisonChecker("reading_agrees", "threshold", r"rate is (\d+)", "YES", "NO",
                           {"YES": r"^\W*yes\b", "NO": r"^\W*no\b"})


@pytest.mark.parametrize("reasoning, answer, keep, detail", [
    ("The heart rate is 82 bpm, above 75, so yes.", "Yes.", True, "states 82, threshold 75: expects YES, answers YES"),
    ("The heart rate is 75 bpm, not above 75, so no.", "No.", True, "states 75, threshold 75: expects NO, answers NO"),
    # right answer for a record at 80 bpm, but not what its own reading of 70 gives: dropped
    ("The heart rate is 70 bpm, above 75, so yes.", "Yes.", False, "states 70, threshold 75: expects NO, answers YES"),
    ("The rhythm is regular.", "Yes.", True, "states no value"),
])
def test_the_answer_must_follow_from_the_rationales_own_reading(reasoning, answer, keep, detail):
    verdict = AGREES(Rationale(reasoning, answer), {"heart_rate": 80.0, "threshold": 75})
    assert (verdict.keep, verdict.detail) == (keep, detail)
    assert AGREES(Rationale(reasoning, answer), {"heart_rate": 80.0}).detail == "no threshold"


def test_the_demo_config_builds_both_checkers_and_they_keep_the_seed_rationales(compose, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_app

    cfg = compose_app("selftrain", ["model=tiny"], tmp_path, resolve=False)
    checkers = [instantiate(c) for c in cfg.selftrain.checkers.values()]
    assert [c.name for c in checkers] == ["heart_rate", "reading_agrees"]
    seed = Rationale("The heart rate is 82 bpm, above 75, so yes.", "Yes.")  # datasets/demo/ecg_threshold_demo.py's
    assert all(c(seed, {"heart_rate": 82.4, "threshold": 75}).keep for c in checkers)
    wrong = Rationale("The heart rate is 60 bpm, not above 75, so no.", "No.")
    assert [c(wrong, {"heart_rate": 82.4, "threshold": 75}).keep for c in checkers] == [False, True]


def test_a_comparison_checker_naming_classes_the_data_lacks_fails_on_the_first_record_it_checks():
    checker = ComparisonChecker("agrees", "threshold", r"rate is (\d+)", "YES", "NO", {"yes": "yes", "no": "no"})
    seed = Rationale("The heart rate is 82 bpm, above 75, so yes.", "Yes.")
    assert checker(seed, {"heart_rate": 82.0}).keep  # another data set's record: nothing to check, no error
    with pytest.raises(ValueError, match=r"'YES' and 'NO' must be answer classes, the data's are \['no', 'yes'\]"):
        checker(seed, {"threshold": 75})
