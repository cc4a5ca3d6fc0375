"""Generate the offline patient demo: synthetic patients with a 12-lead ECG, a chest X-ray and a note.

Each patient gets one ECG (the ECG demo's simulator, ``ecg_demo.simulate_12lead``, at a rate drawn from
the rhythm's range; stored as a PTB-XL-style 100 Hz WFDB record) and one frontal chest film (the X-ray
demo's ``draw_chest``, stored as DICOM through its encodings: MONOCHROME1/2, windows, a VOI LUT, JPEG 2000,
JPEG-LS, RLE), plus a short note (age, sex, a presenting complaint drawn independently of the findings, so
it never gives the answer away). The question needs both files:

  *"What rhythm does the ECG show, and what does the chest X-ray show?"* ->
  *"Sinus tachycardia; left lower lobe opacity."*, label ``{"rhythm": "STACH", "finding": "LEFT"}``.

About ``ecg_only_fraction`` of the training patients have only the ECG (question and label ask only the
rhythm), and ``xray_only`` more training patients have only a chest film (*"What does the chest X-ray show?"*
-> *"Left lower lobe opacity."*), so training batches mix modality sets. Films are cheap (~16 ms each, an ECG
~0.75 s), and a ViT learning from scratch needs many more films than 270 to generalise rather than memorise
them; the film-only patients give it those. Rhythm and finding are independent and balanced within each
split (each of the 9 combinations equally often). The ``num_test`` test and ``num_val`` validation patients
are held out; the rest train.

Layout: ``records.jsonl`` (the patient manifest, ``record_manifest.py``, with a split column),
``patients.csv`` (the generator's truth per patient: rate, rhythm, finding, view, encoding),
``patients/P00001/ecg.hea|.dat`` and ``patients/P00001/cxr.dcm``.

Cost (measured, 2 cores): ~0.75 s of CPU per patient with an ECG, nearly all of it the ECG (neurokit2's ECGSYN solves
12 ODEs over 10 s; the cost does not depend on the sampling rate), a film ~16 ms. Patients are generated in
``workers`` processes (default: every core): 600 patients took 231 s on 2 idle cores, 438 s beside another
busy process.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy.signal import resample_poly

from mmmed_datasets.demo.demo_folder import build_once
from mmmed_datasets.demo.ecg_demo import HR_FS, LR_FS, RECORD_SECONDS, RHYTHMS, simulate_12lead, write_ptbxl_record
from mmmed_datasets.demo.xray_demo import ENCODINGS, FINDINGS, UID_ROOT, build_dicom, draw_chest, encode_display

log = logging.getLogger(__name__)

VERSION = 2  # 2: film-only training patients (xray_only)
MANIFEST = "records.jsonl"
TRUTH = "patients.csv"
BOTH_QUESTION = "What rhythm does the ECG show, and what does the chest X-ray show?"
ECG_QUESTION = "What rhythm does the ECG show?"
XRAY_QUESTION = "What does the chest X-ray show?"
RHYTHM_WORDS = {code: wording for code, (_, wording) in RHYTHMS.items()}  # "Sinus tachycardia"
FINDING_WORDS = {"NORMAL": "no acute cardiopulmonary process", "LEFT": "left lower lobe opacity",
                 "RIGHT": "right lower lobe opacity"}
# Presenting complaints, drawn independently of rhythm and finding: a note never reveals the answer.
COMPLAINTS = [
    "a cough for three days", "shortness of breath on exertion", "fatigue", "fever and a cough",
    "chest discomfort", "dizziness", "a pre-operative assessment", "a follow-up visit", "a fall at home",
    "back pain", "weight loss", "a routine check-up",
]
SEXES = {"F": "woman", "M": "man"}
assert set(FINDING_WORDS) == set(FINDINGS)


def answer_text(rhythm: str | None, finding: str | None) -> str:
    """The reference answer: ``"Sinus tachycardia; left lower lobe opacity."`` (ECG only: ``"Sinus tachycardia."``,
    film only: ``"Left lower lobe opacity."``)."""
    if rhythm is None:
        return f"{FINDING_WORDS[finding][0].upper()}{FINDING_WORDS[finding][1:]}."
    return f"{RHYTHM_WORDS[rhythm]}." if finding is None else f"{RHYTHM_WORDS[rhythm]}; {FINDING_WORDS[finding]}."


def ensure_demo_patients(
    root: str | os.PathLike,
    num_patients: int,
    seed: int,
    num_val: int = 100,
    num_test: int = 200,
    ecg_only_fraction: float = 0.1,
    xray_only: int = 0,
    rows: int = 384,
    cols: int = 320,
    workers: int | None = None,
) -> Path:
    """Create the demo patients at ``root`` unless a complete set with the same settings is there.

    ``num_patients`` counts the patients with an ECG: ``num_test`` test, ``num_val`` validation, the rest train
    (of whom ``ecg_only_fraction`` have no X-ray); ``xray_only`` training patients with only a film come on top.
    Concurrent callers build it once (``demo_folder.build_once``).
    """
    if num_patients - num_val - num_test < 1 or min(num_val, num_test) < 0:
        raise ValueError(f"num_patients={num_patients} leaves no training patients after {num_val} val and {num_test} test")
    if not 0 <= ecg_only_fraction < 1:
        raise ValueError(f"ecg_only_fraction must be in [0, 1), not {ecg_only_fraction}")
    if xray_only < 0:
        raise ValueError(f"xray_only counts film-only training patients: 0 or more, not {xray_only}")
    settings = {"num_patients": num_patients, "seed": seed, "num_val": num_val, "num_test": num_test,
                "ecg_only_fraction": ecg_only_fraction, "xray_only": xray_only, "rows": rows, "cols": cols,
                "version": VERSION}
    log.info("Demo patients (%d with an ECG, %d with only a film) at %s", num_patients, xray_only, root)
    return build_once(root, settings, lambda folder: _write_demo(folder, settings, workers))


def plan_patients(num_patients: int, seed: int, num_val: int, num_test: int, ecg_only_fraction: float,
                  xray_only: int = 0) -> list[dict]:
    """Every patient's split, rhythm (None: no ECG), finding (None: no X-ray), demographics and seeds, from the
    seed alone."""
    rng = np.random.default_rng(seed)
    combos = [(r, f) for r in RHYTHMS for f in FINDINGS]  # 9: rhythm and finding independent
    num_train = num_patients - num_val - num_test
    ecg_only = round(ecg_only_fraction * num_train)
    patients = []
    for split, count, only in (("train", num_train, ecg_only), ("val", num_val, 0), ("test", num_test, 0)):
        both = [combos[i % len(combos)] for i in range(count - only)]
        single = [(list(RHYTHMS)[i % len(RHYTHMS)], None) for i in range(only)]
        patients += [{"split": split, "rhythm": r, "finding": f} for r, f in both + single]
    patients += [{"split": "train", "rhythm": None, "finding": list(FINDINGS)[i % len(FINDINGS)]} for i in range(xray_only)]
    order = rng.permutation(len(patients))  # splits and classes interleaved over the ids
    planned = []
    for number, index in enumerate(order, start=1):
        patient = dict(patients[index])
        low, high = RHYTHMS[patient["rhythm"]][0] if patient["rhythm"] else (0.0, 0.0)
        sex = "F" if rng.random() < 0.5 else "M"
        patient.update(
            patient_id=f"P{number:05d}",
            heart_rate=float(rng.uniform(low, high)) if patient["rhythm"] else None,
            age=int(rng.integers(25, 90)),
            sex=sex,
            complaint=COMPLAINTS[int(rng.integers(len(COMPLAINTS)))],
            view="PA" if rng.random() < 0.7 else "AP",
            encoding=ENCODINGS[number % len(ENCODINGS)].name,
            ecg_seed=int(rng.integers(0, 2**31 - 1)),
            film_seed=int(rng.integers(0, 2**31 - 1)),
        )
        planned.append(patient)
    return planned


def write_ecg(folder: Path, rel_path: str, heart_rate: float, seed: int) -> None:
    """One 10 s 12-lead ECG at ``heart_rate``, written as a 100 Hz PTB-XL-style WFDB record (``rel_path`` + .hea/.dat)."""
    signal = simulate_12lead(heart_rate, RECORD_SECONDS, seed)  # (5000, 12) mV at 500 Hz
    write_ptbxl_record(folder, rel_path, resample_poly(signal, LR_FS, HR_FS, axis=0), LR_FS)  # anti-aliased, as PTB-XL's lr


def write_film(path: Path, finding: str, view: str, encoding: str, seed: int, rows: int, cols: int,
               header: dict[str, str]) -> None:
    """One frontal chest film with ``finding``, drawn and stored as a DICOM file by the X-ray demo's encoding."""
    enc = next(e for e in ENCODINGS if e.name == encoding)
    display = draw_chest(np.random.default_rng(seed), rows, cols, finding, view)
    build_dicom(encode_display(display, enc), enc, header).save_as(path, enforce_file_format=True)


