"""Criterion questions on the demo ECGs: a demo where knowledge matters (uncertainty-guided retrieval's demo).

The model learns to *apply a written criterion* to its reading of an ECG, and is tested on conditions whose criteria
it never saw: only the knowledge cards (``knowledge/cards/``) state them.

Training questions (records of folds 1-8):

* *applied*: a passage in the prompt states a criterion, shaped like a retrieved card passage
  (``mmmed.reasoning.search.with_context``), and the question names it: *"Context:\\n[1] Study criterion 37
  (Criterion): Study criterion 37: a heart rate above 87 bpm. ...\\n\\nDoes this ECG meet the criteria for study
  criterion 37?"*. Half of them carry a second, unrelated passage after it (as retrieval returns several). The
  names are synthetic ("study criterion <n>"): no real condition is named in training.
* *stated*: the criterion is the question: *"Does this ECG show a heart rate above 87 bpm?"*;
* *rate*: *"What is the heart rate?"* -> *"82 bpm."* (the measured rate, as a report states it).

Validation and test questions (folds 9 and 10, records no training question uses), two per record:

* *held-out condition*: *"Does this ECG meet the criteria for sinus tachycardia?"*: the name only. The conditions
  (``HELDOUT_CONDITIONS``) are those of the cards whose criterion is a heart-rate range; their criteria appear
  only in the cards, so without retrieval the model has to guess the criterion;
* *stated*: as in training, with new thresholds: answerable without retrieval.

Answers are worked rationales (``mmmed/eval/rationale.py``'s format): *"Reasoning: The heart rate is 82 bpm; study
criterion 37 is a heart rate above 87 bpm, which 82 does not meet.\nAnswer: No."*. Stating the reading and the
criterion before the answer is what lets a 135M model compare them (the threshold demo: answer-only 0.76,
rationales 0.90), and it shows which criterion the model used: asked about a held-out condition with no passage,
it has to invent one, and its samples disagree.

Criteria and thresholds: each threshold lies ``min_gap``..``max_gap`` bpm from the record's rate, and a held-out
condition is asked about a record only when the rate is at least ``min_gap`` bpm from the condition's bounds (no
answer hangs on one beat); yes and no alternate within each split and kind, so each holds as many of each (+-1).
Every row's ``facts`` hold the record's rate (never in the prompt); the question's kind shows in its wording
(:func:`question_kind`).

Built from a PTB-XL-layout demo folder (``ecg_demo.ensure_demo_ptbxl``), split by PTB-XL's ``strat_fold``
(1-8 train, 9 val, 10 test). Layout under ``root``: ``records.jsonl`` (a record manifest with ``split``,
``label`` YES/NO or none, ``facts``) and ``criteria.json`` (the settings and the count of each kind per split).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmmed.eval.rationale import format_rationale
from mmmed_datasets.demo.demo_folder import build_once
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from mmmed_datasets.demo.ecg_threshold_demo import RATE_QUESTION, SPLIT_OF_FOLD

log = logging.getLogger(__name__)

VERSION = 3  # 2: every criterion bound within PLAUSIBLE_BPM; 3: answers are worked rationales
PLAUSIBLE_BPM = (25, 220)  # criterion bounds a clinician could write
MANIFEST = "records.jsonl"
# The held-out conditions: card title as asked -> (lowest rate that meets it, highest), in bpm, as the card states
# (knowledge/cards/: "above 100" -> (100, inf) exclusive, "below 60" -> (-inf, 60) exclusive, "from 60 to 100
# inclusive" -> [60, 100]). Never named in training.
HELDOUT_CONDITIONS = {
    "sinus tachycardia": ("above", 100),
    "sinus bradycardia": ("below", 60),
    "bradycardia as defined by the 2018 guideline": ("below", 50),
    "normal sinus rhythm": ("between", (60, 100)),
}
CONDITION_QUESTION = "Does this ECG meet the criteria for {name}?"
STATED_QUESTION = {"above": "Does this ECG show a heart rate above {t} bpm?",
                   "below": "Does this ECG show a heart rate below {t} bpm?",
                   "between": "Does this ECG show a heart rate from {t[0]} to {t[1]} bpm?"}
CRITERION_TEXT = {"above": "a heart rate above {t} bpm", "below": "a heart rate below {t} bpm",
                  "between": "a heart rate from {t[0]} to {t[1]} bpm inclusive"}
# Sentences a card's criterion passage carries besides the criterion (training passages mix them in, so that the
# model reads the criterion out of a passage that also says other things).
FILLERS = [
    "Count the QRS complexes in the 10-second strip and multiply by six.",
    "The criterion says nothing about the cause.",
    "Each QRS complex is preceded by a P wave.",
    "Rates measured during exercise do not count.",
    "Report the rate in beats per minute.",
]
DISTRACTORS = [  # unrelated passages, as a search returns next to the relevant one
    ("Pleural effusion", "Criterion", "Fluid in the pleural space blunts the costophrenic angle and forms a meniscus."),
    ("First-degree atrioventricular block", "Criterion", "Every P wave is conducted, with a PR interval longer than 200 ms."),
    ("Left ventricular hypertrophy: voltage criteria", "Criterion: Sokolow-Lyon",
     "The S wave in V1 plus the taller R wave of V5 or V6 is 35 mm or more."),
    ("QT interval and corrected QT", "Criterion: prolonged QTc",
     "A heart-rate corrected QT interval of 450 ms or more in men is prolonged."),
    ("Cardiomegaly: cardiothoracic ratio", "Criterion", "The cardiothoracic ratio on a PA film is above 0.50."),
]


def question_kind(question: str) -> str:
    """``applied`` (a criterion in the prompt), ``condition`` (a held-out condition's name only), ``stated`` or ``rate``."""
    if question == RATE_QUESTION:
        return "rate"
    if "meet the criteria for" in question:
        return "applied" if question.startswith("Context:") else "condition"
    return "stated"


def meets(rate: float, kind: str, threshold) -> bool:
    """Whether ``rate`` meets a criterion of ``kind`` (above, below, between) at ``threshold``."""
    if kind == "above":
        return rate > threshold
    if kind == "below":
        return rate < threshold
    return threshold[0] <= rate <= threshold[1]


def _margin(rate: float, kind: str, threshold) -> float:
    """bpm between the rate and the criterion's nearest bound."""
    bounds = threshold if kind == "between" else (threshold,)
    return min(abs(rate - b) for b in bounds)


def _criterion(rng: np.random.Generator, rate: float, want_yes: bool, min_gap: int, max_gap: int) -> tuple[str, object]:
    """A criterion (kind, threshold) that ``rate`` meets (``want_yes``) or not, every bound ``min_gap`` to ``max_gap``
    bpm from the rate and within ``PLAUSIBLE_BPM`` (no "below 5 bpm"): drawn again until it is."""
    gap = lambda: int(rng.integers(min_gap, max_gap + 1))  # noqa: E731
    for _ in range(1000):
        kind = ["above", "below", "between"][int(rng.integers(3))]
        if kind == "between" and want_yes:
            threshold = (math.floor(rate - gap()), math.ceil(rate + gap()))
        elif kind == "between":  # a band wholly above or wholly below the rate
            width = int(rng.integers(min_gap, max_gap + 1))
            low = math.ceil(rate + gap()) if rng.integers(2) else math.floor(rate - gap()) - width
            threshold = (low, low + width)
        else:
            threshold_above_rate = (kind == "above") != want_yes  # "above T" is met when T is below the rate
            threshold = math.ceil(rate + gap()) if threshold_above_rate else math.floor(rate - gap())
        bounds = threshold if kind == "between" else (threshold,)
        if all(PLAUSIBLE_BPM[0] <= b <= PLAUSIBLE_BPM[1] for b in bounds):
            return kind, threshold
    raise ValueError(f"no criterion {min_gap}-{max_gap} bpm from a rate of {rate} lies within {PLAUSIBLE_BPM} bpm")


def _passage(name: str, kind: str, threshold, rng: np.random.Generator) -> str:
    """A card-shaped passage stating the criterion: ``[n] Title (Criterion): Title: <criterion>. <filler>``."""
    filler = FILLERS[int(rng.integers(len(FILLERS)))]
    return f"{name.capitalize()} (Criterion): {name.capitalize()}: {CRITERION_TEXT[kind].format(t=threshold)}. {filler}"


def _context(passages: list[str]) -> str:
    return "Context:\n" + "\n".join(f"[{n}] {p}" for n, p in enumerate(passages, start=1)) + "\n\n"


def plan_questions(rates: dict[str, float], splits: dict[str, str], train_per_record: int, min_gap: int,
                   max_gap: int, seed: int) -> list[dict]:
    """Every question (``record``, ``split``, ``kind``, ``question``, ``answer``, ``label``, ``facts``), from the seed."""
    rng = np.random.default_rng(seed)
    asked: dict[tuple[str, str], int] = {}

    def want_yes(split: str, kind: str) -> bool:  # alternate yes/no within a split and kind
        n = asked.get((split, kind), 0)
        asked[(split, kind)] = n + 1
        return n % 2 == 0

    questions = []
    conditions = list(HELDOUT_CONDITIONS)
    for record in sorted(rates):
        rate, split = rates[record], splits[record]
        if split == "train":
            for q in range(train_per_record):
                kind_of_question = "applied" if q % 2 == 0 else "stated"
                yes = want_yes(split, kind_of_question)
                kind, threshold = _criterion(rng, rate, yes, min_gap, max_gap)
                if kind_of_question == "applied":
                    name = f"study criterion {int(rng.integers(1, 100))}"
                    passages = [_passage(name, kind, threshold, rng)]
                    if rng.integers(2):
                        passages.append("{} ({}): {}".format(*DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]))
                    question = _context(passages) + CONDITION_QUESTION.format(name=name)
                else:
                    question = STATED_QUESTION[kind].format(t=threshold)
                questions.append(_row(record, split, kind_of_question, question, yes, rate, kind, threshold))
            questions.append({"record": record, "split": split, "kind": "rate", "question": RATE_QUESTION,
                              "answer": f"{round(rate)} bpm.", "label": None, "facts": {"heart_rate": rate}})
            continue
        # held out: one condition question (a condition whose bounds are >= min_gap away, yes/no alternating when
        # the record allows it) and one stated question
        yes = want_yes(split, "condition")
        usable = [c for c in conditions if _margin(rate, *HELDOUT_CONDITIONS[c]) >= min_gap]
        matching = [c for c in usable if meets(rate, *HELDOUT_CONDITIONS[c]) == yes] or usable
        name = matching[int(rng.integers(len(matching)))]
        kind, threshold = HELDOUT_CONDITIONS[name]
        questions.append(_row(record, split, "condition", CONDITION_QUESTION.format(name=name),
                              meets(rate, kind, threshold), rate, kind, threshold, condition=name))
        yes = want_yes(split, "stated")
        kind, threshold = _criterion(rng, rate, yes, min_gap, max_gap)
        questions.append(_row(record, split, "stated", STATED_QUESTION[kind].format(t=threshold), yes, rate, kind,
                              threshold))
    return questions


