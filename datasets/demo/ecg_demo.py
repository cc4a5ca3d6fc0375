"""Generate the offline demo ECG set in PTB-XL's real layout, deterministically from a seed.

Layout (as in PTB-XL 1.0.3): ``ptbxl_database.csv`` indexed by ``ecg_id``, the rows of
``scp_statements.csv`` for the codes used, and WFDB records under
``records500/00000/00001_hr`` (500 Hz) and ``records100/00000/00001_lr`` (100 Hz, decimated from
500 Hz), 12 leads I, II, III, AVR, AVL, AVF, V1..V6 in mV, 16-bit, 1000 adu/mV, 10 s each.

Signals come from neurokit2's 12-lead ECGSYN model. It costs ~0.8 s per 10 s, most of it per call,
so each simulated patient gets one longer recording cut into consecutive 10 s records, and patients
are simulated in parallel. The limb leads III, aVR, aVL, aVF are re-derived from I and II
(Einthoven/Goldberger) because the simulator's leads are not mutually consistent.

The learnable truth is the rhythm: sinus bradycardia (40-55 bpm), normal sinus rhythm (65-95 bpm)
or sinus tachycardia (105-140 bpm); rates within 5 bpm of the 60/100 bpm thresholds are not drawn,
so every label is unambiguous. Folds 1-10 are assigned per patient (patient-disjoint), balanced by
rhythm, as PTB-XL's ``strat_fold``; the demo config gives the held-out folds 9 and 10 more patients than a
training fold (``heldout_patients``), so their accuracy is measured on hundreds of records, not a dozen.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from scipy.signal import resample_poly

from mmmed_datasets.demo.demo_folder import build_once

log = logging.getLogger(__name__)

PTBXL_LEAD_NAMES = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
RECORD_SECONDS = 10
HR_FS, LR_FS = 500, 100
# rhythm -> (SCP code, rate range in bpm, report wording)
RHYTHMS = {
    "SBRAD": ((40, 55), "Sinus bradycardia"),
    "SR": ((65, 95), "Normal sinus rhythm"),
    "STACH": ((105, 140), "Sinus tachycardia"),
}


def record_paths(ecg_id: int) -> tuple[str, str]:
    """PTB-XL's ``(filename_lr, filename_hr)`` for an ecg_id: 1000 records per folder."""
    folder = f"{ecg_id // 1000 * 1000:05d}"
    return f"records100/{folder}/{ecg_id:05d}_lr", f"records500/{folder}/{ecg_id:05d}_hr"


def simulate_12lead(heart_rate: float, seconds: int, seed: int) -> np.ndarray:
    """A consistent 12-lead ECG in mV at 500 Hz, PTB-XL lead order: (seconds * 500, 12)."""
    import neurokit2 as nk  # imported here: slow to import, needed only when generating

    sim = nk.ecg_simulate(
        duration=seconds, sampling_rate=HR_FS, heart_rate=heart_rate, method="multileads", random_state=seed
    )
    lead_i, lead_ii = sim["I"].to_numpy(), sim["II"].to_numpy()
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    chest = [sim[f"V{k}"].to_numpy() for k in range(1, 7)]
    return np.stack(limb + chest, axis=1).astype(np.float64)


def write_ptbxl_record(root: Path, rel_path: str, signal: np.ndarray, fs: int) -> None:
    """Write (T, 12) mV as a PTB-XL-style WFDB record (format 16, 1000 adu/mV, baseline 0)."""
    target = root / rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        target.name,
        fs=fs,
        units=["mV"] * 12,
        sig_name=PTBXL_LEAD_NAMES,
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(target.parent),
    )


def _simulate_patient(job: dict) -> list[dict]:
    """Simulate one patient's recording and write its records; returns their CSV rows."""
    root = Path(job["root"])
    seconds = RECORD_SECONDS * len(job["ecg_ids"])
    signal = simulate_12lead(job["heart_rate"], seconds, job["seed"])  # (T, 12)
    code, wording = job["rhythm"], RHYTHMS[job["rhythm"]][1]
    rows = []
    for k, ecg_id in enumerate(job["ecg_ids"]):
        hr_part = signal[k * RECORD_SECONDS * HR_FS : (k + 1) * RECORD_SECONDS * HR_FS]
        lr_part = resample_poly(hr_part, LR_FS, HR_FS, axis=0)  # anti-aliased decimation, as PTB-XL's 100 Hz set
        filename_lr, filename_hr = record_paths(ecg_id)
        write_ptbxl_record(root, filename_hr, hr_part, HR_FS)
        write_ptbxl_record(root, filename_lr, lr_part, LR_FS)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": float(job["patient_id"]),  # PTB-XL stores patient_id as a float
                "age": float(job["age"]),
                "sex": job["sex"],
                "recording_date": f"1995-01-{1 + k:02d} 09:00:00",
                "report": f"{wording} at {round(job['heart_rate'])} bpm.",
                # PTB-XL convention: diagnostic NORM with likelihood 100, rhythm statements with 0.
                "scp_codes": str({"NORM": 100.0, code: 0.0}),
                "heart_rate": float(job["heart_rate"]),
                "strat_fold": job["fold"],
                "filename_lr": filename_lr,
                "filename_hr": filename_hr,
            }
        )
    return rows


