"""One answer right or wrong, by the rule the evaluation scores a split with (what self-training filters by)."""

from __future__ import annotations

import pytest

from mmmed.eval.evaluation import Evaluator
from mmmed.eval.scoring import AnswerScorer
from mmmed.model.generation import GenerationSettings

RHYTHMS = {"SBRAD": "sinus bradycardia", "SR": "sinus rhythm", "STACH": "sinus tachycardia"}
FINDINGS = {"NORMAL": "no acute cardiopulmonary", "LEFT": "left lower lobe", "RIGHT": "right lower lobe"}


def evaluator(answer_classes=None, answer_parts=None) -> Evaluator:
    greedy = GenerationSettings(max_new_tokens=8, do_sample=False, temperature=1.0, top_p=1.0, num_samples=1,
                                use_cache=True)
    return Evaluator(None, answer_classes or {}, greedy, None, None, {}, 1, None, None, answer_parts=answer_parts)


def rows(evaluation: Evaluator, cases: list[tuple[str, str, object]]) -> list[dict]:
    """Rows as Evaluator.batch_rows writes them, from (answer, reference, label)."""
    out = []
    for i, (answer, reference, label) in enumerate(cases):
        row = {"id": f"r{i}", "question": "q", "reference": reference, "answer": answer, "reference_label": label,
               "predicted_label": evaluation.classifier(answer)}
        out.append(row)
    return out


def test_with_classes_an_answer_is_right_when_it_names_the_label_and_only_it():
    scorer = AnswerScorer(RHYTHMS)
    assert scorer.is_correct("Sinus tachycardia at 128 bpm.", "Sinus tachycardia.", "STACH")
    assert not scorer.is_correct("Sinus bradycardia.", "Sinus tachycardia.", "STACH")
    assert not scorer.is_correct("Sinus tachycardia or sinus bradycardia.", "x", "STACH")  # a hedge is wrong
    assert not scorer.is_correct("I cannot tell.", "Sinus tachycardia.", "STACH")


def test_with_parts_every_asked_part_must_be_right():
    scorer = AnswerScorer({}, {"rhythm": RHYTHMS, "finding": FINDINGS})
    both = {"rhythm": "STACH", "finding": "LEFT"}
    assert scorer.is_correct("Sinus tachycardia; left lower lobe opacity.", "", both)
    assert not scorer.is_correct("Sinus tachycardia; right lower lobe opacity.", "", both)
    assert scorer.is_correct("Sinus tachycardia.", "", {"rhythm": "STACH"})  # only the asked part counts


def test_without_a_label_the_answer_items_must_equal_the_references():
    scorer = AnswerScorer({})
    assert scorer.is_correct("MI, STTC.", "sttc; mi", None)
    assert not scorer.is_correct("MI", "MI, STTC", None)


@pytest.mark.parametrize("settings, cases", [
    ({"answer_classes": RHYTHMS}, [("Sinus tachycardia.", "", "STACH"), ("Sinus rhythm.", "", "STACH"),
                                   ("sinus bradycardia", "", "SBRAD"), ("no idea", "", "SR")]),
    ({"answer_parts": {"rhythm": RHYTHMS, "finding": FINDINGS}},
     [("Sinus rhythm; left lower lobe opacity.", "", {"rhythm": "SR", "finding": "LEFT"}),
      ("Sinus rhythm; no acute cardiopulmonary process.", "", {"rhythm": "SR", "finding": "LEFT"}),
      ("Sinus bradycardia.", "", {"rhythm": "SBRAD"})]),
    ({}, [("MI, STTC", "STTC, MI", None), ("NORM", "MI", None), ("norm.", "NORM", None)]),
])
def test_the_split_accuracy_is_the_mean_of_is_correct(settings, cases):
    evaluation = evaluator(**settings)
    summary = evaluation.summarize(rows(evaluation, cases))
    right = [evaluation.scorer.is_correct(a, r, label) for a, r, label in cases]
    expected = sum(right) / len(right)
    assert (summary["accuracy"] if settings else summary["exact_match"]) == pytest.approx(expected)
    assert 0 < expected < 1  # the cases hold right and wrong answers
