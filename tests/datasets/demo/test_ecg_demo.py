"""The generated demo PTB-XL set: exact, physiologically consistent, labelled right, reproducible."""

from __future__ import annotations

import ast
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from mmmed_datasets.demo import ecg_demo
from mmmed_datasets.demo.demo_folder import MANIFEST
from mmmed_datasets.demo.ecg_demo import RHYTHMS, _plan, ensure_demo_ptbxl, record_paths, simulate_12lead
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ptbxl import PTBXLDataset, load_superclass_map
from mmmed_datasets.ecg.wfdb_ecg import CANONICAL_LEADS, read_wfdb
from mmmed_datasets.ecg.ecg_signal import map_leads

N_PATIENTS, PER_PATIENT, SEED = 30, 1, 0
ALL_FOLDS = list(range(1, 11))
WORDING = {code: wording for code, (_, wording) in RHYTHMS.items()}
I, II, III, AVR, AVL, AVF = range(6)


def quantise(x: np.ndarray) -> np.ndarray:
    return np.round(x * 1000) / 1000


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    parent = tmp_path_factory.mktemp("demo")
    root = ensure_demo_ptbxl(parent / "ptbxl", num_patients=N_PATIENTS, records_per_patient=PER_PATIENT, seed=SEED, workers=2)
    table = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    return root, table


def dataset(root, fs: int, folds=ALL_FOLDS) -> PTBXLDataset:
    preprocessing = ECGPreprocessing(
        list(CANONICAL_LEADS), None, 1, fs, 10, "error", "reject", "error", None, 4, None, 30, "none", "center", 1
    )
    return PTBXLDataset(str(root), folds, fs, "report", "<ecg>", None, list(RHYTHMS), preprocessing, False, "raise", None)


def signal_of(ds: PTBXLDataset, ecg_id: int) -> np.ndarray:
    index = [s.id for s in ds.samples].index(f"ptbxl/{ecg_id}")
    return ds[index]["signals"]["ecg"][0]["signal"].numpy().astype(np.float64)


def test_layout_and_manifest(demo):
    root, table = demo
    assert list(table.index) == list(range(1, N_PATIENTS * PER_PATIENT + 1))
    for ecg_id, row in table.iterrows():
        assert (row["filename_lr"], row["filename_hr"]) == record_paths(ecg_id)
        for rel in (row["filename_lr"], row["filename_hr"]):
            assert (root / f"{rel}.hea").is_file() and (root / f"{rel}.dat").is_file()
    assert json.loads((root / MANIFEST).read_text()) == {
        "num_patients": N_PATIENTS, "records_per_patient": PER_PATIENT, "seed": SEED, "version": 2
    }
    assert sorted(p.name for p in root.parent.iterdir()) == ["ptbxl", "ptbxl.lock"]  # no leftover temporary folder


@pytest.mark.parametrize("patient", [0, 29])
def test_files_equal_independent_simulation(demo, patient):
    root, table = demo
    job = _plan(N_PATIENTS, PER_PATIENT, SEED)[patient]
    (ecg_id,) = job["ecg_ids"]
    sim = simulate_12lead(job["heart_rate"], 10, job["seed"])  # (5000, 12) mV, independent of the files
    assert sim.shape == (5000, 12)
    assert table.loc[ecg_id, "patient_id"] == job["patient_id"]
    hr = signal_of(dataset(root, 500), ecg_id)
    np.testing.assert_allclose(hr, quantise(sim).T, rtol=0, atol=1e-6)
    lr = signal_of(dataset(root, 100), ecg_id)
    np.testing.assert_allclose(lr, quantise(resample_poly(sim, 1, 5, axis=0)).T, rtol=0, atol=1e-6)


def test_signals_are_plausible_ecg(demo):
    root, table = demo
    ds = dataset(root, 500)
    for ecg_id in table.index[:5]:
        x = signal_of(ds, ecg_id)
        assert x.shape == (12, 5000)
        amplitude = x.max(1) - x.min(1)
        assert (amplitude > 0.1).all() and (amplitude < 10).all(), amplitude  # mV: real waves, no blow-up


