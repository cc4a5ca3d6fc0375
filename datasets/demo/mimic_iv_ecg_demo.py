"""Generate an offline demo set in MIMIC-IV-ECG 1.0's real layout, deterministically from a seed.

Layout (as MIMIC-IV-ECG): ``record_list.csv`` (subject_id, study_id, file_name, ecg_time, path),
``machine_measurements.csv`` (subject_id, study_id, cart_id, ecg_time, report_0..report_17,
bandwidth, filtering, rr_interval, p_onset, p_end, qrs_onset, qrs_end, t_end, p_axis, qrs_axis,
t_axis) and WFDB records ``files/p1000/p10000032/s40689238/40689238``: 10 s, 500 Hz, format 16,
200 adu/mV, leads written in MIMIC's order and spelling (I, II, III, aVR, aVF, aVL, V1..V6).

Signals come from ``ecg_demo.simulate_12lead`` (neurokit2, limb leads re-derived from I and II), one
simulation per patient cut into consecutive 10 s records, patients in parallel. The learnable truth
is the rhythm (``ecg_demo.RHYTHMS``: bradycardia 40-55, normal 65-95, tachycardia 105-140 bpm),
stated in report_0 as MIMIC's machine does ("Sinus bradycardia", "Sinus rhythm", "Sinus
tachycardia"), followed by a summary statement ("Normal ECG", "Otherwise normal ECG", "Borderline
ECG"). About one record in six has a NaN run (a lead dropping out for 20-400 ms, sometimes at the
record's end), written through the format-16 NaN sentinel; its report says so in report_1, which
pushes the summary to report_2. Subjects get MIMIC-like 8-digit ids, studies distinct 8-digit ids;
splits come from the data source's subject hash, as on the real data.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from mmmed_datasets.demo.demo_folder import build_once
from mmmed_datasets.demo.ecg_demo import RHYTHMS, simulate_12lead
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS

# Not imported from mimic_iv_ecg.py: that pulls in torch, which every spawned worker would import.
MIMIC_LEAD_NAMES = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")  # as its headers spell them
RECORD_LIST, MEASUREMENTS = "record_list.csv", "machine_measurements.csv"

log = logging.getLogger(__name__)

FS, RECORD_SECONDS = 500, 10
ADC_GAIN = 200.0  # adu per mV (5 µV steps), as MIMIC-IV-ECG's headers
NUM_REPORT_COLUMNS = 18
RHYTHM_STATEMENT = {"SBRAD": "Sinus bradycardia", "SR": "Sinus rhythm", "STACH": "Sinus tachycardia"}
SUMMARIES = {"SBRAD": ("Otherwise normal ECG", "Borderline ECG"), "SR": ("Normal ECG",),
             "STACH": ("Borderline ECG", "Otherwise normal ECG")}
NAN_STATEMENT = "Poor data quality, interpretation may be adversely affected"
NAN_RECORD_FRACTION = 1 / 6
# simulate_12lead gives the canonical order; MIMIC stores aVF before aVL.
TO_MIMIC_ORDER = [[lead.lower() for lead in CANONICAL_LEADS].index(name.lower()) for name in MIMIC_LEAD_NAMES]


def record_path(subject_id: int, study_id: int) -> str:
    """MIMIC-IV-ECG's relative record path: ``files/p<first 4 digits>/p<subject>/s<study>/<study>``."""
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def write_mimic_record(root: Path, rel_path: str, signal: np.ndarray, when: datetime) -> None:
    """Write (5000, 12) mV in MIMIC lead order as format 16 at 200 adu/mV; NaN becomes the sentinel."""
    target = root / rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        target.name,
        fs=FS,
        units=["mV"] * 12,
        sig_name=list(MIMIC_LEAD_NAMES),
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[ADC_GAIN] * 12,
        baseline=[0] * 12,
        base_time=when.time(),
        base_date=when.date(),
        write_dir=str(target.parent),
    )


