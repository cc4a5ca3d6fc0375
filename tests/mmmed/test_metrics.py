"""Answer classification and accuracy, with the demo's own class patterns."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mmmed.metrics import UNPARSED, AnswerClassifier, class_accuracy

PATTERNS = OmegaConf.to_container(
    OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "data" / "ptbxl.yaml").answer_classes
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