@pytest.mark.parametrize("fs", [500, 100])
def test_limb_leads_satisfy_einthoven_goldberger(demo, fs):
    root, table = demo
    ds = dataset(root, fs)
    for i in range(len(ds)):
        x = ds[i]["signals"]["ecg"][0]["signal"].numpy().astype(np.float64)
        lead_i, lead_ii = x[I], x[II]
        np.testing.assert_allclose(x[III], lead_ii - lead_i, atol=2e-3)
        np.testing.assert_allclose(x[AVR], -(lead_i + lead_ii) / 2, atol=2e-3)
        np.testing.assert_allclose(x[AVL], lead_i - lead_ii / 2, atol=2e-3)
        np.testing.assert_allclose(x[AVF], lead_ii - lead_i / 2, atol=2e-3)
        np.testing.assert_allclose(x[AVR] + x[AVL] + x[AVF], 0, atol=3e-3)


def test_folds_patient_disjoint_and_balanced(demo):
    _, table = demo
    assert sorted(table["strat_fold"].unique()) == ALL_FOLDS
    patients_per_fold = table.groupby("strat_fold")["patient_id"].apply(set)
    for a in ALL_FOLDS:
        for b in ALL_FOLDS:
            if a < b:
                assert not patients_per_fold[a] & patients_per_fold[b], (a, b)
    assert (table.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    rhythm = table["scp_codes"].map(lambda s: next(c for c in RHYTHMS if c in ast.literal_eval(s)))
    for fold in ALL_FOLDS:
        assert sorted(rhythm[table["strat_fold"] == fold]) == ["SBRAD", "SR", "STACH"], fold


def test_reports_codes_and_rates_agree(demo):
    root, table = demo
    labels = dataset(root, 100)
    for i, (ecg_id, row) in enumerate(table.iterrows()):
        codes = ast.literal_eval(row["scp_codes"])
        rhythms = [c for c in codes if c in RHYTHMS]
        assert len(rhythms) == 1 and codes == {"NORM": 100.0, rhythms[0]: 0.0}, codes
        code = rhythms[0]
        match = re.fullmatch(r"(.+) at (\d+) bpm\.", row["report"])
        assert match, row["report"]
        assert match[1] == WORDING[code]
        assert int(match[2]) == round(row["heart_rate"])
        low, high = RHYTHMS[code][0]
        assert low <= row["heart_rate"] <= high
        # unambiguous: >= 5 bpm away from the 60/100 bpm thresholds, and the class follows the rate
        assert {"SBRAD": row["heart_rate"] <= 55, "SR": 65 <= row["heart_rate"] <= 95,
                "STACH": row["heart_rate"] >= 105}[code]
        assert labels.label_of(codes) == code
        assert labels[i]["label"] == code and labels[i]["answer"] == row["report"]
    # every demo record is NORM, the only diagnostic statement it carries (rhythms have no class)
    assert load_superclass_map(root / "scp_statements.csv") == {"NORM": "NORM"}
    # the plan's rates are what the table says
    plan = _plan(N_PATIENTS, PER_PATIENT, SEED)
    # (the CSV stores repr(float); pandas' default parser may differ in the last bit)
    np.testing.assert_allclose(table["heart_rate"], [job["heart_rate"] for job in plan], rtol=1e-14, atol=0)
    assert [job["rhythm"] for job in plan] == [
        next(c for c in RHYTHMS if c in ast.literal_eval(s)) for s in table["scp_codes"]
    ]


def test_measured_heart_rate_matches_table(demo):
    import neurokit2 as nk
    from scipy.signal import find_peaks

    root, table = demo
    ds = dataset(root, 500)
    for ecg_id, rate in table["heart_rate"].items():
        # ECGSYN's baseline wander makes raw-amplitude peak picking miss R waves or take T waves:
        # clean (high-pass + powerline) first, then R peaks at least 0.3 s apart (<= 200 bpm).
        lead_ii = nk.ecg_clean(signal_of(ds, ecg_id)[II], sampling_rate=500)
        peaks, _ = find_peaks(lead_ii, height=0.5 * np.percentile(lead_ii, 99), distance=150)
        measured = 60 * 500 / np.median(np.diff(peaks))
        assert abs(measured - rate) <= 5, (ecg_id, measured, rate)
        assert abs(len(peaks) - rate / 6) <= 2, (ecg_id, len(peaks), rate)  # beats in 10 s


def test_second_call_reuses_and_mismatches_are_refused(demo, tmp_path):
    root, _ = demo
    csv = root / "ptbxl_database.csv"
    before = csv.stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_demo_ptbxl(root, num_patients=N_PATIENTS, records_per_patient=PER_PATIENT, seed=SEED, workers=2)
    assert time.perf_counter() - start < 0.5
    assert again == root and csv.stat().st_mtime_ns == before
    for other in ({"num_patients": 31}, {"records_per_patient": 2}, {"seed": 1}):
        settings = {"num_patients": N_PATIENTS, "records_per_patient": PER_PATIENT, "seed": SEED, **other}
        with pytest.raises(ValueError, match=re.escape(f"Demo data at {root} was generated with")):
            ensure_demo_ptbxl(root, **settings)
    assert csv.stat().st_mtime_ns == before

    leftover = tmp_path / "half"
    (leftover / "records500").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=re.escape(f"{leftover} exists but is not a complete mmmed demo set (no {MANIFEST})")):
        ensure_demo_ptbxl(leftover, num_patients=3, records_per_patient=1, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half"]  # nothing generated beside it


def test_plan_is_deterministic():
    assert _plan(30, 1, 0) == _plan(30, 1, 0)
    assert _plan(30, 1, 0) != _plan(30, 1, 1)
    plan = _plan(30, 1, 0)
    assert [job["patient_id"] for job in plan] == list(range(10000, 10030))
    assert [job["ecg_ids"] for job in plan] == [[k] for k in range(1, 31)]
    assert len({job["seed"] for job in plan}) == 30
    counts = pd.Series([job["rhythm"] for job in plan]).value_counts().to_dict()
    assert counts == {"SBRAD": 10, "SR": 10, "STACH": 10}
    multi = _plan(4, 3, 0)
    assert [job["ecg_ids"] for job in multi] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]


