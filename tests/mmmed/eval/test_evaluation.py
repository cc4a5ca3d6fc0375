"""The Evaluator validation and eval.py share: label probabilities from candidate answers, and a split's summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmmed.model.adapters import MLPProjector
from mmmed.model.collate import MultimodalCollator
from mmmed.eval.evaluation import Evaluator, json_safe, merge_crops, scalar_metrics
from mmmed.model.generation import GenerationSettings
from mmmed.eval.label_scores import LabelScoring
from mmmed.model.multimodal_lm import MultimodalLM
from mmmed.model.prompts import ChatFormatter, Modality
from mmmed_encoders.ecg_cnn import ECGCNNEncoder

GREEDY = GenerationSettings(6, do_sample=False, temperature=1.0, top_p=1.0, num_samples=1, use_cache=True)
BOOTSTRAP = {"resamples": 200, "confidence": 0.9, "seed": 0}
LABELS = ["NORM", "MI", "STTC"]


def evaluator(formatter: ChatFormatter, label_scores: LabelScoring | None = None, report: str | None = None,
              classes: dict | None = None) -> Evaluator:
    return Evaluator(formatter, classes or {}, GREEDY, label_scores, report, BOOTSTRAP, 5, None, None)


def test_label_probabilities_sum_the_softmax_over_every_candidate_answer(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], "Be brief.", max_length=96)
    encoder = ECGCNNEncoder(in_leads=12, widths=[8, 16], kernel_size=5, num_tokens=4, lead_mask_input=False)
    model = MultimodalLM(tiny_llm.model, {"ecg": encoder}, MLPProjector, formatter.placeholder_ids).eval()
    scoring = LabelScoring("set", LABELS, ", ", None, "Yes.", "No.")
    gen = torch.Generator().manual_seed(1)
    items = [{"id": f"r{i}", "signals": {"ecg": [torch.randn(12, 100, generator=gen)]}, "answer": answer,
              "question": "<ecg>\nWhich superclasses?", "label": None} for i, answer in enumerate(["MI, STTC", "NORM"])]
    rows = evaluator(formatter, scoring).batch_rows(model, MultimodalCollator(formatter, generation_inputs=True)(items))
    candidates = scoring.options("q")
    assert len(candidates) == 7
    for row, item in zip(rows, items):
        # Independently: every candidate as the answer of a one-sample batch, then P(label) = sum of softmax.
        logprobs = []
        for candidate in candidates:
            batch = MultimodalCollator(formatter)([{**item, "answer": candidate}])
            logprobs.append(model.answer_logprobs(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                                  batch["labels"], batch["signals"]).item())
        weights = np.exp(np.array(logprobs) - max(logprobs))
        probs = weights / weights.sum()
        for label in LABELS:
            expected = sum(p for p, c in zip(probs, candidates) if label in c.split(", "))
            assert row["label_probs"][label] == pytest.approx(expected, abs=1e-5)
    assert rows[0]["label_targets"] == {"NORM": 0.0, "MI": 1.0, "STTC": 1.0}
    assert rows[1]["label_targets"] == {"NORM": 1.0, "MI": 0.0, "STTC": 0.0}
    assert "label_probs" not in evaluator(formatter, scoring).batch_rows(
        model, MultimodalCollator(formatter, generation_inputs=True)(items), with_label_scores=False)[0]


def row(sample_id: str, answer: str, reference: str, predicted: str, label: str | None, **extra) -> dict:
    return {"id": sample_id, "question": "q", "answer": answer, "reference": reference, "predicted_label": predicted,
            "reference_label": label, **extra}


def test_summary_of_fixed_rows_matches_hand_computed_values(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], None, max_length=96)
    classes = {"SR": "sinus rhythm", "SB": "bradycardia"}
    rows = [
        row("a", "Sinus rhythm.", "Sinus rhythm.", "SR", "SR"),
        row("b", "Sinus rhythm.", "Sinus bradycardia.", "SR", "SB"),
        row("c", "Bradycardia.", "Sinus bradycardia.", "SB", "SB"),
        row("d", "Unclear.", "Sinus rhythm.", "unparsed", "SR"),
    ]
    summary = evaluator(formatter, classes=classes, report="text").summarize(rows)
    assert summary["accuracy"] == pytest.approx(2 / 4) and summary["num_scored"] == 4
    # SR: predicted a, b; true a, d -> P 1/2, R 1/2. SB: predicted c; true b, c -> P 1, R 1/2.
    per_class = summary["classes"]["per_class"]
    assert per_class["SR"]["precision"] == pytest.approx(1 / 2) and per_class["SR"]["recall"] == pytest.approx(1 / 2)
    assert per_class["SB"]["precision"] == pytest.approx(1.0) and per_class["SB"]["recall"] == pytest.approx(1 / 2)
    assert summary["classes"]["macro"]["f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert summary["exact_match"] == pytest.approx(1 / 4)  # only "a" repeats its reference
    assert set(summary["report"]) >= {"bleu_1", "bleu_4", "rouge_l"} and not summary["skipped"]
    scalars = scalar_metrics(summary)
    assert scalars["accuracy"] == 0.5 and scalars["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert "count" not in scalars


def test_evaluation_windows_vote_and_their_label_probabilities_average(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], None, max_length=96)
    scoring = LabelScoring("set", ["MI", "CD"], ", ", None, "Yes.", "No.")
    targets = {"MI": 1.0, "CD": 0.0}
    rows = [row(f"r1#crop{k}", "MI", "MI", "unparsed", None, label_probs={"MI": p, "CD": 1 - p}, label_targets=targets)
            for k, p in enumerate([0.9, 0.6, 0.3])]
    rows += [row("r2", "CD", "CD", "unparsed", None, label_probs={"MI": 0.2, "CD": 0.7},
                 label_targets={"MI": 0.0, "CD": 1.0})]
    records = merge_crops(rows)
    assert [r["id"] for r in records] == ["r1", "r2"]
    assert records[0]["label_probs"] == pytest.approx({"MI": 0.6, "CD": 0.4})  # the mean over the 3 windows
    summary = evaluator(formatter, scoring).summarize(rows)
    assert summary["num_samples"] == 2 and summary["exact_match"] == 1.0
    auroc = summary["auroc"]
    assert auroc["per_label"]["MI"]["auroc"] == 1.0 and auroc["per_label"]["CD"]["auroc"] == 1.0  # 0.6 > 0.2, 0.7 > 0.4
    assert auroc["macro_auroc"] == 1.0


def test_json_safe_turns_undefined_numbers_into_null():
    assert json_safe({"a": math.nan, "b": [1.0, math.inf], "c": "x", "d": 2}) == {"a": None, "b": [1.0, None],
                                                                                  "c": "x", "d": 2}


def test_evaluation_refuses_sampled_answers(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], None, max_length=96)
    sampled = GenerationSettings(6, do_sample=True, temperature=1.0, top_p=0.9, num_samples=1, use_cache=True)
    with pytest.raises(ValueError, match="greedily"):
        Evaluator(formatter, {}, sampled, None, None, BOOTSTRAP, 5, None, None)


def test_asked_for_reasoning_the_answer_is_the_text_after_answer_and_an_unparsed_one_is_wrong(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], "Be brief.", max_length=96)
    classes = {"YES": r"^\W*yes\b", "NO": r"^\W*no\b"}
    scorer = Evaluator(formatter, classes, GREEDY, None, None, BOOTSTRAP, 5, None, None, reasoning=True)
    batch = {"ids": ["a", "b", "c"], "questions": ["q"] * 3, "references": ["Yes.", "No.", "Yes."],
             "reference_labels": ["YES", "NO", "YES"]}
    rows = scorer.answer_rows(batch, [
        "Reasoning: The heart rate is 82 bpm, above 75, so yes.\nAnswer: Yes.",
        "Reasoning: The heart rate is 82 bpm, above 75, so yes.\nAnswer: Yes.",  # wrong
        "Yes. The heart rate is 82 bpm.",  # right words, but no rationale: not an answer
    ])
    assert [r["answer"] for r in rows] == ["Yes.", "Yes.", ""]
    assert [r["predicted_label"] for r in rows] == ["YES", "YES", "unparsed"]
    assert rows[0]["reasoning"] == "The heart rate is 82 bpm, above 75, so yes."
    assert rows[2]["reasoning"] is None and rows[2]["completion"] == "Yes. The heart rate is 82 bpm."
    assert scorer.summarize(rows)["accuracy"] == pytest.approx(1 / 3)
    plain = Evaluator(formatter, classes, GREEDY, None, None, BOOTSTRAP, 5, None, None)  # not asked: read as written
    assert [r["predicted_label"] for r in plain.answer_rows(batch, ["Yes.", "no", "Yes. The rate is 82 bpm."])] == \
        ["YES", "NO", "YES"]


def test_a_stated_value_is_scored_by_its_absolute_error_and_a_missing_one_is_counted(tiny_llm):
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality("ecg", 4)], "Be brief.", max_length=96)
    scorer = Evaluator(formatter, {}, GREEDY, None, None, BOOTSTRAP, 5, None, None,
                       answer_values={"heart_rate": r"(\d+(?:\.\d+)?) ?bpm"})
    pairs = [("Sinus tachycardia at 121 bpm.", "Sinus tachycardia at 124 bpm."),  # 3 off
             ("Sinus rhythm at 70bpm.", "Sinus rhythm at 62.5 bpm."),              # 7.5 off
             ("Sinus rhythm.", "Sinus rhythm at 80 bpm."),                          # no rate stated: missing
             ("Sinus rhythm at 90 bpm.", "Normal ECG.")]                            # no reference rate: not scored
    rows = [{"id": f"r{i}", "question": "q", "reference": ref, "answer": ans, "reference_label": None,
             "predicted_label": None} for i, (ans, ref) in enumerate(pairs)]
    summary = scorer.summarize(rows)
    assert summary["values"] == {"heart_rate": {"mae": (3 + 7.5) / 2, "num_scored": 3, "missing": 1}}
    assert scalar_metrics(summary)["heart_rate_mae"] == 5.25
    with pytest.raises(ValueError, match="answer_values"):  # a pattern without a group reads no number
        Evaluator(formatter, {}, GREEDY, None, None, BOOTSTRAP, 5, None, None, answer_values={"hr": r"\d+ bpm"})
