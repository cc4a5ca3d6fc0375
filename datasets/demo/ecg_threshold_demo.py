"""Threshold questions on the demo ECGs, where the answer needs a reading *and* a comparison (self-training's demo).

*"Is the heart rate above 75 bpm?"* -> *"Yes."*: the threshold varies per question, so no fixed reading of the
record answers it; a model has to read the rate and compare it with the number in the question. Self-training
(``mmmed/selftrain``) teaches the model to write that reading down first: *"Reasoning: The heart rate is 82 bpm,
above 75, so yes.\\nAnswer: Yes."*.

Built from a PTB-XL-layout demo folder (``ecg_demo.ensure_demo_ptbxl``): its 100 Hz records, each record's heart
rate (``ptbxl_database.csv`` ``heart_rate``: the rate the record was simulated at, stored as the record's
``facts`` for self-training's heart-rate checker, never shown to the model; the facts also hold the question's
threshold, for the checker that the answer follows from the rationale's own reading) and PTB-XL's recommended split by
``strat_fold`` (1-8 train, 9 validation, 10 test), so all questions about a record stay in its split and the
held-out questions come from records no training question saw.

Thresholds: each question's threshold is the record's rate plus or minus a gap drawn uniformly from
[``min_gap``, ``max_gap``] bpm, rounded away from the rate, the sign alternating within each split so that every
split holds as many *yes* as *no* answers (one more of one when its count is odd). No threshold lies within ``min_gap`` bpm of the rate: such answers would be decided by the last beat.

Seeds: ``rationale_seeds.jsonl`` holds a written rationale for ``seed_fraction`` of the training questions
(chosen by the seed), from the known rate: the few worked examples a user has next to many answer labels.

Layout under ``root``: ``records.jsonl`` (a record manifest, ``common/record_manifest.py``, with ``split``,
``label`` YES/NO and ``facts``), ``rationale_seeds.jsonl`` (``id``, ``question``, ``rationale``, ``answer``) and
``thresholds.json`` (the settings).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmmed_datasets.demo.demo_folder import build_once
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

log = logging.getLogger(__name__)

VERSION = 3  # 2: facts hold the question's threshold too (self-training's comparison checker); 3: rate questions
MANIFEST = "records.jsonl"
SEEDS = "rationale_seeds.jsonl"
QUESTION = "Is the heart rate above {threshold} bpm?"
RATE_QUESTION = "What is the heart rate?"  # training only, answered "82 bpm.": the measured rate a report states
SPLIT_OF_FOLD = {**{fold: "train" for fold in range(1, 9)}, 9: "val", 10: "test"}  # PTB-XL's recommended split


def seed_rationale(rate: float, threshold: int) -> tuple[str, str]:
    """The worked rationale and answer for one question: ``("The heart rate is 82 bpm, above 75, so yes.", "Yes.")``."""
    above = rate > threshold
    reasoning = f"The heart rate is {round(rate)} bpm, {'above' if above else 'not above'} {threshold}, so {'yes' if above else 'no'}."
    return reasoning, "Yes." if above else "No."


def plan_questions(rates: dict[str, float], splits: dict[str, str], questions_per_record: dict[str, int],
                   min_gap: int, max_gap: int, seed: int) -> list[dict]:
    """Every question: ``record``, ``split``, ``threshold``, ``answer``, ``label`` and ``rate``, from the seed alone."""
    if not 1 <= min_gap <= max_gap:
        raise ValueError(f"thresholds need 1 <= min_gap <= max_gap, got {min_gap} and {max_gap}")
    rng = np.random.default_rng(seed)
    questions = []
    asked = {split: 0 for split in questions_per_record}  # questions so far per split: the sign alternates over them
    for record in sorted(rates):
        rate, split = rates[record], splits[record]
        for _ in range(questions_per_record[split]):
            sign = 1 if asked[split] % 2 else -1  # a split's answers alternate: as many yes as no (+-1)
            asked[split] += 1
            gap = int(rng.integers(min_gap, max_gap + 1))
            threshold = math.ceil(rate + gap) if sign > 0 else math.floor(rate - gap)  # >= gap bpm away
            above = rate > threshold
            questions.append({"record": record, "split": split, "threshold": threshold, "rate": rate,
                              "answer": "Yes." if above else "No.", "label": "YES" if above else "NO"})
    return questions


def ensure_threshold_questions(root: str | os.PathLike, ptbxl: dict, train_questions_per_record: int,
                               eval_questions: int, min_gap: int, max_gap: int, seed_fraction: float,
                               seed: int, rate_questions: bool = False) -> Path:
    """Build (once) the threshold questions at ``root`` over the PTB-XL-layout demo ``ptbxl`` (the arguments of
    ``ecg_demo.ensure_demo_ptbxl``, built first if needed).

    ``train_questions_per_record`` questions per training record; validation and test each get at least
    ``eval_questions`` questions, spread evenly over their records. With ``rate_questions`` each training record
    also gets *"What is the heart rate?"* -> *"82 bpm."* (the rate rounded): the measurement a report or an ECG
    machine gives, answer-only data every arm of an experiment trains on; validation and test ask thresholds only.
    """
    if not 0 <= seed_fraction <= 0.1:
        raise ValueError(f"seed_fraction is the share of training questions with a written rationale: at most 0.1 "
                         f"(the few worked examples), got {seed_fraction}")
    ptbxl_root = ensure_demo_ptbxl(**ptbxl)
    settings = {"ptbxl": {k: (str(v) if k == "root" else v) for k, v in ptbxl.items()},
                "train_questions_per_record": train_questions_per_record, "eval_questions": eval_questions,
                "min_gap": min_gap, "max_gap": max_gap, "seed_fraction": seed_fraction, "seed": seed,
                "rate_questions": rate_questions, "version": VERSION}
    return build_once(root, settings, lambda folder: _write(folder, Path(ptbxl_root), settings))


def _write(folder: Path, ptbxl_root: Path, settings: dict) -> None:
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id")
    rates = {row.filename_lr: float(row.heart_rate) for row in table.itertuples()}
    patients = {row.filename_lr: f"{float(row.patient_id):g}" for row in table.itertuples()}  # PTB-XL's 10000.0 -> 10000
    splits = {row.filename_lr: SPLIT_OF_FOLD[int(row.strat_fold)] for row in table.itertuples()}
    counts = {split: sum(s == split for s in splits.values()) for split in ("train", "val", "test")}
    if min(counts.values()) == 0:
        raise ValueError(f"{ptbxl_root}: the threshold questions need records in every split, found {counts}")
    per_record = {"train": settings["train_questions_per_record"],
                  **{split: math.ceil(settings["eval_questions"] / counts[split]) for split in ("val", "test")}}
    questions = plan_questions(rates, splits, per_record, settings["min_gap"], settings["max_gap"], settings["seed"])
    if settings["rate_questions"]:
        questions += [{"record": record, "split": "train", "rate": rates[record], "threshold": None,
                       "answer": f"{round(rates[record])} bpm.", "label": None}
                      for record in sorted(rates) if splits[record] == "train"]
    rng = np.random.default_rng(settings["seed"] + 1)
    train = [i for i, q in enumerate(questions) if q["split"] == "train"]
    thresholds = [i for i in train if questions[i]["threshold"] is not None]  # seeds reason about thresholds
    # seed_fraction of all training questions, rate questions counted too
    seeded = set(rng.choice(thresholds, size=int(settings["seed_fraction"] * len(train)), replace=False).tolist())
    with open(folder / MANIFEST, "w") as manifest, open(folder / SEEDS, "w") as seeds:
        for row, q in enumerate(questions):
            patient = patients[q["record"]]
            question = RATE_QUESTION if q["threshold"] is None else QUESTION.format(threshold=q["threshold"])
            facts = {"heart_rate": q["rate"]} if q["threshold"] is None else {"heart_rate": q["rate"], "threshold": q["threshold"]}
            manifest.write(json.dumps({
                "patient_id": patient, "split": q["split"], "ecg": str(ptbxl_root / q["record"]), "question": question,
                "answer": q["answer"], "label": q["label"], "facts": facts}) + "\n")
            if row in seeded:  # the id PatientRecordDataset gives this row: "<patient_id>/<row>"
                reasoning, answer = seed_rationale(q["rate"], q["threshold"])
                seeds.write(json.dumps({"id": f"{patient}/{row}", "question": question, "rationale": reasoning,
                                        "answer": answer}) + "\n")
    (folder / "thresholds.json").write_text(json.dumps({**settings, "questions": counts | {
        f"{split}_questions": sum(q["split"] == split for q in questions) for split in ("train", "val", "test")}},
        indent=1))
    log.info("Threshold questions: %s", {s: sum(q["split"] == s for q in questions) for s in ("train", "val", "test")})
