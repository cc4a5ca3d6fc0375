"""Threshold questions: answers right by the record's rate, balanced, never near the rate, splits by record, and a
few worked seed rationales that the self-training filter keeps; read by data=ecg_threshold_demo."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mmmed.eval.scoring import AnswerScorer
from mmmed.selftrain.filtering import StatedValueChecker, judge
from mmmed.eval.rationale import format_rationale, parse_rationale
from mmmed_datasets.common.record_manifest import read_record_manifest
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from mmmed_datasets.demo.ecg_threshold_demo import (
    MANIFEST,
    RATE_QUESTION,
    SEEDS,
    ensure_threshold_questions,
    plan_questions,
    seed_rationale,
)

SETTINGS = {"train_questions_per_record": 4, "eval_questions": 20, "min_gap": 3, "max_gap": 20,
            "seed_fraction": 0.1, "seed": 0, "rate_questions": False}
YES_NO = {"YES": r"^\W*yes\b", "NO": r"^\W*no\b"}  # conf/data/ecg_threshold_demo.yaml


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory) -> dict:
    """The 30-patient ECG demo (3 records per strat_fold: 24 train, 3 val, 3 test)."""
    settings = {"root": tmp_path_factory.mktemp("ptbxl") / "demo", "num_patients": 30, "records_per_patient": 1,
                "seed": 0}
    ensure_demo_ptbxl(**settings)
    return settings


@pytest.fixture(scope="module")
def questions(ptbxl, tmp_path_factory) -> Path:
    return ensure_threshold_questions(tmp_path_factory.mktemp("thresholds") / "q", ptbxl, **SETTINGS)


def test_plan_answers_by_the_rate_balances_yes_and_no_and_keeps_thresholds_away_from_the_rate():
    rates = {f"r{i}": 50.0 + 7.3 * i for i in range(12)}
    splits = {record: ("train", "val", "test")[i % 3] for i, record in enumerate(rates)}
    plan = plan_questions(rates, splits, {"train": 4, "val": 5, "test": 5}, min_gap=3, max_gap=20, seed=1)
    assert plan == plan_questions(rates, splits, {"train": 4, "val": 5, "test": 5}, min_gap=3, max_gap=20, seed=1)
    assert Counter(q["split"] for q in plan) == {"train": 16, "val": 20, "test": 20}
    for split, half in (("train", 8), ("val", 10), ("test", 10)):
        assert Counter(q["label"] for q in plan if q["split"] == split) == {"YES": half, "NO": half}
    for q in plan:
        assert q["label"] == ("YES" if q["rate"] > q["threshold"] else "NO") and q["answer"] == q["label"].title() + "."
        assert 3 <= abs(q["rate"] - q["threshold"]) <= 21  # min_gap .. max_gap, rounded away from the rate
    with pytest.raises(ValueError, match="min_gap <= max_gap"):
        plan_questions(rates, splits, {"train": 1, "val": 1, "test": 1}, min_gap=5, max_gap=3, seed=1)


def test_the_manifest_asks_about_each_record_in_its_own_split_with_enough_held_out_questions(questions, ptbxl):
    records, problems = read_record_manifest(questions / MANIFEST, ["ecg"])
    assert problems == []
    assert Counter(r.split for r in records) == {"train": 24 * 4, "val": 21, "test": 21}  # ceil(20 / 3) per record
    split_of = {}
    for record in records:
        (path,) = record.signals["ecg"]
        assert split_of.setdefault(path, record.split) == record.split  # a record's questions stay in its split
        threshold = int(record.question.split()[-2])
        assert record.label == ("YES" if record.facts["heart_rate"] > threshold else "NO")
        assert str(record.facts["heart_rate"]) not in record.question and "bpm" in record.question
    assert len({p for p, s in split_of.items() if s == "test"}) == 3


def test_seed_rationales_are_few_training_questions_that_the_filter_keeps(questions):
    records, _ = read_record_manifest(questions / MANIFEST, ["ecg"])
    by_id = {f"{r.patient_id}/{r.row}": r for r in records}
    seeds = [json.loads(line) for line in (questions / SEEDS).read_text().splitlines()]
    train = [r for r in records if r.split == "train"]
    assert len(seeds) == int(0.1 * len(train)) and len({s["id"] for s in seeds}) == len(seeds)
    scorer = AnswerScorer(YES_NO)
    checker = StatedValueChecker("heart_rate", "heart_rate", r"(\d+(?:\.\d+)?)\s*bpm", tolerance=10)
    for seed in seeds:
        record = by_id[seed["id"]]  # the id PatientRecordDataset gives the row
        assert record.split == "train" and record.question == seed["question"]
        completion = format_rationale(seed["rationale"], seed["answer"])
        assert parse_rationale(completion).answer == seed["answer"] == record.answer
        assert judge(completion, record.answer, record.label, record.facts, scorer, [checker]).kept


def test_a_seed_rationale_states_the_rounded_rate_and_the_comparison():
    assert seed_rationale(82.4, 75) == ("The heart rate is 82 bpm, above 75, so yes.", "Yes.")
    assert seed_rationale(61.6, 70) == ("The heart rate is 62 bpm, not above 70, so no.", "No.")


def test_more_than_a_tenth_of_seeds_is_refused(ptbxl, tmp_path):
    with pytest.raises(ValueError, match="at most 0.1"):
        ensure_threshold_questions(tmp_path / "q", ptbxl, **{**SETTINGS, "seed_fraction": 0.5})


def test_rate_questions_train_the_reading_and_never_reach_the_held_out_splits(ptbxl, tmp_path):
    root = ensure_threshold_questions(tmp_path / "q", ptbxl, **{**SETTINGS, "rate_questions": True})
    records, _ = read_record_manifest(root / MANIFEST, ["ecg"])
    rate = [r for r in records if r.question == RATE_QUESTION]
    assert len(rate) == 24 and {r.split for r in rate} == {"train"}  # one per training record
    assert {r.signals["ecg"][0] for r in rate} == {r.signals["ecg"][0] for r in records if r.split == "train"}
    for r in rate:
        assert r.answer == f"{round(r.facts['heart_rate'])} bpm." and r.label is None and "threshold" not in r.facts
    seeds = [json.loads(line) for line in (root / SEEDS).read_text().splitlines()]
    assert len(seeds) == int(0.1 * (96 + 24))  # a tenth of all training questions, rate questions counted
    assert all(seed["question"].startswith("Is the heart rate above ") for seed in seeds)


def test_the_data_config_reads_the_questions_with_their_facts(questions, ptbxl, compose, tmp_path):
    from hydra.utils import instantiate

    cfg = compose(["modality=[ecg]", "data=ecg_threshold_demo", f"data.root={questions}",
                   f"paths.cache_dir={tmp_path / 'cache'}",
                   *[f"data.prepare.{k}={v}" for k, v in SETTINGS.items()],
                   *[f"data.prepare.ptbxl.{k}={v}" for k, v in ptbxl.items()]], tmp_path)
    data = instantiate(cfg.data, seed=cfg.seed)
    data.prepare_data()  # built already with these settings: nothing is generated again
    data.setup("fit")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 96, "val": 21, "test": 21}
    item = data.splits["test"][0]
    assert set(item["facts"]) == {"heart_rate", "threshold"} and item["label"] in ("YES", "NO")
    assert f"above {item['facts']['threshold']:g} bpm?" in item["question"]
    assert item["question"].startswith("Is the heart rate above ")
