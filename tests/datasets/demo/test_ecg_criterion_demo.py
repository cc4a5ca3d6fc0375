"""Criterion questions: every answer right by the record's rate, no held-out condition named in training, the
held-out conditions' criteria stated by the shipped cards, yes/no balanced, no bound near the rate."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmmed.eval.rationale import parse_rationale
from mmmed.knowledge.documents import read_chunks
from mmmed_datasets.demo.ecg_criterion_demo import (
    HELDOUT_CONDITIONS,
    MANIFEST,
    ensure_criterion_questions,
    plan_questions,
    question_kind,
)

REPO = Path(__file__).resolve().parents[3]
NUMBERS = re.compile(r"(above|below) (\d+) bpm|from (\d+) to (\d+) bpm")


def synthetic_rates(n_train: int, n_heldout: int, seed: int = 0) -> tuple[dict, dict]:
    """Rates as the ECG demo draws them (40-55, 65-95, 105-140 bpm), with PTB-XL-like splits."""
    rng = np.random.default_rng(seed)
    rates, splits = {}, {}
    for i in range(n_train + 2 * n_heldout):
        low, high = [(40, 55), (65, 95), (105, 140)][i % 3]
        rates[f"r{i:04d}"] = float(rng.uniform(low, high))
        splits[f"r{i:04d}"] = "train" if i < n_train else ("val" if i < n_train + n_heldout else "test")
    return rates, splits


def stated_truth(question: str, rate: float) -> bool:
    """The answer to a question whose criterion is written in it (or in its passage), read back from the text."""
    text = question.split("\n\n")[0] if question.startswith("Context:") else question
    match = NUMBERS.search(text)
    if match.group(1) == "above":
        return rate > int(match.group(2))
    if match.group(1) == "below":
        return rate < int(match.group(2))
    return int(match.group(3)) <= rate <= int(match.group(4))


def test_every_answer_is_right_by_the_rate_and_no_bound_is_near_it():
    rates, splits = synthetic_rates(96, 60)
    questions = plan_questions(rates, splits, train_per_record=8, min_gap=5, max_gap=40, seed=0)
    for q in questions:
        rate, kind = q["facts"]["heart_rate"], question_kind(q["question"])
        if kind == "rate":
            assert q["answer"] == f"{round(rate)} bpm." and q["split"] == "train"
            continue
        if kind == "condition":
            name = q["question"].removeprefix("Does this ECG meet the criteria for ").removesuffix("?")
            criterion, bound = HELDOUT_CONDITIONS[name]
            truth = {"above": rate > bound, "below": rate < bound}.get(criterion) if criterion != "between" \
                else bound[0] <= rate <= bound[1]
            bounds = bound if criterion == "between" else (bound,)
        else:
            truth = stated_truth(q["question"], rate)
            text = q["question"].split("\n\n")[0]
            bounds = [int(x) for x in NUMBERS.search(text).groups() if x and x.isdigit()]
        worked = parse_rationale(q["answer"])
        assert worked.answer == ("Yes." if truth else "No.") and q["label"] == ("YES" if truth else "NO"), q
        assert worked.reasoning.startswith(f"The heart rate is {round(rate)} bpm; ")  # the reading, then the criterion
        assert min(abs(rate - b) for b in bounds) >= 5, q


def test_held_out_conditions_are_never_named_in_training_and_the_splits_are_balanced():
    rates, splits = synthetic_rates(96, 60)
    questions = plan_questions(rates, splits, train_per_record=8, min_gap=5, max_gap=40, seed=0)
    training_text = " ".join(q["question"].lower() for q in questions if q["split"] == "train")
    for name in HELDOUT_CONDITIONS:
        assert name not in training_text
    assert "tachycardia" not in training_text and "bradycardia" not in training_text
    kinds = Counter((q["split"], question_kind(q["question"]), q["label"]) for q in questions)
    for split in ("val", "test"):  # one condition and one stated question per record, half yes
        assert kinds[(split, "condition", "YES")] == kinds[(split, "condition", "NO")] == 30
        assert kinds[(split, "stated", "YES")] == kinds[(split, "stated", "NO")] == 30
    assert kinds[("train", "applied", "YES")] == kinds[("train", "applied", "NO")] == 96 * 2
    assert {split for q in questions if question_kind(q["question"]) == "condition" for split in [q["split"]]} == {"val", "test"}


def test_the_cards_state_each_held_out_conditions_criterion():
    chunks = read_chunks(REPO / "knowledge" / "cards", max_words=120)
    criteria = {c.title.lower(): c.text for c in chunks if c.heading == "Criterion"}
    assert "a heart rate above 100 bpm" in criteria["sinus tachycardia"]
    assert "a heart rate below 60 bpm" in criteria["sinus bradycardia"]
    assert "a heart rate below 50 bpm" in criteria["bradycardia (2018 guideline)"]
    assert "from 60 to 100 bpm inclusive" in criteria["normal sinus rhythm"]
    assert HELDOUT_CONDITIONS["sinus tachycardia"] == ("above", 100)
    assert HELDOUT_CONDITIONS["sinus bradycardia"] == ("below", 60)
    assert HELDOUT_CONDITIONS["bradycardia as defined by the 2018 guideline"] == ("below", 50)
    assert HELDOUT_CONDITIONS["normal sinus rhythm"] == ("between", (60, 100))


def test_a_worked_answer_names_the_criterion_it_applies():
    from mmmed_datasets.demo.ecg_criterion_demo import rationale

    assert rationale(118.4, "above", 100, "sinus tachycardia") == (
        "Reasoning: The heart rate is 118 bpm; sinus tachycardia is a heart rate above 100 bpm, which 118 meets.\n"
        "Answer: Yes.")
    assert rationale(72.0, "between", (80, 95), None) == (
        "Reasoning: The heart rate is 72 bpm; the criterion is a heart rate from 80 to 95 bpm inclusive, which 72 "
        "does not meet.\nAnswer: No.")


def test_the_folder_is_a_record_manifest_split_by_fold(tmp_path):
    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

    ptbxl = {"root": tmp_path / "demo", "num_patients": 30, "records_per_patient": 1, "seed": 0}
    ensure_demo_ptbxl(**ptbxl)
    root = ensure_criterion_questions(tmp_path / "criteria", ptbxl, train_questions_per_record=4, min_gap=5,
                                      max_gap=40, seed=0)
    rows = [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]
    by_split = Counter(row["split"] for row in rows)
    assert by_split == {"train": 24 * 5, "val": 3 * 2, "test": 3 * 2}  # 4 criterion + 1 rate per training record
    summary = json.loads((root / "criteria.json").read_text())
    assert summary["questions"]["test/condition"] == 3 and summary["questions"]["train/applied"] == 48
