"""Generate an offline demo in ECG-QA's layout over the demo PTB-XL set (datasets/demo/ecg_demo.py).

Written as ``<root>/{train,valid,test}/00000.json`` (ECG-QA's format: lists of samples with
template_id, question_id, sample_id, question_type, attribute_type, question, answer, ecg_id,
attribute), with ECG-QA's split rule: questions about records in PTB-XL ``strat_fold`` 1-8 go to
train, 9 to valid, 10 to test. The truth comes from the demo table (the rhythm code SBRAD / SR /
STACH in ``scp_codes``, and ``heart_rate``). Per record, with ``sample_id`` counting per split:

* single-verify: "Does this ECG show <rhythm>?" -> yes / no (its own rhythm asked half the time)
* single-query: "What is the rhythm of this ECG?" -> "sinus bradycardia" | "sinus rhythm" | "sinus tachycardia"
* comparison_irrelevant-verify with a record of another patient in the same split, alternating
  "Do both ECGs show the same rhythm?" (a same-rhythm partner half the time) and "Does the first
  ECG have a faster heart rate than the second?" (partners at least MIN_RATE_GAP bpm apart).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmmed_datasets.demo.demo_folder import MANIFEST, build_once
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl

RHYTHM_NAMES = {"SBRAD": "sinus bradycardia", "SR": "sinus rhythm", "STACH": "sinus tachycardia"}  # ECG-QA's wording
SPLIT_FOLDS = {"train": (1, 2, 3, 4, 5, 6, 7, 8), "valid": (9,), "test": (10,)}
MIN_RATE_GAP = 10.0  # bpm: closer pairs would make "faster" a coin toss on a 10 s strip
SAMPLES_PER_FILE = 10000
# template_id -> (question_type, attribute_type, question)
TEMPLATES = {
    1: ("single-verify", "scp_code", "Does this ECG show {rhythm}?"),
    2: ("single-query", "scp_code", "What is the rhythm of this ECG?"),
    3: ("comparison_irrelevant-verify", "scp_code", "Do both ECGs show the same rhythm?"),
    4: ("comparison_irrelevant-verify", "numeric_feature", "Does the first ECG have a faster heart rate than the second?"),
}


def demo_records(ptbxl_root: Path) -> pd.DataFrame:
    """The demo table's records with their rhythm code (records without one are left out)."""
    table = pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id").sort_index()
    codes = [next((c for c in RHYTHM_NAMES if c in ast.literal_eval(s)), None) for s in table["scp_codes"]]
    table = table.assign(rhythm=codes)
    return table[table["rhythm"].notna()]


# Paraphrases of one question share a question_id in ECG-QA; here each distinct text has its own.
QUESTION_IDS = {
    text: qid
    for qid, text in enumerate(dict.fromkeys(q.format(rhythm=r) for _, _, q in TEMPLATES.values() for r in RHYTHM_NAMES.values()))
}


def _sample(template_id: int, ecg_ids: list[int], answer: str, rhythm: str | None = None) -> dict:
    """One question in ECG-QA's format (``sample_id`` is set when the split is complete)."""
    question_type, attribute_type, question = TEMPLATES[template_id]
    text = question.format(rhythm=rhythm)
    return {
        "template_id": template_id,
        "question_id": QUESTION_IDS[text],
        "question_type": question_type,
        "attribute_type": attribute_type,
        "question": text,
        "answer": [answer],
        "ecg_id": [int(e) for e in ecg_ids],
        # The attribute asked about (verify) or found (query); ECG-QA leaves it null for comparisons.
        "attribute": [rhythm or answer] if question_type.startswith("single") else None,
    }


def split_questions(records: pd.DataFrame, rng: np.random.Generator) -> list[dict]:
    """Three questions per record of one split (the comparison one only when a partner exists)."""
    out = []
    for position, (ecg_id, row) in enumerate(records.iterrows()):
        own = RHYTHM_NAMES[row["rhythm"]]
        asked = own if rng.random() < 0.5 else str(rng.choice([n for n in RHYTHM_NAMES.values() if n != own]))
        out.append(_sample(1, [ecg_id], "yes" if asked == own else "no", asked))
        out.append(_sample(2, [ecg_id], own))
        others = records[records["patient_id"] != row["patient_id"]]  # "irrelevant": another patient
        if position % 2 == 0:
            same, different = others[others["rhythm"] == row["rhythm"]], others[others["rhythm"] != row["rhythm"]]
            want_same = rng.random() < 0.5
            pool = same if (want_same and len(same)) or not len(different) else different
            if len(pool):
                partner = int(rng.choice(pool.index))
                answer = "yes" if records.loc[partner, "rhythm"] == row["rhythm"] else "no"
                out.append(_sample(3, [ecg_id, partner], answer))
        else:
            pool = others[(others["heart_rate"] - row["heart_rate"]).abs() >= MIN_RATE_GAP]
            if len(pool):
                partner = int(rng.choice(pool.index))
                out.append(_sample(4, [ecg_id, partner], "yes" if row["heart_rate"] > records.loc[partner, "heart_rate"] else "no"))
    return out


def ensure_demo_ecg_qa(root: str | os.PathLike, ptbxl_root: str | os.PathLike, seed: int) -> Path:
    """Create the ECG-QA-format demo at ``root`` over the PTB-XL demo at ``ptbxl_root``, unless it is there."""
    ptbxl_root = Path(ptbxl_root).expanduser()
    manifest = ptbxl_root / MANIFEST
    # The questions name ecg_ids of one PTB-XL demo; another demo at that path must not reuse them.
    settings = {"seed": seed, "version": 1, "ptbxl": json.loads(manifest.read_text()) if manifest.is_file() else None}
    return build_once(root, settings, lambda folder: _write(folder, ptbxl_root, seed))


def _write(folder: Path, ptbxl_root: Path, seed: int) -> None:
    records = demo_records(ptbxl_root)
    for index, (split, folds) in enumerate(SPLIT_FOLDS.items()):
        questions = split_questions(records[records["strat_fold"].isin(folds)], np.random.default_rng([seed, index]))
        (folder / split).mkdir()
        for sample_id, question in enumerate(questions):
            question["sample_id"] = sample_id
        for first in range(0, max(len(questions), 1), SAMPLES_PER_FILE):
            chunk = questions[first : first + SAMPLES_PER_FILE]
            (folder / split / f"{first:05d}.json").write_text(json.dumps(chunk, indent=1))


def prepare_demo(root: str, ptbxl_root: str, num_patients: int, records_per_patient: int, seed: int, workers: int | None = None) -> Path:
    """The demo config's ``prepare``: the PTB-XL demo records first, then the questions about them."""
    ensure_demo_ptbxl(ptbxl_root, num_patients, records_per_patient, seed, workers)
    return ensure_demo_ecg_qa(root, ptbxl_root, seed)