def rationale(rate: float, kind: str, threshold, name: str | None) -> str:
    """The worked answer: the reading, the criterion (named when it has a name), the comparison, the answer."""
    reading, yes = round(rate), meets(rate, kind, threshold)
    criterion = CRITERION_TEXT[kind].format(t=threshold)
    subject = f"{name} is {criterion}" if name else f"the criterion is {criterion}"
    return format_rationale(f"The heart rate is {reading} bpm; {subject}, which {reading} "
                            f"{'meets' if yes else 'does not meet'}.", "Yes." if yes else "No.")


def _row(record: str, split: str, kind_of_question: str, question: str, yes: bool, rate: float, kind: str,
         threshold, condition: str | None = None) -> dict:
    facts = {"heart_rate": rate}
    if meets(rate, kind, threshold) != yes:  # the plan's own check of every answer it writes
        raise AssertionError(f"{record}: {question!r} planned as {yes} for a rate of {rate}")
    name = condition or (question.rsplit("criteria for ", 1)[1].rstrip("?") if kind_of_question == "applied" else None)
    return {"record": record, "split": split, "kind": kind_of_question, "question": question,
            "answer": rationale(rate, kind, threshold, name), "label": "YES" if yes else "NO", "facts": facts}


def ensure_criterion_questions(root: str | os.PathLike, ptbxl: dict, train_questions_per_record: int, min_gap: int,
                               max_gap: int, seed: int) -> Path:
    """Build (once) the criterion questions at ``root`` over the PTB-XL-layout demo ``ptbxl`` (the arguments of
    ``ecg_demo.ensure_demo_ptbxl``, built first if needed)."""
    if not 1 <= min_gap <= max_gap:
        raise ValueError(f"criteria need 1 <= min_gap <= max_gap, got {min_gap} and {max_gap}")
    ptbxl_root = ensure_demo_ptbxl(**ptbxl)
    settings = {"ptbxl": {k: (str(v) if k == "root" else v) for k, v in ptbxl.items()},
                "train_questions_per_record": train_questions_per_record, "min_gap": min_gap, "max_gap": max_gap,
                "seed": seed, "version": VERSION}
    return build_once(root, settings, lambda folder: _write(folder, Path(ptbxl_root), settings))