def _write_patient(job: dict) -> None:
    """Write one patient's files (runs in a worker process)."""
    folder, patient = Path(job["folder"]), job["patient"]
    rel = f"patients/{patient['patient_id']}"
    (folder / rel).mkdir(parents=True, exist_ok=True)
    if patient["rhythm"] is not None:
        write_ecg(folder, f"{rel}/ecg", patient["heart_rate"], patient["ecg_seed"])
    if patient["finding"] is not None:
        def uid(kind: str) -> str:  # deterministic: the same seed and patient give the same UIDs
            return generate_uid(UID_ROOT, entropy_srcs=[str(job["seed"]), patient["patient_id"], kind])

        header = {
            "SOPInstanceUID": uid("image"),
            "StudyInstanceUID": uid("study"),
            "SeriesInstanceUID": uid("series"),
            "PatientName": f"Demo^{patient['patient_id']}",
            "PatientID": f"DEMO-{patient['patient_id']}",
            "PatientBirthDate": "19700101",
            "PatientSex": patient["sex"],
            "StudyDate": "21800101",
            "ViewPosition": patient["view"],
        }
        write_film(folder / rel / "cxr.dcm", patient["finding"], patient["view"], patient["encoding"],
                   patient["film_seed"], job["rows"], job["cols"], header)


