"""MIMICIVECGDataset over hand-built miniature MIMIC-IV-ECG layouts, the demo generator, and a training run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.signal import resample_poly

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_signal import ECGRecordError
from mmmed_datasets.ecg.mimic_iv_ecg import MIMICIVECGDataset, join_statements, split_of
from mmmed_datasets.demo.mimic_iv_ecg_demo import _plan, ensure_demo_mimic_iv_ecg, record_path

# Written here, not imported: the order and spelling MIMIC-IV-ECG's headers use, and the order we expect back.
MIMIC_NAMES = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
CANONICAL = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
TO_CANONICAL = [MIMIC_NAMES.index(name) for name in CANONICAL]  # stored column of each canonical lead
GAIN = 200.0  # adu/mV, as MIMIC-IV-ECG
LABELS = {"SBRAD": "sinus bradycardia", "STACH": "sinus tachycardia", "SR": "sinus rhythm"}
ALL_TRAIN = [1.0, 0.0, 0.0]


def quantise(x: np.ndarray) -> np.ndarray:
    """What format 16 at 200 adu/mV stores and gives back."""
    return np.round(x * GAIN) / GAIN


def signal_of(study_id: int) -> np.ndarray:
    """(5000, 12) mV in stored (MIMIC) order, different per record and lead."""
    rng = np.random.default_rng(study_id)
    t = np.arange(5000) / 500
    return np.sin(2 * np.pi * (1 + study_id % 5) * t)[:, None] * np.linspace(0.3, 2.4, 12) + rng.normal(0, 0.2, (5000, 12))


def write_record(root: Path, rel: str, x: np.ndarray) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(target.name, fs=500, units=["mV"] * 12, sig_name=MIMIC_NAMES, p_signal=x.copy(), fmt=["16"] * 12,
                adc_gain=[GAIN] * 12, baseline=[0] * 12, write_dir=str(target.parent))


def rel_path(subject: int, study: int) -> str:
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def build(root: Path, studies: list[tuple], write_records: bool = True, signals: dict | None = None) -> dict:
    """Write record_list.csv, machine_measurements.csv and records for ``(subject, study, statements | None)``.

    ``None`` statements: the study is left out of machine_measurements.csv. Returns study -> (5000, 12) signal.
    """
    signals = dict(signals or {})
    listing, measurements = [], []
    for subject, study, statements in studies:
        rel = rel_path(subject, study)
        listing.append({"subject_id": subject, "study_id": study, "file_name": str(study),
                        "ecg_time": "2180-07-23 08:44:00", "path": rel})
        if statements is not None:
            row = {"subject_id": subject, "study_id": study, "cart_id": 6000, "ecg_time": "2180-07-23 08:44:00"}
            row.update({f"report_{k}": statements[k] if k < len(statements) else "" for k in range(18)})
            row.update({"bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter", "rr_interval": 1000})
            measurements.append(row)
        if write_records:
            signals.setdefault(study, signal_of(study))
            write_record(root, rel, signals[study])
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(listing).to_csv(root / "record_list.csv", index=False)
    columns = ["subject_id", "study_id", "cart_id", "ecg_time", *[f"report_{k}" for k in range(18)],
               "bandwidth", "filtering", "rr_interval"]
    pd.DataFrame(measurements, columns=columns).to_csv(root / "machine_measurements.csv", index=False)
    return signals


def preprocessing(fs: int = 500, nan_policy: str = "interpolate") -> ECGPreprocessing:
    return ECGPreprocessing(CANONICAL, None, 1, fs, 10, "error", nan_policy, "error", None, 4, None, 30, "none", "center", 1)


def dataset(root: Path, split: str = "train", fractions=ALL_TRAIN, seed: int = 0, fs: int = 500, nan_policy: str = "interpolate",
            on_error: str = "raise", cache: ECGSignalCache | None = None, labels=LABELS) -> MIMICIVECGDataset:
    return MIMICIVECGDataset(str(root), split, fractions, seed, "<ecg>\nReport?", labels, preprocessing(fs, nan_policy),
                             False, on_error, cache)


def item_signal(ds: MIMICIVECGDataset, study: int) -> np.ndarray:
    index = [s.id for s in ds.samples].index(f"mimic-iv-ecg/{study}")
    ecg = ds[index]["signals"]["ecg"][0]
    assert ecg["lead_mask"].all()
    return ecg["signal"].numpy()


# ---- signals: lead order, NaNs, resampling ----------------------------------------------------------

STATEMENTS = ["Sinus rhythm", "Normal ECG"]


@pytest.fixture(scope="module")
def values_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic-values")
    signals = {40000001: signal_of(40000001), 40000002: signal_of(40000002)}
    nan = signal_of(40000003)
    nan[1000:1100, MIMIC_NAMES.index("aVL")] = np.nan  # 100 inside aVL (stored in column 5)
    nan[4950:, MIMIC_NAMES.index("V3")] = np.nan  # 50 at the end of V3
    signals[40000003] = nan
    build(root, [(10000032, 40000001, STATEMENTS), (10000032, 40000002, STATEMENTS), (10000117, 40000003, STATEMENTS)],
          signals=signals)
    return root, signals


def test_record_path_is_mimics_layout():
    assert record_path(10000032, 40689238) == "files/p1000/p10000032/s40689238/40689238"
    assert record_path(19999987, 45000001) == "files/p1999/p19999987/s45000001/45000001"


def test_mimic_lead_order_comes_back_in_canonical_order_exactly(values_root):
    root, signals = values_root
    ds = dataset(root)
    for study in (40000001, 40000002):
        expected = quantise(signals[study])[:, TO_CANONICAL].T  # (12, 5000), reordered by name here
        got = item_signal(ds, study)
        assert got.shape == (12, 5000)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        # aVL and aVF really are swapped on disk: reading by index would fail
        assert np.abs(got[CANONICAL.index("aVL")] - quantise(signals[study])[:, 4]).max() > 0.1


def test_nan_runs_are_interpolated_and_counted(values_root, tmp_path):
    root, signals = values_root
    ds = dataset(root, cache=ECGSignalCache(tmp_path, workers=0))
    stored = quantise(signals[40000003])[:, TO_CANONICAL].T  # (12, 5000) with NaNs
    expected = stored.copy()
    t = np.arange(5000)
    for lead in range(12):
        bad = np.isnan(stored[lead])
        if bad.any():
            expected[lead, bad] = np.interp(t[bad], t[~bad], stored[lead, ~bad])
    assert np.isnan(stored).sum() == 150
    got = item_signal(ds, 40000003)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    v3 = CANONICAL.index("V3")
    np.testing.assert_allclose(got[v3, 4950:], stored[v3, 4949], rtol=0, atol=1e-6)  # held at the edge
    assert ds.stats == {"samples": 3, "skipped": 0, "records": 3, "nan_samples": 150, "records_missing_leads": 0,
                        "records_too_few_leads": 0, "leads_seen": {name: 3 for name in sorted(MIMIC_NAMES)},
                        "subjects": 2, "missing_measurements": 0, "subject_mismatch": 0, "empty_report": 0}


def test_nan_runs_are_zeroed(values_root, tmp_path):
    root, signals = values_root
    ds = dataset(root, nan_policy="zero", cache=ECGSignalCache(tmp_path, workers=0))
    expected = np.nan_to_num(quantise(signals[40000003])[:, TO_CANONICAL].T, nan=0.0)
    np.testing.assert_allclose(item_signal(ds, 40000003), expected, rtol=0, atol=1e-6)
    assert ds.stats["nan_samples"] == 150


def test_nan_runs_rejected_raise_or_are_skipped_and_counted(values_root, tmp_path):
    root, _ = values_root
    record = root / rel_path(10000117, 40000003)
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {record}: 150 NaN samples (most in lead aVL)")):
        dataset(root, nan_policy="reject", cache=ECGSignalCache(tmp_path, workers=0))
    ds = dataset(root, nan_policy="reject", on_error="skip", cache=ECGSignalCache(tmp_path, workers=0))
    assert [s.id for s in ds.samples] == ["mimic-iv-ecg/40000001", "mimic-iv-ecg/40000002"]
    assert ds.stats["skipped"] == 1 and ds.stats["samples"] == 2 and ds.stats["nan_samples"] == 0
    assert ds.stats["subjects"] == 1


def test_500_hz_records_resample_to_100_hz(values_root):
    root, signals = values_root
    ds = dataset(root, fs=100)
    for study in (40000001, 40000002):
        expected = resample_poly(quantise(signals[study])[:, TO_CANONICAL].T, 1, 5, axis=-1)  # (12, 1000)
        got = item_signal(ds, study)
        assert got.shape == (12, 1000)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# ---- reports and labels ---------------------------------------------------------------------------

REPORTS = {
    40000011: (["Sinus bradycardia", "Otherwise normal ECG"], "Sinus bradycardia. Otherwise normal ECG.", "SBRAD"),
    40000012: (["  Sinus rhythm ", "", "Borderline ECG."], "Sinus rhythm. Borderline ECG.", "SR"),  # blank between
    40000013: (["Atrial fibrillation with rapid ventricular response", "Abnormal ECG!"],
               "Atrial fibrillation with rapid ventricular response. Abnormal ECG!", None),
    40000014: (["Sinus tachycardia", "NA", "?"], "Sinus tachycardia. NA. ?", "STACH"),  # "NA" is text, not missing
    40000015: ([""] * 17 + ["SINUS RHYTHM with 1st degree A-V block"], "SINUS RHYTHM with 1st degree A-V block.", "SR"),
}


@pytest.fixture(scope="module")
def reports_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic-reports")
    build(root, [(10000500 + i, study, statements) for i, (study, (statements, _, _)) in enumerate(REPORTS.items())],
          write_records=False)
    return root


def test_reports_joined_exactly_with_labels(reports_root):
    ds = dataset(reports_root)  # no cache and on_error=raise: no record is read here
    assert [s.id for s in ds.samples] == [f"mimic-iv-ecg/{study}" for study in REPORTS]
    assert [s.answer for s in ds.samples] == [answer for _, answer, _ in REPORTS.values()]
    assert [s.label for s in ds.samples] == [label for _, _, label in REPORTS.values()]
    assert all(s.question == "<ecg>\nReport?" for s in ds.samples)


def test_label_is_first_listed_pattern_found(reports_root):
    ds = dataset(reports_root)
    text = "Sinus tachycardia. Sinus rhythm with PACs."
    assert ds.label_of(text) == "STACH"
    assert dataset(reports_root, labels={"SR": "sinus rhythm", "STACH": "sinus tachycardia"}).label_of(text) == "SR"
    assert ds.label_of("Atrial fibrillation.") is None
    assert all(s.label is None for s in dataset(reports_root, labels=None).samples)
    with pytest.raises(ValueError, match=re.escape("label_patterns['AF'] is not a valid regular expression")):
        dataset(reports_root, labels={"AF": "atrial (fib"})


def test_join_statements_rule():
    assert join_statements(["Sinus rhythm", "Normal ECG"]) == "Sinus rhythm. Normal ECG."
    assert join_statements(["a.", " b ", "", "  ", float("nan"), None, "c?"]) == "a. b. c?"
    assert join_statements(["", "  "]) == ""


def test_empty_report_and_missing_study_raise_naming_the_table_and_study(tmp_path):
    build(tmp_path / "empty", [(10000032, 40000001, STATEMENTS), (10000040, 40000002, ["", "  "])], write_records=False)
    record = tmp_path / "empty" / rel_path(10000040, 40000002)
    message = f"ECG record {record}: study_id 40000002 has an empty report (all report_* blank) in machine_measurements.csv"
    with pytest.raises(ECGRecordError, match=re.escape(message)):
        dataset(tmp_path / "empty")
    build(tmp_path / "missing", [(10000032, 40000001, STATEMENTS), (10000040, 40000002, None)], write_records=False)
    record = tmp_path / "missing" / rel_path(10000040, 40000002)
    with pytest.raises(ECGRecordError, match=re.escape(f"ECG record {record}: study_id 40000002 is not in machine_measurements.csv")):
        dataset(tmp_path / "missing")


def test_subject_mismatch_raises(tmp_path):
    build(tmp_path, [(10000032, 40000001, STATEMENTS)], write_records=False)
    table = pd.read_csv(tmp_path / "machine_measurements.csv")
    table["subject_id"] = 10000099
    table.to_csv(tmp_path / "machine_measurements.csv", index=False)
    record = tmp_path / rel_path(10000032, 40000001)
    message = (f"ECG record {record}: study_id 40000001 belongs to subject_id 10000032 in record_list.csv but to "
               f"subject_id 10000099 in machine_measurements.csv")
    with pytest.raises(ECGRecordError, match=re.escape(message)):
        dataset(tmp_path)


def test_bad_studies_are_skipped_and_counted(tmp_path):
    build(tmp_path, [(10000032, 40000001, STATEMENTS), (10000040, 40000002, ["", " "]),
                     (10000041, 40000003, None), (10000042, 40000004, None), (10000042, 40000005, ["Sinus rhythm"])])
    ds = dataset(tmp_path, on_error="skip", cache=ECGSignalCache(tmp_path / "cache", workers=0))
    assert [s.id for s in ds.samples] == ["mimic-iv-ecg/40000001", "mimic-iv-ecg/40000005"]
    assert ds.stats == {"samples": 2, "skipped": 3, "records": 2, "nan_samples": 0, "records_missing_leads": 0,
                        "records_too_few_leads": 0, "leads_seen": {name: 2 for name in sorted(MIMIC_NAMES)},
                        "subjects": 2, "missing_measurements": 2, "subject_mismatch": 0, "empty_report": 1}


def test_duplicate_studies_and_missing_tables_and_columns(tmp_path):
    build(tmp_path, [(10000032, 40000001, STATEMENTS), (10000033, 40000001, STATEMENTS)], write_records=False)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'record_list.csv'}: study_id(s) [40000001] appear more than once")):
        dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"MIMIC-IV-ECG table not found: {tmp_path / 'nowhere' / 'record_list.csv'}")):
        dataset(tmp_path / "nowhere")
    build(tmp_path, [(10000032, 40000001, STATEMENTS)], write_records=False)
    pd.read_csv(tmp_path / "record_list.csv").drop(columns="path").to_csv(tmp_path / "record_list.csv", index=False)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'record_list.csv'}: missing column(s) ['path']")):
        dataset(tmp_path)


@pytest.mark.parametrize("fractions", [[0.8, 0.1], [0.8, 0.1, 0.2], [1.2, -0.1, -0.1]])
def test_bad_split_fractions(reports_root, fractions):
    with pytest.raises(ValueError, match=re.escape("split_fractions must be [train, val, test], non-negative, summing to 1")):
        dataset(reports_root, fractions=fractions)


def test_bad_split_name(reports_root):
    with pytest.raises(ValueError, match=re.escape("split must be one of ('train', 'val', 'test'), not 'validation'")):
        dataset(reports_root, split="validation")


# ---- patient-disjoint hash splits -------------------------------------------------------------------

FRACTIONS = [0.8, 0.1, 0.1]


def expected_split(subject: int, seed: int) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{subject}".encode()).digest()[:8], "big") / 2**64
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


def subjects_by_split(root: Path, seed: int = 0) -> dict[str, set[int]]:
    listing = pd.read_csv(root / "record_list.csv")
    subject_of = dict(zip(listing["study_id"], listing["subject_id"]))
    out = {}
    for split in ("train", "val", "test"):
        ds = dataset(root, split, FRACTIONS, seed)
        out[split] = {subject_of[int(s.id.split("/")[1])] for s in ds.samples}
        assert ds.stats["subjects"] == len(out[split])
    return out


@pytest.fixture(scope="module")
def many_subjects():
    rng = np.random.default_rng(7)
    subjects = sorted((10_000_000 + rng.choice(10_000_000, size=200, replace=False)).tolist())
    studies, next_study = [], 40_000_000
    for subject in subjects:
        for _ in range(int(rng.integers(1, 4))):
            studies.append((subject, next_study, STATEMENTS))
            next_study += 1
    return subjects, studies


def test_splits_are_patient_disjoint_deterministic_and_follow_the_hash(tmp_path, many_subjects):
    subjects, studies = many_subjects
    build(tmp_path, studies, write_records=False)
    found = subjects_by_split(tmp_path)
    assert not (found["train"] & found["val"]) and not (found["train"] & found["test"]) and not (found["val"] & found["test"])
    assert found["train"] | found["val"] | found["test"] == set(subjects)
    for split, members in found.items():
        assert members == {s for s in subjects if expected_split(s, 0) == split}
        assert abs(len(members) / len(subjects) - FRACTIONS[("train", "val", "test").index(split)]) < 0.07
    assert subjects_by_split(tmp_path) == found  # the same again
    assert all(split_of(s, tuple(FRACTIONS), 0) == expected_split(s, 0) for s in subjects)
    reseeded = subjects_by_split(tmp_path, seed=1)
    assert reseeded != found and reseeded["val"] == {s for s in subjects if expected_split(s, 1) == "val"}


def test_a_subjects_split_survives_removing_other_subjects(tmp_path, many_subjects):
    subjects, studies = many_subjects
    build(tmp_path / "all", studies, write_records=False)
    kept = set(subjects[::3])
    build(tmp_path / "some", [s for s in studies if s[0] in kept] + [(19_999_999, 49_999_999, STATEMENTS)], write_records=False)
    full, part = subjects_by_split(tmp_path / "all"), subjects_by_split(tmp_path / "some")
    for split in ("train", "val", "test"):
        assert part[split] - {19_999_999} == full[split] & kept


def test_a_split_without_subjects_says_so(tmp_path):
    build(tmp_path, [(10000032, 40000001, STATEMENTS)], write_records=False)
    with pytest.raises(ValueError, match=re.escape("no subjects fall in split 'val' (fractions [1.0, 0.0, 0.0])")):
        dataset(tmp_path, split="val")


# ---- the demo generator ---------------------------------------------------------------------------

DEMO_PATIENTS = 16  # with seed 0: 11 train, 2 val, 3 test subjects (hash split), 2 records with NaN runs
RECORD_LIST_COLUMNS = ["subject_id", "study_id", "file_name", "ecg_time", "path"]
MEASUREMENT_COLUMNS = ["subject_id", "study_id", "cart_id", "ecg_time", *[f"report_{k}" for k in range(18)], "bandwidth",
                       "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
                       "qrs_axis", "t_axis"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_mimic_iv_ecg(tmp_path_factory.mktemp("demo") / "mimic", DEMO_PATIENTS, 1, 0, workers=2)


def test_demo_has_mimics_layout_headers_and_reports(demo):
    root = demo
    listing = pd.read_csv(root / "record_list.csv")
    measurements = pd.read_csv(root / "machine_measurements.csv", dtype={f"report_{k}": str for k in range(18)},
                               keep_default_na=False)
    assert list(listing.columns) == RECORD_LIST_COLUMNS and list(measurements.columns) == MEASUREMENT_COLUMNS
    assert len(listing) == DEMO_PATIENTS and listing["study_id"].is_unique
    assert list(listing["study_id"]) == list(measurements["study_id"])
    for row in listing.itertuples():
        assert row.path == f"files/p{str(row.subject_id)[:4]}/p{row.subject_id}/s{row.study_id}/{row.study_id}"
        assert row.file_name == row.study_id and len(str(row.subject_id)) == 8
        header = wfdb.rdheader(str(root / row.path))
        assert header.sig_name == MIMIC_NAMES and header.fs == 500 and header.sig_len == 5000
        assert header.fmt == ["16"] * 12 and header.adc_gain == [GAIN] * 12 and header.units == ["mV"] * 12
    for row in measurements.itertuples():
        statements = [getattr(row, f"report_{k}") for k in range(18)]
        assert statements[0] in ("Sinus bradycardia", "Sinus rhythm", "Sinus tachycardia")
        assert all(s for s in statements[:2]) and not any(statements[3:])
        rate = 60000 / row.rr_interval  # the report's rhythm agrees with the measured rate
        assert statements[0] == ("Sinus bradycardia" if rate < 60 else "Sinus tachycardia" if rate > 100 else "Sinus rhythm")


def test_demo_leads_are_consistent_by_name_and_nan_runs_read_back_as_nan(demo):
    root = demo
    listing = pd.read_csv(root / "record_list.csv")
    runs = {r["study_id"]: r["nan_run"] for job in _plan(DEMO_PATIENTS, 1, 0) for r in job["records"]}
    assert sum(run is not None for run in runs.values()) == 2
    step = 1 / GAIN
    for row in listing.itertuples():
        record = wfdb.rdrecord(str(root / row.path))
        x = {name: record.p_signal[:, k] for k, name in enumerate(record.sig_name)}
        expected_nan = np.zeros((5000, 12), dtype=bool)
        if runs[row.study_id] is not None:
            lead, start, length = runs[row.study_id]
            expected_nan[start : start + length, lead] = True
        np.testing.assert_array_equal(np.isnan(record.p_signal), expected_nan)
        ok = ~np.isnan(record.p_signal).any(1)
        # Einthoven and Goldberger, looked up by name: fails if aVF and aVL were swapped on disk
        for name, derived in (("III", x["II"] - x["I"]), ("aVR", -(x["I"] + x["II"]) / 2),
                              ("aVL", x["I"] - x["II"] / 2), ("aVF", x["II"] - x["I"] / 2)):
            assert np.abs(x[name][ok] - derived[ok]).max() <= 2 * step, name


def test_demo_is_built_once(demo):
    root = demo
    before = (root / "record_list.csv").stat().st_mtime_ns
    assert ensure_demo_mimic_iv_ecg(root, DEMO_PATIENTS, 1, 0) == root  # already there: nothing rewritten
    assert (root / "record_list.csv").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="was generated with"):
        ensure_demo_mimic_iv_ecg(root, DEMO_PATIENTS, 1, 1)


def test_training_smoke_run_on_the_demo_config(compose, demo, tmp_path):
    from train import train

    root = demo
    overrides = ["encoder=ecg", "data=mimic_iv_ecg_demo", "model=tiny", "logger=csv", "trainer.max_steps=2",
                 "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                 f"data.root={root}", f"data.prepare.num_patients={DEMO_PATIENTS}", "data.prepare.records_per_patient=1",
                 f"ecg_signal.cache.cache_dir={tmp_path / 'cache'}"]  # the LLM conversion stays shared in paths.cache_dir
    metrics = train(compose(overrides, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    listing = pd.read_csv(root / "record_list.csv")
    counts = {split: int(sum(expected_split(s, 0) == split for s in listing["subject_id"])) for split in ("train", "val", "test")}
    assert counts == {"train": 11, "val": 2, "test": 3}
    nan_in_train = sum(int(np.isnan(wfdb.rdrecord(str(root / row.path)).p_signal).sum())
                       for row in listing.itertuples() if expected_split(row.subject_id, 0) == "train")
    for split, count in counts.items():
        assert metrics[f"data/{split}/samples"] == count and metrics[f"data/{split}/skipped"] == 0
        assert metrics[f"data/{split}/subjects"] == count
    assert metrics["data/train/nan_samples"] == nan_in_train
    assert "val/accuracy" in metrics and "test/accuracy" in metrics