def _write(folder: Path, ptbxl_root: Path, settings: dict) -> None:
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id")
    rates = {row.filename_lr: float(row.heart_rate) for row in table.itertuples()}
    patients = {row.filename_lr: f"{float(row.patient_id):g}" for row in table.itertuples()}
    splits = {row.filename_lr: SPLIT_OF_FOLD[int(row.strat_fold)] for row in table.itertuples()}
    questions = plan_questions(rates, splits, settings["train_questions_per_record"], settings["min_gap"],
                               settings["max_gap"], settings["seed"])
    with open(folder / MANIFEST, "w") as manifest:
        for q in questions:
            manifest.write(json.dumps({"patient_id": patients[q["record"]], "split": q["split"],
                                       "ecg": str(ptbxl_root / q["record"]), "question": q["question"],
                                       "answer": q["answer"], "label": q["label"], "facts": q["facts"]}) + "\n")
    counts = {f"{split}/{kind}": sum(q["split"] == split and q["kind"] == kind for q in questions)
              for split in ("train", "val", "test") for kind in ("applied", "stated", "rate", "condition")}
    (folder / "criteria.json").write_text(json.dumps({**settings, "questions": counts}, indent=1))
    log.info("Criterion questions: %s", {k: v for k, v in counts.items() if v})
