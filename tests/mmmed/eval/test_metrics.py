"""Answer classification and accuracy, with the demo's own class patterns."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mmmed.eval.metrics import UNPARSED, AnswerClassifier, aggregate_crops, answer_items, class_accuracy, exact_match, vote

PATTERNS = OmegaConf.to_container(
    OmegaConf.load(Path(__file__).resolve().parents[3] / "conf" / "data" / "ptbxl.yaml").answer_classes
)


def test_each_rhythm_wording_maps_to_its_class_only():
    classify = AnswerClassifier(PATTERNS)
    assert classify("Sinus bradycardia at 44 bpm.") == "SBRAD"
    assert classify("Normal sinus rhythm at 72 bpm.") == "SR"
    assert classify("SINUS TACHYCARDIA at 131 bpm.") == "STACH"
    assert classify("Sinus bradycardia or sinus tachycardia.") == UNPARSED  # hedging never scores
    assert classify("Atrial fibrillation.") == UNPARSED
    assert classify("") == UNPARSED


def test_accuracy_counts_only_samples_with_a_reference_class():
    classify = AnswerClassifier(PATTERNS)
    answers = ["Sinus bradycardia.", "Normal sinus rhythm.", "Sinus tachycardia.", "No idea.", "Sinus tachycardia."]
    references = ["SBRAD", "STACH", "STACH", "SR", None]
    accuracy, scored = class_accuracy([classify(a) for a in answers], references)
    assert (accuracy, scored) == (2 / 4, 4)
    accuracy, scored = class_accuracy([UNPARSED], [None])
    assert scored == 0 and accuracy != accuracy  # NaN: nothing to score


def test_answer_items_ignore_case_order_spacing_and_edge_punctuation():
    assert answer_items("MI, STTC.") == answer_items(" sttc ,mi") == frozenset({"mi", "sttc"})
    assert answer_items("Yes!") == frozenset({"yes"})
    assert answer_items("left axis deviation; sinus rhythm") == frozenset({"left axis deviation", "sinus rhythm"})
    assert answer_items(" , ") == frozenset()


def test_exact_match_needs_every_item():
    predicted = ["NORM", "MI, STTC", "mi", "yes.", "no"]
    references = ["NORM", "STTC, MI", "MI, HYP", "yes", "yes"]
    assert exact_match(predicted, references) == 3 / 5


def test_vote_and_ties():
    assert vote(["SR", "SR", "STACH"]) == "SR"
    assert vote(["SR", "STACH"]) == UNPARSED  # a tie must not score
    assert vote(["SR"]) == "SR"


def test_crops_of_a_record_vote_and_count_once():
    rows = [
        {"id": "ptbxl/1#crop0", "answer": "Sinus rhythm.", "predicted_label": "SR", "reference": "Normal sinus rhythm", "reference_label": "SR"},
        {"id": "ptbxl/1#crop1", "answer": "sinus tachycardia", "predicted_label": "STACH", "reference": "Normal sinus rhythm", "reference_label": "SR"},
        {"id": "ptbxl/1#crop2", "answer": "sinus rhythm", "predicted_label": "SR", "reference": "Normal sinus rhythm", "reference_label": "SR"},
        {"id": "ptbxl/2#crop0", "answer": "MI", "predicted_label": UNPARSED, "reference": "MI", "reference_label": None},
        {"id": "ptbxl/2#crop1", "answer": "NORM", "predicted_label": UNPARSED, "reference": "MI", "reference_label": None},
        {"id": "ptbxl/3", "answer": "x", "predicted_label": UNPARSED, "reference": "y", "reference_label": None},
    ]
    merged = aggregate_crops(rows)
    assert [r["id"] for r in merged] == ["ptbxl/1", "ptbxl/2", "ptbxl/3"]
    assert merged[0]["predicted_label"] == "SR" and merged[0]["answer"] == "Sinus rhythm." and merged[0]["crops"] == 3
    assert merged[1]["answer"] == UNPARSED  # MI vs NORM: a tie scores wrong
    assert merged[2] == rows[5]
    assert exact_match([r["answer"] for r in merged], [r["reference"] for r in merged]) == 0.0
    assert class_accuracy([r["predicted_label"] for r in merged], [r["reference_label"] for r in merged]) == (1.0, 1)