def _simulate_patient(job: dict) -> list[tuple[dict, dict]]:
    """Simulate one patient's recording and write its records; returns (record_list, measurements) rows."""
    root = Path(job["root"])
    per_record = RECORD_SECONDS * FS
    signal = simulate_12lead(job["heart_rate"], RECORD_SECONDS * len(job["records"]), job["seed"])[:, TO_MIMIC_ORDER]
    rows = []
    for k, record in enumerate(job["records"]):
        part = signal[k * per_record : (k + 1) * per_record].copy()  # (5000, 12)
        if record["nan_run"] is not None:
            lead, start, length = record["nan_run"]
            part[start : start + length, lead] = np.nan
        when = datetime.fromisoformat(record["ecg_time"])
        rel = record_path(job["subject_id"], record["study_id"])
        write_mimic_record(root, rel, part, when)
        statements = [RHYTHM_STATEMENT[job["rhythm"]], record["summary"]]
        if record["nan_run"] is not None:
            statements.insert(1, NAN_STATEMENT)
        ids = {"subject_id": job["subject_id"], "study_id": record["study_id"]}
        listing = {**ids, "file_name": str(record["study_id"]), "ecg_time": record["ecg_time"], "path": rel}
        rr = round(60000 / job["heart_rate"])
        measurements = {
            **ids,
            "cart_id": job["cart_id"],
            "ecg_time": record["ecg_time"],
            **{f"report_{i}": statements[i] if i < len(statements) else "" for i in range(NUM_REPORT_COLUMNS)},
            "bandwidth": "0.005-150 Hz",
            "filtering": "60 Hz notch Baseline filter",
            "rr_interval": rr,
            "p_onset": 40,
            "p_end": 140,
            "qrs_onset": 180,
            "qrs_end": 272,
            "t_end": 180 + round(0.4 * np.sqrt(rr / 1000) * 1000),  # QT by Bazett at QTc 400 ms
            "p_axis": job["axes"][0],
            "qrs_axis": job["axes"][1],
            "t_axis": job["axes"][2],
        }
        rows.append((listing, measurements))
    return rows


def _plan(num_patients: int, records_per_patient: int, seed: int) -> list[dict]:
    """Per-patient ids, rhythm, rate and per-record times, summaries and NaN runs, from the seed alone."""
    rng = np.random.default_rng(seed)
    codes = list(RHYTHMS)
    rhythms = [codes[i % len(codes)] for i in range(num_patients)]
    rng.shuffle(rhythms)
    subject_ids = 10_000_000 + rng.choice(10_000_000, size=num_patients, replace=False)
    study_ids = 40_000_000 + rng.choice(10_000_000, size=num_patients * records_per_patient, replace=False)
    jobs = []
    for patient, code in enumerate(rhythms):
        low, high = RHYTHMS[code][0]
        first = datetime(2110, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 70)), minutes=int(rng.integers(0, 1440)))
        records = []
        for k in range(records_per_patient):
            nan_run = None
            if rng.random() < NAN_RECORD_FRACTION:
                length = int(rng.integers(10, 201))  # 20-400 ms
                start = RECORD_SECONDS * FS - length if rng.random() < 0.3 else int(rng.integers(1, RECORD_SECONDS * FS - length))
                nan_run = (int(rng.integers(0, 12)), start, length)
            records.append({
                "study_id": int(study_ids[patient * records_per_patient + k]),
                "ecg_time": (first + timedelta(days=30 * k)).isoformat(sep=" "),
                "summary": str(rng.choice(SUMMARIES[code])),
                "nan_run": nan_run,
            })
        jobs.append({
            "subject_id": int(subject_ids[patient]),
            "rhythm": code,
            "heart_rate": float(rng.uniform(low, high)),
            "cart_id": int(rng.integers(6000, 6900)),
            "axes": [int(a) for a in rng.integers(-30, 90, size=3)],
            "seed": int(rng.integers(0, 2**31 - 1)),
            "records": records,
        })
    return jobs


def ensure_demo_mimic_iv_ecg(
    root: str | os.PathLike, num_patients: int, records_per_patient: int, seed: int, workers: int | None = None
) -> Path:
    """Create the demo set at ``root`` unless a complete one with the same settings is there."""
    settings = {"num_patients": num_patients, "records_per_patient": records_per_patient, "seed": seed, "version": 1}
    return build_once(root, settings, lambda folder: _write_demo(folder, num_patients, records_per_patient, seed, workers))


def _write_demo(folder: Path, num_patients: int, records_per_patient: int, seed: int, workers: int | None) -> None:
    jobs = _plan(num_patients, records_per_patient, seed)
    for job in jobs:
        job["root"] = str(folder)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    log.info("Simulating %d MIMIC-IV-ECG demo records (%d patients, %d workers)",
             num_patients * records_per_patient, num_patients, workers)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rows = [row for rows in pool.map(_simulate_patient, jobs) for row in rows]
    else:
        rows = [row for job in jobs for row in _simulate_patient(job)]
    # MIMIC's tables list studies by subject, then time.
    listing = pd.DataFrame([r for r, _ in rows]).sort_values(["subject_id", "ecg_time"])
    measurements = pd.DataFrame([m for _, m in rows]).sort_values(["subject_id", "ecg_time"])
    listing.to_csv(folder / RECORD_LIST, index=False)
    measurements.to_csv(folder / MEASUREMENTS, index=False)
