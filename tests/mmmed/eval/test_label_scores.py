"""Per-label probabilities from candidate-answer likelihoods: set answers (PTB-XL superclasses) and yes/no."""

from __future__ import annotations

import math

import pytest

from mmmed.eval.label_scores import LabelScoring, softmax


def scoring(mode: str, labels: list[str], empty: str | None = None) -> LabelScoring:
    return LabelScoring(mode, labels, ", ", empty, "Yes.", "No.")


def test_set_candidates_are_every_nonempty_subset_in_label_order():
    s = scoring("set", ["NORM", "MI", "STTC", "CD", "HYP"])
    options = s.options("<ecg>\nWhich superclasses?")
    assert len(options) == 31 and len(set(options)) == 31
    assert options[:5] == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert "MI, STTC" in options and "STTC, MI" not in options
    assert options[-1] == "NORM, MI, STTC, CD, HYP"
    assert scoring("set", ["A", "B"], empty="None.").options("q") == ["A", "B", "A, B", "None."]


def test_a_labels_probability_sums_the_answers_that_list_it():
    s = scoring("set", ["A", "B"], empty="None.")
    # Candidates A, B, "A, B", None. with probabilities 0.2, 0.3, 0.4, 0.1 (any common offset cancels).
    logprobs = [math.log(p) - 7.0 for p in (0.2, 0.3, 0.4, 0.1)]
    probs = s.probabilities("q", logprobs)
    assert probs == pytest.approx({"A": 0.2 + 0.4, "B": 0.3 + 0.4})
    assert s.targets("q", "a, b.") == {"A": 1.0, "B": 1.0}
    assert s.targets("q", "B") == {"A": 0.0, "B": 1.0}
    assert s.targets("q", "None.") == {"A": 0.0, "B": 0.0}
    with pytest.raises(ValueError, match="lists \\['c'\\]"):
        s.targets("q", "A, C")


def test_yes_no_scores_the_label_named_in_the_question():
    s = scoring("yes_no", ["Edema", "Pleural Effusion", "Effusion"])
    question = "<xray>\nIs there pleural effusion in this chest X-ray? Answer yes or no."
    assert s.label_of_question(question) == "Pleural Effusion"  # the longest label named wins
    assert s.options(question) == ["Yes.", "No."]
    assert s.probabilities(question, [math.log(3.0), math.log(1.0)]) == pytest.approx({"Pleural Effusion": 0.75})
    assert s.targets(question, "yes") == {"Pleural Effusion": 1.0}
    assert s.targets(question, "No.") == {"Pleural Effusion": 0.0}
    with pytest.raises(ValueError, match="neither"):
        s.targets(question, "Maybe.")
    with pytest.raises(ValueError, match="names none of the labels"):
        s.label_of_question("<xray>\nIs there a fracture?")


def test_softmax_is_stable_for_very_negative_loglikelihoods():
    assert softmax([-1000.0, -1000.0 + math.log(3.0)]) == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("args, message", [
    (("maybe", ["A"]), "mode must be one of"),
    (("set", ["A", "A"]), "distinct"),
    (("set", [f"L{i}" for i in range(11)]), "at most 10 labels"),
])
def test_bad_settings_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        LabelScoring(*args, ", ", None, "Yes.", "No.")