def _plan(num_patients: int, records_per_patient: int, seed: int, heldout_patients: int = 0) -> list[dict]:
    """Per-patient rhythm, rate, demographics and fold, from the seed alone.

    ``heldout_patients`` 0: the ``num_patients`` are dealt over folds 1-10 (PTB-XL's equal folds). Otherwise the
    ``num_patients`` are dealt over the training folds 1-8 and folds 9 (validation) and 10 (test) get
    ``heldout_patients`` patients each, so that held-out accuracy has a usable confidence interval.
    """
    rng = np.random.default_rng(seed)
    codes = list(RHYTHMS)
    groups = [(num_patients, 10 if heldout_patients == 0 else 8, 1)]  # (patients, folds, first fold)
    if heldout_patients:
        groups += [(heldout_patients, 1, 9), (heldout_patients, 1, 10)]
    assignments = []
    for count, folds, first in groups:
        rhythms = [codes[i % len(codes)] for i in range(count)]
        rng.shuffle(rhythms)
        # Folds are dealt round-robin within each rhythm, so every fold holds every rhythm.
        dealt = {code: 0 for code in codes}
        for code in rhythms:
            assignments.append((code, first + dealt[code] % folds))
            dealt[code] += 1
    jobs, next_id = [], 1
    for patient, (code, fold) in enumerate(assignments):
        low, high = RHYTHMS[code][0]
        jobs.append(
            {
                "patient_id": 10000 + patient,
                "rhythm": code,
                "heart_rate": float(rng.uniform(low, high)),
                "age": int(rng.integers(20, 90)),
                "sex": int(rng.integers(0, 2)),
                "fold": fold,
                "seed": int(rng.integers(0, 2**31 - 1)),
                "ecg_ids": list(range(next_id, next_id + records_per_patient)),
            }
        )
        next_id += records_per_patient
    return jobs


def ensure_demo_ptbxl(root: str | os.PathLike, num_patients: int, records_per_patient: int, seed: int,
                      workers: int | None = None, heldout_patients: int = 0) -> Path:
    """Create the demo set at ``root`` unless a complete one with the same settings is there (``_plan``: which
    patients go to which fold)."""
    settings = {"num_patients": num_patients, "records_per_patient": records_per_patient, "seed": seed, "version": 2}
    if heldout_patients:  # a set made without it keeps its settings (and its cached folder stays valid)
        settings["heldout_patients"] = heldout_patients
    return build_once(root, settings, lambda folder: _write_demo(folder, num_patients, records_per_patient, seed, workers,
                                                                 heldout_patients))


def _write_demo(folder: Path, num_patients: int, records_per_patient: int, seed: int, workers: int | None,
                heldout_patients: int) -> None:
    jobs = _plan(num_patients, records_per_patient, seed, heldout_patients)
    for job in jobs:
        job["root"] = str(folder)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    log.info("Simulating %d demo ECGs (%d patients, %d workers)", sum(len(j["ecg_ids"]) for j in jobs), len(jobs), workers)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rows = [row for rows in pool.map(_simulate_patient, jobs) for row in rows]
    else:
        rows = [row for job in jobs for row in _simulate_patient(job)]
    table = pd.DataFrame(rows).set_index("ecg_id").sort_index()
    table.to_csv(folder / "ptbxl_database.csv")
    write_scp_statements(folder)


def write_scp_statements(folder: Path) -> None:
    """The rows of PTB-XL's ``scp_statements.csv`` for the codes the demo uses, with its columns."""
    rows = [
        ("NORM", "normal ECG", 1.0, None, None, "NORM", "NORM"),
        ("SR", "sinus rhythm", None, None, 1.0, None, None),
        ("SBRAD", "sinus bradycardia", None, None, 1.0, None, None),
        ("STACH", "sinus tachycardia", None, None, 1.0, None, None),
    ]
    columns = ["", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "scp_statements.csv", index=False)
