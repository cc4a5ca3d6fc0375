"""Answer entropy, the majority answer and the retrieval threshold, against values computed by hand."""

import math

import pytest

from mmmed.reasoning.uncertainty import AnswerKey, answer_entropy, calibrate_threshold, majority

YES_NO = {"YES": r"^\W*yes\b", "NO": r"^\W*no\b"}


def test_answers_are_counted_by_what_they_mean():
    key = AnswerKey(YES_NO)
    assert key("Yes.") == key("yes, it is above") == key("Reasoning: The rate is 110 bpm.\nAnswer: Yes.") == "YES"
    assert key("No") == "NO"
    assert key("Maybe.") == "unparsed"
    assert key("Reasoning: no answer line") == "unparsed"  # a broken rationale is not read as its first words
    items = AnswerKey(None)
    assert items("MI, STTC.") == items("sttc; mi") == "mi; sttc"
    assert items("") == "unparsed"


@pytest.mark.parametrize("keys, bits", [
    (["YES"] * 5, 0.0),
    (["YES", "YES", "YES", "NO", "NO"], -(0.6 * math.log2(0.6) + 0.4 * math.log2(0.4))),  # 0.971
    (["YES", "NO"], 1.0),
    (["a", "b", "c", "d", "e"], math.log2(5)),
    (["YES", "YES", "NO", "unparsed"], 1.5),  # 1/2, 1/4, 1/4: 0.5 + 0.5 + 0.5
])
def test_entropy_in_bits(keys, bits):
    assert answer_entropy(keys) == pytest.approx(bits, abs=1e-12)


def test_majority_breaks_ties_by_the_first_sample():
    assert majority(["NO", "YES", "YES", "NO"]) == "NO"
    assert majority(["YES", "NO", "NO"]) == "NO"


def test_the_calibrated_threshold_retrieves_for_at_most_the_target_share():
    # 10 validation questions: 5 unanimous, 3 at 0.722 bits (4:1), 2 at 0.971 bits (3:2)
    entropies = [0.0] * 5 + [0.722] * 3 + [0.971] * 2
    assert calibrate_threshold(entropies, 0.5) == (0.0, 0.5)  # every uncertain question: 5 of 10
    assert calibrate_threshold(entropies, 0.4) == (0.722, 0.2)  # 0.4 cannot be hit: the 3 tied ones go together
    assert calibrate_threshold(entropies, 0.2) == (0.722, 0.2)
    assert calibrate_threshold(entropies, 0.1) == (0.971, 0.0)
    assert calibrate_threshold(entropies, 1.0) == (0.0, 0.5)


def test_calibration_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold([], 0.5)
    with pytest.raises(ValueError, match="not in"):
        calibrate_threshold([0.1], 1.5)