def test_held_out_patients_fill_folds_9_and_10_balanced_by_rhythm():
    plan = _plan(48, 1, 0, heldout_patients=30)
    folds = pd.Series([job["fold"] for job in plan])
    assert folds.value_counts().to_dict() == {**{fold: 6 for fold in range(1, 9)}, 9: 30, 10: 30}
    held = pd.DataFrame([job for job in plan if job["fold"] >= 9])
    assert held.groupby(["fold", "rhythm"]).size().to_dict() == {(fold, code): 10 for fold in (9, 10) for code in RHYTHMS}
    assert [job["patient_id"] for job in plan] == list(range(10000, 10108))  # one record per patient, disjoint
    assert [job["ecg_ids"] for job in plan] == [[k] for k in range(1, 109)]
    assert _plan(48, 1, 0, heldout_patients=0) == _plan(48, 1, 0)  # 0: PTB-XL's ten equal folds, as before


def test_several_records_per_patient_are_consecutive_slices(tmp_path):
    # 1 patient x 2 records, in-process: record k of a patient is the k-th 10 s of one recording.
    root = ensure_demo_ptbxl(tmp_path / "multi", num_patients=1, records_per_patient=2, seed=5, workers=1)
    table = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    assert list(table.index) == [1, 2]
    plan = _plan(1, 2, 5)
    for job in plan:
        rows = table.loc[job["ecg_ids"]]
        assert set(rows["patient_id"]) == {job["patient_id"]} and set(rows["strat_fold"]) == {job["fold"]}
        assert rows["recording_date"].nunique() == 2
        sim = simulate_12lead(job["heart_rate"], 20, job["seed"])
        for k, ecg_id in enumerate(job["ecg_ids"]):
            part = sim[k * 5000 : (k + 1) * 5000]
            raw = read_wfdb(root / record_paths(ecg_id)[1])
            got, _ = map_leads(raw.signal, raw.lead_names, raw.source)
            np.testing.assert_allclose(got, quantise(part).T, rtol=0, atol=1e-6)


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def explode(job):
        calls.append(job["patient_id"])
        raise RuntimeError("simulator crashed")

    monkeypatch.setattr(ecg_demo, "_simulate_patient", explode)
    with pytest.raises(RuntimeError, match="simulator crashed"):
        ensure_demo_ptbxl(tmp_path / "broken", num_patients=3, records_per_patient=1, seed=0, workers=1)
    assert calls == [10000]
    assert [p.name for p in tmp_path.iterdir()] == ["broken.lock"]  # neither the root nor the temporary folder remains