def manifest_row(patient: dict) -> dict:
    """The patient's row of ``records.jsonl``: files, note, question, answer, label, split."""
    rel = f"patients/{patient['patient_id']}"
    row = {"patient_id": patient["patient_id"], "split": patient["split"]}
    if patient["rhythm"] is not None:
        row["ecg"] = f"{rel}/ecg.hea"
    if patient["finding"] is not None:
        row["xray"] = f"{rel}/cxr.dcm"
    label = {part: patient[part] for part in ("rhythm", "finding") if patient[part] is not None}
    row.update(
        note=f"{patient['age']}-year-old {SEXES[patient['sex']]} presenting with {patient['complaint']}.",
        question=XRAY_QUESTION if patient["rhythm"] is None else ECG_QUESTION if patient["finding"] is None
        else BOTH_QUESTION,
        answer=answer_text(patient["rhythm"], patient["finding"]),
        label=label,
    )
    return row


def _write_demo(folder: Path, settings: dict, workers: int | None) -> None:
    patients = plan_patients(settings["num_patients"], settings["seed"], settings["num_val"], settings["num_test"],
                             settings["ecg_only_fraction"], settings["xray_only"])
    jobs = [{"folder": str(folder), "patient": p, "seed": settings["seed"], "rows": settings["rows"],
             "cols": settings["cols"]} for p in patients]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    log.info("Simulating %d demo patients (ECG and/or chest film; %d workers)", len(jobs), workers)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_write_patient, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))))
    else:
        for job in jobs:
            _write_patient(job)
    with open(folder / MANIFEST, "w") as handle:
        for patient in patients:
            handle.write(json.dumps(manifest_row(patient)) + "\n")
    columns = ["patient_id", "split", "age", "sex", "complaint", "rhythm", "heart_rate", "finding", "view", "encoding"]
    with open(folder / TRUTH, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**p, "rhythm": p["rhythm"] or "", "finding": p["finding"] or "",
                          "heart_rate": "" if p["heart_rate"] is None else p["heart_rate"]} for p in patients)
